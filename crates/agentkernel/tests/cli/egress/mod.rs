//! The allowlist network against a fake internet this test builds: a network namespace
//! joined to the host by a veth pair, with a DNS server, an HTTP server and TCP/UDP echo
//! services (`fake_internet.py`). The egress helper resolves and connects from the host,
//! so its upstream resolver is the fake one (`[network] upstream_dns`). Traffic goes only to
//! that namespace.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Output, Stdio};

mod secrets;
mod secrets_backends;

use crate::common::{
    Mode, agentkernel, assert_code, is_root, registry_path, shared_host, stderr, stdout,
};

fn sh(command: &str) -> Output {
    Command::new("sh").args(["-c", command]).output().unwrap()
}

/// One fake internet at a time (its names are this process's).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The fake internet: a namespace with its services, removed on drop.
struct FakeInternet {
    _alone: std::sync::MutexGuard<'static, ()>,
    /// Not while the leak tests compare the host before and after.
    _host: std::sync::RwLockReadGuard<'static, ()>,
    name: String,
    host_if: String,
    subnet: u8,
    services: Child,
    config: tempfile::NamedTempFile,
    /// The test CA, the servers' certificate and key, and the HTTPS server's log.
    certs: tempfile::TempDir,
}

/// A test CA and a certificate for the fake internet's names, in `dir` (`ca.pem`,
/// `cert.pem`, `key.pem`); the egress helper trusts the CA through `[network] upstream_ca`.
fn make_certificates(dir: &std::path::Path) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "fake internet test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let names = ["api.test", "other.test", "allowed.test"].map(String::from);
    let cert = rcgen::CertificateParams::new(names.to_vec())
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

impl FakeInternet {
    fn start() -> FakeInternet {
        let host = shared_host();
        let alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            is_root(),
            "the egress tests need root: they make a network namespace and a veth pair"
        );
        let pid = std::process::id();
        let subnet = (pid % 250) as u8;
        let (name, host_if, inner) = (
            format!("akeg{pid}"),
            format!("akeh{}", pid % 1_000_000),
            format!("akei{}", pid % 1_000_000),
        );
        let made = sh(&format!(
            "ip netns add {name} && ip link add {host_if} type veth peer name {inner} && \
             ip link set {inner} netns {name} && ip addr add 198.18.{subnet}.1/30 dev {host_if} && \
             ip link set {host_if} up && ip -n {name} addr add 198.18.{subnet}.2/30 dev {inner} && \
             ip -n {name} link set {inner} up && ip -n {name} link set lo up"
        ));
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/cli/egress/fake_internet.py"
        );
        let address = Ipv4Addr::new(198, 18, subnet, 2).to_string();
        let certs = tempfile::tempdir().unwrap();
        make_certificates(certs.path());
        let certs_dir = certs.path().to_str().unwrap().to_string();
        let mut services = Command::new("ip")
            .args([
                "netns", "exec", &name, "python3", script, &address, &certs_dir,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is needed for the fake internet (apt-get install python3)");
        let mut line = String::new();
        BufReader::new(services.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n", "the fake internet did not start");
        let config = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            config.path(),
            format!(
                "[network]\nupstream_dns = \"{address}:53\"\nupstream_ca = \"{certs_dir}/ca.pem\"\n"
            ),
        )
        .unwrap();
        FakeInternet {
            _alone: alone,
            _host: host,
            name,
            host_if,
            subnet,
            services,
            config,
            certs,
        }
    }

    fn address(&self) -> String {
        format!("198.18.{}.2", self.subnet)
    }

    /// `agentkernel run FLAGS -- bash -c SCRIPT` with the fake resolver upstream.
    fn run(&self, flags: &[&str], script: &str) -> Output {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend(["--", "bash", "-c", script]);
        self.ak(&args)
    }

    /// `agentkernel ARGS` with the fake resolver upstream.
    fn ak(&self, args: &[&str]) -> Output {
        agentkernel(Mode::Root, args)
            .env("AGENTKERNEL_CONFIG", self.config.path())
            .output()
            .unwrap()
    }
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        let _ = self.services.kill();
        let _ = self.services.wait();
        let _ = sh(&format!("ip netns del {}", self.name));
        let _ = sh(&format!("ip link del {} 2>/dev/null", self.host_if));
    }
}

/// The egress entries of the audit log.
fn egress_audit() -> String {
    let output = agentkernel(Mode::Root, &["audit", "--network"])
        .output()
        .unwrap();
    assert_code(&output, 0);
    stdout(&output)
}

const ALLOW: &[&str] = &[
    "--allow-host",
    "allowed.test",
    "--allow-host",
    "*.wild.test",
];

/// One line per check, `NAME=RESULT`, for the assertions below.
const PROBES: &str = r#"
ok() { echo "$1=yes"; }; no() { echo "$1=no"; }
out=$(curl -sS --max-time 5 http://allowed.test/ 2>&1); echo "http=$out"
exec 8<>/dev/tcp/allowed.test/80 && printf 'GET / HTTP/1.0\r\nHost: allowed.test\r\n\r\n' >&8 && timeout 10 cat <&8 >/dev/null && echo eof=yes || echo eof=no
getent hosts denied.test >/dev/null && ok denied_resolves || no denied_resolves
getent ahostsv6 allowed.test | grep -v '::ffff:' | grep -q . && ok aaaa || no aaaa
getent hosts rebind.wild.test >/dev/null && ok rebind_resolves || no rebind_resolves
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H 'Host: denied.test' http://allowed.test/); echo "host_mismatch=$code"
start=$(date +%s%N)
(exec 3<>/dev/tcp/169.254.169.254/80) 2>/dev/null && ok metadata || no metadata
echo "metadata_ms=$(( ($(date +%s%N) - start) / 1000000 ))"
exec 4<>/dev/tcp/allowed.test/7 && echo raw-echo >&4 && read -t 5 line <&4 && echo "raw=$line"
python3 - <<'PY'
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
s.sendto(b"ping", ("allowed.test", 9))
try:
    s.recvfrom(100); print("udp=answered")
except OSError:
    print("udp=dropped")
try:
    socket.create_connection(("2001:db8::7", 80), timeout=2); print("ipv6=connected")
except OSError as e:
    print("ipv6=refused")
PY
curl -sk --max-time 5 --connect-to denied.test:443:allowed.test:443 https://denied.test/ >/dev/null 2>&1
echo sni=done
"#;

#[test]
fn allowlist_lets_through_only_allowed_names() {
    let internet = FakeInternet::start();
    let output = internet.run(ALLOW, PROBES);
    let text = stdout(&output);
    assert_code(&output, 0);
    let has = |line: &str| text.lines().any(|l| l == line);
    assert!(
        has("http=fake internet: allowed.test"),
        "an allowed name over HTTP: {text}\n{}",
        stderr(&output)
    );
    assert!(
        has("eof=yes"),
        "a server's close reaches the sandbox (HTTP/1.0 read to the end): {text}"
    );
    assert!(has("denied_resolves=no"), "a name not on the list: {text}");
    assert!(has("aaaa=no"), "no IPv6 answers: {text}");
    assert!(
        has("rebind_resolves=no"),
        "a wildcard name rebound to the metadata service: {text}"
    );
    assert!(
        has("host_mismatch=403"),
        "an HTTP Host not on the list: {text}"
    );
    assert!(has("metadata=no"), "the metadata address: {text}");
    let metadata_ms: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("metadata_ms="))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        metadata_ms < 1000,
        "a denied connection fails fast, not after a hang: {metadata_ms} ms"
    );
    assert!(
        has("raw=raw-echo"),
        "raw TCP to an allowed name and port: {text}"
    );
    assert!(has("udp=dropped"), "UDP other than DNS: {text}");
    assert!(has("ipv6=refused"), "IPv6: {text}");
    let audit = egress_audit();
    for expected in [
        "dns denied.test: not an allowed host",
        "TLS server name denied.test is not an allowed host",
        "HTTP Host denied.test is not an allowed host",
        "169.254.169.254 port 80: not an address an allowed name resolved to",
        "port 9: UDP goes only to the sandbox resolver",
        "port 7: host allowed.test",
    ] {
        assert!(
            audit.contains(expected),
            "audit lacks {expected:?}:\n{audit}"
        );
    }
    let _ = registry_path(Mode::Root);
}

#[test]
fn ip_literals_need_an_allowed_cidr() {
    let internet = FakeInternet::start();
    let address = internet.address();
    let script = format!(
        "start=$(date +%s%N); (exec 3<>/dev/tcp/{address}/7) 2>/dev/null && echo literal=yes || echo literal=no; \
         echo \"ms=$(( ($(date +%s%N) - start) / 1000000 ))\""
    );
    // The address of an allowed name, never resolved in this sandbox: refused at once.
    let output = internet.run(ALLOW, &script);
    let text = stdout(&output);
    assert!(text.contains("literal=no"), "{text}\n{}", stderr(&output));
    let ms: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ms="))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(ms < 1000, "refused, not hung: {ms} ms");
    // The same address through an allowed CIDR.
    let cidr = format!("{address}/32");
    let output = internet.run(&["--network", "allowlist", "--allow-cidr", &cidr], &script);
    assert!(
        stdout(&output).contains("literal=yes"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn allowlist_flags_are_checked() {
    let internet = FakeInternet::start();
    for (flags, message) in [
        (
            &["--network", "allowlist"][..],
            "needs at least one allowed host",
        ),
        (
            &["--network", "open", "--allow-host", "a.test"][..],
            "network mode is open",
        ),
        (
            &["--allow-host", "*.test"][..],
            "a wildcard needs at least two labels",
        ),
        (&["--allow-cidr", "10.0.0.1/8"][..], "host bits are set"),
        (&["--network", "everywhere"][..], "unknown network mode"),
    ] {
        let output = internet.run(flags, "true");
        assert_code(&output, 2);
        assert!(
            stderr(&output).contains(message),
            "{flags:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn a_named_sandbox_keeps_its_allowlist_and_counts_denials() {
    let internet = FakeInternet::start();
    let name = format!("egress-{}", std::process::id());
    let ak = |args: &[&str]| {
        agentkernel(Mode::Root, args)
            .env("AGENTKERNEL_CONFIG", internet.config.path())
            .output()
            .unwrap()
    };
    assert_code(&ak(&["create", &name, "--allow-host", "allowed.test"]), 0);
    assert_code(&ak(&["start", &name]), 0);
    let probe = "curl -sS --max-time 5 http://allowed.test/; \
                 getent hosts denied.test || echo denied=nxdomain";
    let output = ak(&["exec", &name, "--", "bash", "-c", probe]);
    let text = stdout(&output);
    let _ = ak(&["stop", &name]);
    let inspect = ak(&["inspect", &name]);
    let _ = ak(&["remove", &name, "--force"]);
    assert!(
        text.contains("fake internet: allowed.test"),
        "{text}\n{}",
        stderr(&output)
    );
    assert!(text.contains("denied=nxdomain"), "{text}");
    let shown = stdout(&inspect);
    assert!(shown.contains("network:  allowlist"), "{shown}");
    assert!(shown.contains("allow:    host allowed.test"), "{shown}");
    let denied: usize = shown
        .lines()
        .find_map(|l| l.strip_prefix("denied:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(denied >= 1, "{shown}");
}

/// The sandbox settings of `backend` in these tests: the container backends run the test
/// image (busybox), built first; the native backend the host's root, which has busybox
/// too (`busybox-static`), so the same probes run on each.
fn backend_flags(backend: &str) -> Vec<&'static str> {
    match backend {
        "native" => vec!["--backend", "native"],
        "docker" => {
            crate::docker::engine();
            vec!["--backend", "docker", "--image", crate::docker::IMAGE]
        }
        "podman" => {
            crate::docker::podman_engine();
            vec!["--backend", "podman", "--image", crate::docker::IMAGE]
        }
        // The host's root, as on the native backend (it has busybox).
        "gvisor" => vec!["--backend", "gvisor"],
        // The docker tests' busybox image, exported into the VM's disk.
        "microvm" => {
            crate::docker::engine();
            crate::microvm::ready();
            vec!["--backend", "microvm", "--image", crate::docker::IMAGE]
        }
        other => panic!("no egress tests for the {other} backend"),
    }
}

/// Busybox probes, one `NAME=RESULT` line each: a connection to an IP literal (first:
/// once a name resolves to an address, that address is allowed), an HTTP GET by name over
/// `nc` (its input held open a moment: busybox's `nc` ends at the end of its input, before
/// the answer), and a lookup.
fn busybox_probes(literal: &str) -> String {
    format!(
        r#"
echo "literal=$(busybox nc -w 3 {literal} 7 </dev/null 2>&1 | grep -o 'Connection refused')"
get() {{ {{ printf 'GET / HTTP/1.0\r\nHost: %s\r\n\r\n' "$1"; sleep 1; }} | busybox nc -w 3 "$1" 80 2>/dev/null | tail -n 1; }}
echo "allowed=$(get allowed.test)"
echo "denied=$(get denied.test)"
echo "lookup=$(busybox nslookup denied.test 2>&1 | grep -o NXDOMAIN | head -n 1)"
"#
    )
}

/// The value of `name=` in a probe's output.
fn probe<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {text}"))
}

/// A one-shot sandbox: an allowed name works, a denied one is NXDOMAIN, an IP literal is
/// refused at once (a reset, not a timeout), and each verdict is in the audit log.
fn one_shot_allowlist(backend: &str) {
    let internet = FakeInternet::start();
    let mut args = vec!["run"];
    args.extend(backend_flags(backend));
    let script = busybox_probes(&internet.address());
    args.extend(["--allow-host", "allowed.test", "--", "sh", "-c", &script]);
    let output = internet.ak(&args);
    assert_code(&output, 0);
    let text = stdout(&output);
    let context = format!("{backend}: {text}\n{}", stderr(&output));
    assert_eq!(
        probe(&text, "allowed"),
        "fake internet: allowed.test",
        "{context}"
    );
    assert_eq!(probe(&text, "denied"), "", "{context}");
    assert_eq!(probe(&text, "lookup"), "NXDOMAIN", "{context}");
    assert_eq!(probe(&text, "literal"), "Connection refused", "{context}");
    let audit = egress_audit();
    for expected in [
        "dns denied.test: not an allowed host",
        "port 7: not an address an allowed name resolved to",
        "port 80: host allowed.test",
    ] {
        assert!(
            audit.contains(expected),
            "{backend}: audit lacks {expected:?}:\n{audit}"
        );
    }
}

#[test]
fn one_shot_allowlist_on_native() {
    one_shot_allowlist("native");
}

#[test]
fn one_shot_allowlist_on_docker() {
    one_shot_allowlist("docker");
}

#[test]
fn one_shot_allowlist_on_podman() {
    one_shot_allowlist("podman");
}

/// A running sandbox's allowlist replaced and then extended: the next connection is
/// judged by the new list (a denied name becomes allowed, an allowed one denied); the
/// record keeps it across a restart; `network show` counts the refusals.
fn allowlist_changes_while_running(backend: &str) {
    let internet = FakeInternet::start();
    let name = format!("live-{backend}-{}", std::process::id());
    let mut create = vec!["create", name.as_str()];
    create.extend(backend_flags(backend));
    create.extend(["--allow-host", "allowed.test"]);
    assert_code(&internet.ak(&create), 0);
    assert_code(&internet.ak(&["start", &name]), 0);
    let script = busybox_probes(&internet.address());
    let check = |allowed: &str, denied: &str, when: &str| {
        let output = internet.ak(&["exec", &name, "--", "sh", "-c", &script]);
        let text = stdout(&output);
        let context = format!("{backend}, {when}: {text}\n{}", stderr(&output));
        assert_eq!(probe(&text, "allowed"), allowed, "{context}");
        assert_eq!(probe(&text, "denied"), denied, "{context}");
    };
    let (allowed, denied) = ("fake internet: allowed.test", "fake internet: denied.test");
    check(allowed, "", "at first");
    let replaced = internet.ak(&["network", "set", &name, "--allow-host", "denied.test"]);
    assert_code(&replaced, 0);
    assert!(
        stdout(&replaced).contains("allow:    host denied.test"),
        "{}",
        stdout(&replaced)
    );
    check("", denied, "replaced");
    let added = internet.ak(&[
        "network",
        "set",
        &name,
        "--add",
        "--allow-host",
        "allowed.test",
    ]);
    assert_code(&added, 0);
    check(allowed, denied, "extended");
    assert_code(&internet.ak(&["stop", &name]), 0);
    assert_code(&internet.ak(&["start", &name]), 0);
    check(allowed, denied, "restarted");
    let shown = internet.ak(&["network", "show", &name]);
    let inspect = internet.ak(&["inspect", &name]);
    let _ = internet.ak(&["remove", &name, "--force"]);
    let shown = stdout(&shown);
    assert!(shown.contains("allow:    host allowed.test"), "{shown}");
    let denied: usize = shown
        .lines()
        .find_map(|l| l.strip_prefix("denied:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(denied >= 2, "the refusals before each change: {shown}");
    assert!(
        stdout(&inspect).contains(&format!("denied:   {denied}")),
        "inspect shows the same count: {}",
        stdout(&inspect)
    );
}

#[test]
fn allowlist_changes_while_running_on_native() {
    allowlist_changes_while_running("native");
}

#[test]
fn allowlist_changes_while_running_on_docker() {
    allowlist_changes_while_running("docker");
}

#[test]
fn allowlist_changes_while_running_on_gvisor() {
    allowlist_changes_while_running("gvisor");
}

#[test]
fn allowlist_changes_while_running_on_microvm() {
    allowlist_changes_while_running("microvm");
}

#[test]
fn allowlist_changes_while_running_on_podman() {
    allowlist_changes_while_running("podman");
}

#[test]
fn only_an_allowlist_sandbox_has_a_list_to_change() {
    let internet = FakeInternet::start();
    let name = format!("quiet-{}", std::process::id());
    assert_code(&internet.ak(&["create", &name, "--network", "none"]), 0);
    let output = internet.ak(&["network", "set", &name, "--allow-host", "allowed.test"]);
    let _ = internet.ak(&["remove", &name, "--force"]);
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains("only an allowlist sandbox"),
        "{}",
        stderr(&output)
    );
}

/// Without the egress helper an allowlist container is refused, saying what is missing,
/// and nothing of it is left behind (its container, its runtime and egress directories).
#[test]
fn a_missing_helper_is_a_clear_error_on_docker() {
    let internet = FakeInternet::start();
    let mut args = vec!["run"];
    args.extend(backend_flags("docker"));
    args.extend(["--allow-host", "allowed.test", "--", "true"]);
    let output = agentkernel(Mode::Root, &args)
        .env("AGENTKERNEL_CONFIG", internet.config.path())
        .env("AGENTKERNEL_EGRESS", "/nonexistent/ak-egress")
        .output()
        .unwrap();
    assert_code(&output, 125);
    assert!(
        stderr(&output).contains("needs the egress helper /nonexistent/ak-egress"),
        "{}",
        stderr(&output)
    );
    let base = ak_core::runtime::backend_runtime_base(ak_core::BackendKind::Docker);
    let left: Vec<_> = std::fs::read_dir(&base)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".egress"))
        .collect();
    assert!(left.is_empty(), "egress directories left: {left:?}");
}

/// A sandbox whose container was killed from outside is found failed by a change of its
/// allowlist, rather than handed a list nothing enforces.
#[test]
fn a_change_finds_a_dead_container_failed() {
    let internet = FakeInternet::start();
    let name = format!("dead-{}", std::process::id());
    let mut create = vec!["create", name.as_str()];
    create.extend(backend_flags("docker"));
    create.extend(["--allow-host", "allowed.test"]);
    assert_code(&internet.ak(&create), 0);
    assert_code(&internet.ak(&["start", &name]), 0);
    let id = crate::common::sandbox_id(Mode::Root, &name);
    let killed = Command::new("docker")
        .args(["kill", &format!("agentkernel-{id}")])
        .output()
        .unwrap();
    assert!(killed.status.success(), "{killed:?}");
    let output = internet.ak(&["network", "set", &name, "--allow-host", "denied.test"]);
    let inspect = internet.ak(&["inspect", &name]);
    let _ = internet.ak(&["remove", &name, "--force"]);
    assert_code(&output, 2);
    assert!(stderr(&output).contains("failed"), "{}", stderr(&output));
    assert!(
        stdout(&inspect).contains("state:    failed"),
        "{}",
        stdout(&inspect)
    );
    assert!(
        stdout(&inspect).contains("allow:    host allowed.test"),
        "the record keeps the list it had: {}",
        stdout(&inspect)
    );
}

/// The same probes on the gVisor backend: the egress helper, on a TAP device (gVisor's
/// network stack speaks Ethernet), in front of the namespace runsc's network stack uses.
#[test]
fn allowlist_on_gvisor_lets_through_only_allowed_names() {
    let internet = FakeInternet::start();
    let mut flags = vec!["--backend", "gvisor"];
    flags.extend_from_slice(ALLOW);
    let output = internet.run(&flags, PROBES);
    let text = stdout(&output);
    assert_code(&output, 0);
    let has = |line: &str| text.lines().any(|l| l == line);
    for expected in [
        "http=fake internet: allowed.test",
        "eof=yes",
        "denied_resolves=no",
        "aaaa=no",
        "rebind_resolves=no",
        "host_mismatch=403",
        "metadata=no",
        "raw=raw-echo",
        "udp=dropped",
        "ipv6=refused",
    ] {
        assert!(
            has(expected),
            "{expected} on gVisor: {text}\n{}",
            stderr(&output)
        );
    }
    let audit = egress_audit();
    for expected in [
        "dns denied.test: not an allowed host",
        "HTTP Host denied.test is not an allowed host",
        "169.254.169.254 port 80: not an address an allowed name resolved to",
    ] {
        assert!(
            audit.contains(expected),
            "audit lacks {expected:?}:\n{audit}"
        );
    }
}

/// The helpers that are allowlist VMs' NICs (their far end), now.
fn vm_egress_helpers() -> usize {
    let out = sh("pgrep -f 'ak-egress --stream' || true");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// The microVM's NIC, through QEMU's stream backend, has the egress helper as its far end:
/// the same verdicts with the tools the default Debian guest has (bash, getent), for a
/// one-shot and a named VM; the helper goes with the VM.
#[test]
fn allowlist_on_microvm_lets_through_only_allowed_names() {
    let internet = FakeInternet::start();
    crate::microvm::ready();
    let helpers_before = vm_egress_helpers();
    let address = internet.address();
    let script = format!(
        // The literal first: once the name has resolved in this VM, its address is one an
        // allowed name resolved to, and reachable.
        r#"
start=$(date +%s%N); (exec 6<>/dev/tcp/{address}/7) 2>/dev/null && echo literal=yes || echo literal=no
echo "literal_ms=$(( ($(date +%s%N) - start) / 1000000 ))"
getent hosts allowed.test >/dev/null && echo resolves=yes || echo resolves=no
getent hosts denied.test >/dev/null && echo denied_resolves=yes || echo denied_resolves=no
exec 3<>/dev/tcp/allowed.test/80 && printf 'GET / HTTP/1.0\r\nHost: allowed.test\r\n\r\n' >&3 && echo "http=$(head -n1 <&3 | tr -d '\r')"
exec 8<>/dev/tcp/allowed.test/80 && printf 'GET / HTTP/1.0\r\nHost: allowed.test\r\n\r\n' >&8 && timeout 10 cat <&8 >/dev/null && echo eof=yes || echo eof=no
exec 5<>/dev/tcp/allowed.test/80 && printf 'GET / HTTP/1.0\r\nHost: denied.test\r\n\r\n' >&5 && echo "mismatch=$(head -n1 <&5 | tr -d '\r')"
exec 4<>/dev/tcp/allowed.test/7 && echo raw-echo >&4 && read -t 5 line <&4 && echo "raw=$line"
(exec 7<>/dev/tcp/169.254.169.254/80) 2>/dev/null && echo metadata=yes || echo metadata=no
"#
    );
    let output = internet.run(
        &["--backend", "microvm", "--allow-host", "allowed.test"],
        &script,
    );
    let text = stdout(&output);
    assert_code(&output, 0);
    let has = |line: &str| text.lines().any(|l| l == line);
    for expected in [
        "resolves=yes",
        "denied_resolves=no",
        "http=HTTP/1.0 200 OK",
        "eof=yes",
        "raw=raw-echo",
        "literal=no",
        "metadata=no",
    ] {
        assert!(
            has(expected),
            "{expected} in a VM: {text}\n{}",
            stderr(&output)
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("mismatch=") && l.contains("403")),
        "{text}"
    );
    let literal_ms: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("literal_ms="))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(literal_ms < 3000, "refused, not hung: {literal_ms} ms");
    let audit = egress_audit();
    assert!(
        audit.contains("HTTP Host denied.test is not an allowed host"),
        "{audit}"
    );

    // A named VM keeps its allowlist across its life; its helper goes when it does.
    let name = format!("egress-vm-{}", std::process::id());
    let cli = |args: &[&str]| {
        agentkernel(Mode::Root, args)
            .env("AGENTKERNEL_CONFIG", internet.config.path())
            .output()
            .unwrap()
    };
    assert_code(
        &cli(&[
            "create",
            &name,
            "--backend",
            "microvm",
            "--allow-host",
            "allowed.test",
        ]),
        0,
    );
    assert_code(&cli(&["start", &name]), 0);
    let probe = cli(&[
        "exec",
        &name,
        "--",
        "bash",
        "-c",
        "getent hosts denied.test || echo denied=no; exec 4<>/dev/tcp/allowed.test/7 && echo again >&4 && read -t 5 l <&4 && echo raw=$l",
    ]);
    assert_eq!(
        stdout(&probe),
        "denied=no\nraw=again\n",
        "{}",
        stderr(&probe)
    );
    assert_eq!(vm_egress_helpers(), helpers_before + 1);
    assert_code(&cli(&["remove", "--force", &name]), 0);
    let gone = std::time::Instant::now();
    while vm_egress_helpers() > helpers_before && gone.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        vm_egress_helpers(),
        helpers_before,
        "the VM's egress helper outlived it"
    );
}
