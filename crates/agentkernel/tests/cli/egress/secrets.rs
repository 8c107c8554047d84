//! Secrets against the fake internet: the placeholder becomes the real value only in HTTPS
//! requests to the secret's host (the HTTPS server logs what it got), real values echoed
//! back are masked, a placeholder sent elsewhere is blocked and audited, and the real
//! value is nowhere inside the sandbox.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output, Stdio};

use super::{FakeInternet, egress_audit};
use crate::common::{Mode, agentkernel, assert_code, registry_path, stderr, stdout};

/// A value unique to this test run, in two halves: a script that names both halves apart
/// does not hold the value itself (its command line is searched too).
pub(super) fn value(tag: &str) -> (String, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    (
        format!("{tag}-{}-", std::process::id()),
        format!("{nanos:x}"),
    )
}

impl FakeInternet {
    /// `agentkernel ARGS` with the fake internet's config and `env`.
    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut command = agentkernel(Mode::Root, args);
        command.env("AGENTKERNEL_CONFIG", self.config.path());
        for (key, value) in env {
            command.env(key, value);
        }
        command
    }

    /// What the HTTPS server received, one `HOST AUTHORIZATION` line per request.
    fn received(&self) -> String {
        std::fs::read_to_string(self.certs.path().join("received.log")).unwrap_or_default()
    }
}

fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"))
}

/// Searches, from inside the sandbox, every process's environment and command line and
/// every file under /run, /tmp, /etc/ssl and the workdir for the value whose halves are
/// the arguments; prints `hits=` and where it was found.
const SEARCH: &str = r#"
import os, sys
value = (sys.argv[1] + sys.argv[2]).encode()
hits = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for part in ("environ", "cmdline"):
            try:
                if value in open(f"/proc/{pid}/{part}", "rb").read():
                    hits.append(f"/proc/{pid}/{part}")
            except OSError:
                pass
for top in ("/run", "/tmp", "/etc/ssl", os.getcwd()):
    for folder, _, files in os.walk(top):
        for name in files:
            path = os.path.join(folder, name)
            try:
                if value in open(path, "rb").read():
                    hits.append(path)
            except OSError:
                pass
print("hits=" + ",".join(hits))
"#;

fn set_secret(internet: &FakeInternet, name: &str, secret: &str) -> Output {
    let mut child = internet
        .command(&["secret", "set", name], &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{secret}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn secrets_are_substituted_for_their_host_only_and_never_enter_the_sandbox() {
    let internet = FakeInternet::start();
    let (a, b) = value("token");
    let token = format!("{a}{b}");
    let (fa, fb) = value("file");
    let file_secret = format!("{fa}{fb}");

    // The store: owner-only, names listed, values never shown.
    assert_code(
        &set_secret(&internet, "AK_TEST_FILE_SECRET", &file_secret),
        0,
    );
    let state = registry_path(Mode::Root).parent().unwrap().to_path_buf();
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().mode() & 0o777;
    assert_eq!(mode(&state.join("secrets")), 0o700);
    assert_eq!(
        mode(&state.join("secrets/store/AK_TEST_FILE_SECRET")),
        0o600
    );
    let listed = internet.command(&["secret", "list"], &[]).output().unwrap();
    assert!(stdout(&listed).lines().any(|l| l == "AK_TEST_FILE_SECRET"));
    assert!(!stdout(&listed).contains(&file_secret));

    let script = format!(
        r#"
echo "token=$AK_TEST_TOKEN"
curl -sS --max-time 10 -D /tmp/head -H "Authorization: Bearer $AK_TEST_TOKEN" https://api.test/echo
echo "x-echo=$(grep -i '^x-echo:' /tmp/head | tr -d '\r')"
curl -sS --max-time 10 -H "Authorization: Bearer $AK_TEST_TOKEN" https://api.test/chunked
code=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 -H "Authorization: Bearer $AK_TEST_TOKEN" http://other.test/); echo "leak=$code"
echo "other=$(curl -sS --max-time 10 http://other.test/)"
f=/run/agentkernel/secrets/AK_TEST_FILE_SECRET
echo "file=$(cat $f) mode=$(stat -c %a $f)"
python3 - '{a}' '{b}' <<'PY'
{SEARCH}
PY
"#
    );
    let output = internet
        .command(
            &[
                "run",
                "--secret",
                "AK_TEST_TOKEN:api.test:authorization",
                "--allow-host",
                "other.test",
                "--secret-file",
                "AK_TEST_FILE_SECRET",
                "--",
                "bash",
                "-c",
                &script,
            ],
            &[("AK_TEST_TOKEN", &token)],
        )
        .output()
        .unwrap();
    let text = stdout(&output);
    let context = format!("{text}\n{}", stderr(&output));
    assert_code(&output, 0);
    let placeholder = line(&text, "token=");
    assert!(placeholder.starts_with("akph_"), "{context}");
    assert!(
        !text.contains(&token),
        "the real value reached the sandbox: {context}"
    );
    // The server got the real value, and only from api.test.
    let received = internet.received();
    assert!(
        received.contains(&format!("api.test Bearer {token}")),
        "the server did not get the value: {received:?}\n{context}"
    );
    assert!(!received.contains(placeholder), "{received:?}");
    // What it echoed came back masked, in a header and in plain and chunked bodies.
    assert!(
        text.contains(&format!("secure: Bearer {placeholder}")),
        "{context}"
    );
    assert_eq!(
        line(&text, "x-echo=").to_ascii_lowercase(),
        format!("x-echo: bearer {placeholder}").to_ascii_lowercase(),
        "{context}"
    );
    assert!(
        text.contains(&format!("chunked: Bearer {placeholder}")),
        "{context}"
    );
    // The placeholder towards another allowed host is refused; that host still works.
    assert_eq!(line(&text, "leak="), "403", "{context}");
    assert_eq!(
        line(&text, "other="),
        "fake internet: other.test",
        "{context}"
    );
    assert_eq!(
        line(&text, "file="),
        format!("{file_secret} mode=400"),
        "{context}"
    );
    assert_eq!(
        line(&text, "hits="),
        "",
        "the value found inside: {context}"
    );

    let audit = egress_audit();
    assert!(
        audit.contains("the placeholder of secret AK_TEST_TOKEN was sent to other.test"),
        "{audit}"
    );
    assert!(
        audit.contains("secret AK_TEST_TOKEN substituted"),
        "{audit}"
    );
    let all = internet.command(&["audit"], &[]).output().unwrap();
    assert!(
        !stdout(&all).contains(&token),
        "the audit log holds the value"
    );
    assert!(!stdout(&all).contains(&file_secret));

    let removed = internet
        .command(&["secret", "remove", "AK_TEST_FILE_SECRET"], &[])
        .output()
        .unwrap();
    assert_code(&removed, 0);
    assert!(!state.join("secrets/store/AK_TEST_FILE_SECRET").exists());
}

#[test]
fn a_leak_stops_the_sandbox_when_told_to() {
    let internet = FakeInternet::start();
    let config = tempfile::NamedTempFile::new().unwrap();
    let base = std::fs::read_to_string(internet.config.path()).unwrap();
    std::fs::write(config.path(), format!("{base}on_leak = \"kill\"\n")).unwrap();
    let (a, b) = value("kill");
    let output = internet
        .command(
            &[
                "run",
                "--secret",
                &format!("AK_TEST_TOKEN={a}{b}:api.test"),
                "--allow-host",
                "other.test",
                "--",
                "bash",
                "-c",
                "curl -s --max-time 5 -H \"X-Key: $AK_TEST_TOKEN\" http://other.test/ >/dev/null; sleep 5; echo survived",
            ],
            &[],
        )
        .env("AGENTKERNEL_CONFIG", config.path())
        .output()
        .unwrap();
    assert!(
        !stdout(&output).contains("survived"),
        "{}\n{}",
        stdout(&output),
        stderr(&output)
    );
    assert_ne!(output.status.code(), Some(0));
    assert!(egress_audit().contains("the sandbox was stopped (on_leak = kill)"));
}

#[test]
fn a_named_sandbox_keeps_its_secret_across_restarts_and_shows_no_value() {
    let internet = FakeInternet::start();
    let name = format!("secrets-{}", std::process::id());
    let (a, b) = value("named");
    let token = format!("{a}{b}");
    let ak = |args: &[&str]| {
        internet
            .command(args, &[("AK_TEST_NAMED", &token)])
            .output()
            .unwrap()
    };
    assert_code(
        &ak(&["create", &name, "--secret", "AK_TEST_NAMED:api.test"]),
        0,
    );
    let probe = "curl -sS --max-time 10 -H \"Authorization: $AK_TEST_NAMED\" https://api.test/echo";
    let mut seen = Vec::new();
    for _ in 0..2 {
        assert_code(&ak(&["start", &name]), 0);
        let output = internet
            .command(&["exec", &name, "--", "bash", "-c", probe], &[])
            .output()
            .unwrap();
        seen.push(format!("{}{}", stdout(&output), stderr(&output)));
        assert_code(&ak(&["stop", &name]), 0);
    }
    let inspect = ak(&["inspect", &name, "--json"]);
    let registry = std::fs::read(registry_path(Mode::Root)).unwrap();
    // A sandbox made from a snapshot has the secret too (the source's kept value).
    let snapshot = format!("{name}-snap");
    let copy = format!("{name}-copy");
    assert_code(&ak(&["snapshot", "create", &name, "--name", &snapshot]), 0);
    let made = internet
        .command(&["create", &copy, "--from-snapshot", &snapshot], &[])
        .output()
        .unwrap();
    let _ = ak(&["remove", &name, "--force"]);
    assert_code(&made, 0);
    assert_code(&ak(&["start", &copy]), 0);
    let output = internet
        .command(&["exec", &copy, "--", "bash", "-c", probe], &[])
        .output()
        .unwrap();
    seen.push(format!("{}{}", stdout(&output), stderr(&output)));
    let _ = ak(&["remove", &copy, "--force"]);
    let _ = ak(&["snapshot", "remove", &snapshot]);
    let received = internet.received();
    assert_eq!(
        received.matches(&format!("api.test {token}")).count(),
        3,
        "both starts and the copy substituted: {received:?}\n{seen:?}"
    );
    for shown in &seen {
        assert!(shown.contains("secure: akph_"), "{shown}");
        assert!(!shown.contains(&token), "{shown}");
    }
    assert!(
        stdout(&inspect).contains("AK_TEST_NAMED"),
        "{}",
        stdout(&inspect)
    );
    assert!(!stdout(&inspect).contains(&token));
    assert!(
        !registry.windows(token.len()).any(|w| w == token.as_bytes()),
        "the registry holds the value"
    );
    let values = registry_path(Mode::Root)
        .parent()
        .unwrap()
        .join("secrets/sandboxes");
    let left: Vec<_> = std::fs::read_dir(&values)
        .map(|dir| dir.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|path| !std::fs::read_to_string(path)
            .unwrap_or_default()
            .contains(&token)),
        "removing the sandbox forgets its values: {left:?}"
    );
}

#[test]
fn bad_secrets_are_refused() {
    let internet = FakeInternet::start();
    for (flags, message) in [
        (
            &["--secret", "AK_TEST_TOKEN"][..],
            "expected KEY=value:host",
        ),
        (
            &["--secret", "bad-key:api.test"][..],
            "not an environment variable name",
        ),
        (
            &["--secret", "AK_TEST_TOKEN:"][..],
            "the host after ':' is empty",
        ),
        (
            &["--secret", "AK_TEST_TOKEN:api.test:bad header"][..],
            "not an HTTP header name",
        ),
        (
            &["--secret", "AK_TEST_TOKEN=v:api.test", "--network", "open"][..],
            "secrets need the allowlist network",
        ),
        (
            &["--secret", "AK_TEST_NOWHERE_SECRET:api.test"][..],
            "neither in the secret store",
        ),
        (
            &["--secret-file", "no/slash"][..],
            "environment variable name",
        ),
    ] {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend(["--", "true"]);
        let output = internet.command(&args, &[]).output().unwrap();
        assert_ne!(output.status.code(), Some(0), "{flags:?}");
        assert!(
            stderr(&output).contains(message),
            "{flags:?}: {}",
            stderr(&output)
        );
    }
    let empty = set_secret(&internet, "AK_TEST_EMPTY", "");
    assert_ne!(empty.status.code(), Some(0));
    assert!(
        stderr(&empty).contains("the value is empty"),
        "{}",
        stderr(&empty)
    );
}
