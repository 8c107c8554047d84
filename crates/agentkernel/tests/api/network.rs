//! Sandboxes' networks over HTTP on the native backend: the `network` and `allow_*` fields
//! of `POST /sandboxes` and `POST /run`, the `[api]` bounds on remote callers' networks,
//! `PUT /sandboxes/{name}/network` and the refusal count in `GET /sandboxes/{name}`. That
//! a changed allowlist really lets the next connection through (or not) is the egress
//! tests' (`tests/cli/egress`), which have a fake internet to connect to.

use serde_json::json;

use crate::http::tcp;
use crate::server::{Server, TOKEN};

/// Remote callers may have allowlists within these, and no open network. Nothing answers
/// at the upstream resolver: these sandboxes never resolve a name.
const CONFIG: &str = "[api]\nallow_hosts = [\"*.example.org\", \"pypi\"]\n\
                      allow_cidrs = [\"192.0.2.0/24\"]\n\
                      [network]\nupstream_dns = \"127.0.0.1:9\"\n";

#[test]
fn networks_over_http_within_the_api_bounds() {
    let server = Server::start_configured(Some(TOKEN), &[], CONFIG);
    let port = server.port();
    let call = |method: &str, path: &str, body: serde_json::Value| {
        let answer = tcp(port, method, path, Some(TOKEN), Some(&body));
        let value = answer.json();
        (answer.status, value)
    };
    let get = |path: &str| {
        let answer = tcp(port, "GET", path, Some(TOKEN), None);
        let value = answer.json();
        (answer.status, value)
    };

    let (status, value) = call(
        "POST",
        "/sandboxes",
        json!({"name": "net-box", "allow_hosts": ["a.example.org"], "profile": "restrictive"}),
    );
    assert_eq!(status, 201, "{value}");
    assert_eq!(value["data"]["network"], "allowlist", "{value}");
    assert_eq!(
        value["data"]["allowlist"],
        json!({"hosts": ["a.example.org"], "cidrs": [], "ports": []})
    );
    let (status, value) = get("/sandboxes/net-box");
    assert_eq!(status, 200, "{value}");
    assert_eq!(value["data"]["egress_denied"], 0, "{value}");

    // Beyond the bounds: the open network, a host outside them; both name the setting.
    for (body, needle) in [
        (
            json!({"name": "open-box", "network": "open"}),
            "set network under [api]",
        ),
        (
            json!({"name": "evil-box", "allow_hosts": ["evil.test"]}),
            "allow host evil.test (outside allow_hosts",
        ),
        (
            json!({"name": "cidr-box", "network": "allowlist", "allow_cidrs": ["0.0.0.0/0"]}),
            "cidr 0.0.0.0/0",
        ),
    ] {
        let (status, value) = call("POST", "/sandboxes", body.clone());
        assert_eq!(status, 403, "{body}: {value}");
        assert!(value["error"].as_str().unwrap().contains(needle), "{value}");
    }
    // Bad input: 400 with what was wrong.
    for (body, needle) in [
        (
            json!({"name": "bad-box", "network": "everywhere"}),
            "unknown network mode",
        ),
        (
            json!({"name": "bad-box", "network": "allowlist"}),
            "needs at least one allowed host",
        ),
        (
            json!({"name": "bad-box", "allow_hosts": ["*.com"]}),
            "a wildcard needs",
        ),
        (
            json!({"name": "bad-box", "allow_ports": [0]}),
            "ports are 1",
        ),
    ] {
        let (status, value) = call("POST", "/sandboxes", body.clone());
        assert_eq!(status, 400, "{body}: {value}");
        assert!(value["error"].as_str().unwrap().contains(needle), "{value}");
    }

    // The live change: extended, then replaced; beyond the bounds refused.
    let (status, value) = call(
        "PUT",
        "/sandboxes/net-box/network",
        json!({"allow_hosts": ["pypi"], "extend": true}),
    );
    assert_eq!(status, 200, "{value}");
    assert_eq!(
        value["data"]["allowlist"]["hosts"],
        json!(["a.example.org", "pypi.org", "files.pythonhosted.org"])
    );
    let (status, value) = call(
        "PUT",
        "/sandboxes/net-box/network",
        json!({"allow_cidrs": ["192.0.2.0/25"]}),
    );
    assert_eq!(status, 200, "{value}");
    assert_eq!(
        value["data"]["allowlist"],
        json!({"hosts": [], "cidrs": ["192.0.2.0/25"], "ports": []})
    );
    let (status, value) = call(
        "PUT",
        "/sandboxes/net-box/network",
        json!({"allow_hosts": ["evil.test"], "extend": true}),
    );
    assert_eq!(status, 403, "{value}");
    let (status, value) = call("PUT", "/sandboxes/net-box/network", json!({}));
    assert_eq!(status, 400, "{value}");
    let (status, value) = call(
        "PUT",
        "/sandboxes/no-such-box/network",
        json!({"allow_hosts": ["pypi"]}),
    );
    assert_eq!(status, 404, "{value}");
    // The record kept the change: the CLI (another process) sees it.
    let shown = server.cli(&["network", "show", "net-box"]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("allow:    cidr 192.0.2.0/25"), "{text}");
    assert!(text.contains("denied:   0"), "{text}");

    // A sandbox without an allowlist has no list to change.
    let (status, value) = call(
        "POST",
        "/sandboxes",
        json!({"name": "quiet-box", "network": "none", "profile": "restrictive"}),
    );
    assert_eq!(status, 201, "{value}");
    assert_eq!(value["data"]["network"], "none");
    assert!(value["data"].get("allowlist").is_none(), "{value}");
    let (status, value) = call(
        "PUT",
        "/sandboxes/quiet-box/network",
        json!({"allow_hosts": ["pypi"]}),
    );
    assert_eq!(status, 400, "{value}");
    assert!(
        value["error"]
            .as_str()
            .unwrap()
            .contains("only an allowlist sandbox"),
        "{value}"
    );

    // A one-shot run takes the same fields.
    let (status, value) = call(
        "POST",
        "/run",
        json!({"command": ["cat", "/sys/class/net/tun0/mtu"], "allow_hosts": ["pypi"], "fast": false}),
    );
    assert_eq!(status, 200, "{value}");
    assert_eq!(value["data"]["output"], "65520\n", "{value}");
    let (status, value) = call(
        "POST",
        "/run",
        json!({"command": ["true"], "network": true}),
    );
    assert_eq!(status, 403, "{value}");

    for name in ["net-box", "quiet-box"] {
        let answer = tcp(
            port,
            "DELETE",
            &format!("/sandboxes/{name}"),
            Some(TOKEN),
            None,
        );
        assert_eq!(answer.status, 200, "{name}");
    }
}
