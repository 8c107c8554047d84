//! Secrets on the backends other than native, against the same fake internet: the real
//! value reaches the secret's host only, comes back masked, a placeholder sent elsewhere
//! is blocked and audited, the CA bundle is where tools look (the variables, and the
//! image's own system bundle with the image's roots kept), and the real value is nowhere
//! inside. HTTPS goes through `curl`, which checks the helper's certificates against the
//! bundle (through the variables, and through the system bundle without them); the rest
//! through busybox (the test image's tools; gVisor runs the host's root, which has both).

use std::process::Command;

use super::secrets::value;
use super::{FakeInternet, backend_flags, egress_audit};
use crate::common::{Mode, agentkernel, assert_code, stderr, stdout};

/// The test image with the host's `curl` (and the libraries it loads) and the host's system
/// CA bundle at the usual path, as images that carry `ca-certificates` have it; made once
/// per engine from the busybox test image. busybox's own `wget` cannot be the client: its
/// TLS offers no signature algorithms, which leaves only SHA-1 signatures (RFC 5246), and
/// the helper's TLS signs none.
const CURL_IMAGE: &str = "agentkernel-test:busybox-curl";
const HOST_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn image_with_curl(engine: &str) {
    let cli = |args: &[&str]| {
        let output = crate::docker::cli(engine, args);
        assert!(
            output.status.success(),
            "{engine} {args:?}: {}",
            stderr(&output)
        );
    };
    assert!(
        std::path::Path::new(HOST_BUNDLE).is_file(),
        "the secrets tests need the host's CA bundle {HOST_BUNDLE} (apt-get install ca-certificates)"
    );
    let curl = which("curl");
    // The image is kept between runs, labelled with what it was made from: the tests
    // compare its roots with the host's bundle, which an upgrade of ca-certificates (or
    // of curl) changes, so a stale image is made again.
    let inputs = inputs_label(&[std::path::Path::new(HOST_BUNDLE), &curl]);
    let label = crate::docker::cli(
        engine,
        &[
            "image",
            "inspect",
            "--format",
            "{{index .Config.Labels \"agentkernel.test.inputs\"}}",
            CURL_IMAGE,
        ],
    );
    if label.status.success() && stdout(&label).trim() == inputs {
        return;
    }
    let tree = tempfile::tempdir().unwrap();
    let put = |from: &std::path::Path, to: &str| {
        let target = tree.path().join(to.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        // Follows links: the image gets the files themselves.
        std::fs::copy(from, &target).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    };
    put(std::path::Path::new(HOST_BUNDLE), HOST_BUNDLE);
    put(&curl, "/bin/curl");
    let ldd = Command::new("ldd").arg(&curl).output().unwrap();
    assert!(
        ldd.status.success(),
        "ldd {}: {}",
        curl.display(),
        stderr(&ldd)
    );
    for library in stdout(&ldd)
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
    {
        put(std::path::Path::new(library), library);
    }
    let name = format!("akcurl-{}", std::process::id());
    let _ = crate::docker::cli(engine, &["rm", "-f", &name]);
    cli(&["create", "--name", &name, crate::docker::IMAGE, "true"]);
    // The tree's content into `/`, merged with the image's.
    let source = format!("{}/.", tree.path().display());
    cli(&["cp", &source, &format!("{name}:/")]);
    let change = format!("LABEL agentkernel.test.inputs={inputs}");
    cli(&["commit", "--change", &change, &name, CURL_IMAGE]);
    cli(&["rm", "-f", &name]);
}

/// A digest of the files' contents (not stable across Rust releases, which only means a
/// needless rebuild of the image).
fn inputs_label(files: &[&std::path::Path]) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in files {
        std::fs::read(file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

fn which(program: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("the secrets tests need {program} on the host (apt-get install {program})")
        })
}

/// The flags of `backend` with the image that has system roots.
fn flags(backend: &str) -> Vec<&'static str> {
    let mut flags = backend_flags(backend);
    let engine = match backend {
        "podman" => Some("podman"),
        "docker" | "microvm" => Some("docker"),
        _ => None,
    };
    if let Some(engine) = engine {
        image_with_curl(engine);
        for flag in flags.iter_mut() {
            if *flag == crate::docker::IMAGE {
                *flag = CURL_IMAGE;
            }
        }
    }
    flags
}

fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"))
}

/// The probes, busybox's only. The value is searched for by a pattern read from a pipe
/// (`printf` is the shell's own): no command line ever holds it whole.
fn script(a: &str, b: &str) -> String {
    format!(
        r#"
t="$AK_TEST_TOKEN"
echo "token=$t"
echo "vars=$SSL_CERT_FILE $REQUESTS_CA_BUNDLE $CURL_CA_BUNDLE $NODE_EXTRA_CA_CERTS"
curl -sS --max-time 20 -H "Authorization: Bearer $t" https://api.test/echo
curl -sS --max-time 20 -H "Authorization: Bearer $t" https://api.test/chunked
# Without the variables: curl's own default, the system bundle.
env -u CURL_CA_BUNDLE -u SSL_CERT_FILE curl -sS --max-time 20 -H "Authorization: Bearer $t" https://api.test/echo | busybox sed 's/^secure:/system:/'
echo "leak=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 -H "X-Key: $t" http://other.test/)"
echo "other=$(curl -sS --max-time 10 http://other.test/)"
f=/run/agentkernel/secrets/AK_TEST_FILE_SECRET
echo "file=$(busybox cat $f) mode=$(busybox stat -c %a $f)"
ca=/run/agentkernel/ca.pem; system=/etc/ssl/certs/ca-certificates.crt
busybox tail -c "$(busybox wc -c < $ca)" $system | busybox cmp -s - $ca && echo system_ends_with_ca=yes
busybox cmp -s $system /run/agentkernel/ca-bundle.pem && echo system_is_bundle=yes
echo "roots=$(busybox grep -c 'BEGIN CERTIFICATE' $system)"
a='{a}'
b='{b}'
hits=$(printf '%s%s\n' "$a" "$b" | busybox grep -rlF -f - /proc/[0-9]*/environ /proc/[0-9]*/cmdline /run /tmp /etc/ssl "$PWD" 2>/dev/null | busybox tr '\n' ,)
echo "hits=$hits"
"#
    )
}

/// Substitution, masking, a leak, the bundle and the search, in one sandbox of `backend`;
/// then a leak under `on_leak = "kill"`, which stops the sandbox where the backend can
/// (`kills`) and is refused where it cannot.
fn secrets_on(backend: &str, kills: bool) {
    let internet = FakeInternet::start();
    let flags = flags(backend);
    // The audit log is the host's: what this test adds to it is what counts.
    let count = |what: &str| egress_audit().matches(what).count();
    let (leaks, stops) = (
        count("the placeholder of secret AK_TEST_TOKEN was sent to other.test"),
        count("the sandbox was stopped (on_leak = kill)"),
    );
    let (a, b) = value("token");
    let token = format!("{a}{b}");
    let (fa, fb) = value("file");
    let file_secret = format!("{fa}{fb}");
    let mut args = vec!["run"];
    args.extend(flags.iter().copied());
    let script = script(&a, &b);
    args.extend([
        "--secret",
        "AK_TEST_TOKEN:api.test:authorization",
        "--allow-host",
        "other.test",
        "--secret-file",
        "AK_TEST_FILE_SECRET",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let output = agentkernel(Mode::Root, &args)
        .env("AGENTKERNEL_CONFIG", internet.config.path())
        .env("AK_TEST_TOKEN", &token)
        .env("AK_TEST_FILE_SECRET", &file_secret)
        .output()
        .unwrap();
    let text = stdout(&output);
    let context = format!("{backend}: {text}\n{}", stderr(&output));
    assert_code(&output, 0);
    let placeholder = line(&text, "token=");
    assert!(placeholder.starts_with("akph_"), "{context}");
    assert!(
        !text.contains(&token),
        "the value reached the sandbox: {context}"
    );
    let received =
        std::fs::read_to_string(internet.certs.path().join("received.log")).unwrap_or_default();
    assert!(
        received.contains(&format!("api.test Bearer {token}")),
        "the server did not get the value: {received:?}\n{context}"
    );
    assert!(!received.contains(placeholder), "{received:?}");
    for echoed in ["secure", "chunked", "system"] {
        assert!(
            text.contains(&format!("{echoed}: Bearer {placeholder}")),
            "{echoed} masked: {context}"
        );
    }
    assert_eq!(
        line(&text, "vars="),
        "/run/agentkernel/ca-bundle.pem /run/agentkernel/ca-bundle.pem \
         /run/agentkernel/ca-bundle.pem /run/agentkernel/ca.pem",
        "{context}"
    );
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
    // The image's own bundle is the sandbox's: the image's roots, then the CA.
    assert!(
        text.lines().any(|l| l == "system_ends_with_ca=yes"),
        "{context}"
    );
    assert!(
        text.lines().any(|l| l == "system_is_bundle=yes"),
        "{context}"
    );
    let host_roots = std::fs::read_to_string(HOST_BUNDLE)
        .unwrap()
        .matches("BEGIN CERTIFICATE")
        .count();
    assert_eq!(
        line(&text, "roots="),
        (host_roots + 1).to_string(),
        "{context}"
    );
    assert_eq!(
        line(&text, "hits="),
        "",
        "the value found inside: {context}"
    );
    assert_eq!(
        count("the placeholder of secret AK_TEST_TOKEN was sent to other.test"),
        leaks + 1,
        "{backend}: the leak is audited"
    );
    let audit = egress_audit();
    assert!(
        audit.contains("secret AK_TEST_TOKEN substituted"),
        "{audit}"
    );
    assert!(!audit.contains(&token), "the audit log holds the value");

    let config = tempfile::NamedTempFile::new().unwrap();
    let base = std::fs::read_to_string(internet.config.path()).unwrap();
    std::fs::write(config.path(), format!("{base}on_leak = \"kill\"\n")).unwrap();
    let (a, b) = value("kill");
    let secret = format!("AK_TEST_TOKEN={a}{b}:api.test");
    let mut args = vec!["run"];
    args.extend(flags.iter().copied());
    args.extend([
        "--secret",
        &secret,
        "--allow-host",
        "other.test",
        "--",
        "sh",
        "-c",
        "curl -s --max-time 5 -H \"X-Key: $AK_TEST_TOKEN\" http://other.test/ >/dev/null; sleep 5; echo survived",
    ]);
    let output = agentkernel(Mode::Root, &args)
        .env("AGENTKERNEL_CONFIG", config.path())
        .output()
        .unwrap();
    let context = format!("{backend}: {}\n{}", stdout(&output), stderr(&output));
    if !kills {
        // Refused before anything runs, saying why.
        assert_ne!(output.status.code(), Some(0), "{context}");
        assert!(
            stderr(&output).contains("on_leak = \"kill\" is not available"),
            "{context}"
        );
        return;
    }
    assert!(!stdout(&output).contains("survived"), "{context}");
    assert_ne!(output.status.code(), Some(0), "{context}");
    assert_eq!(
        count("the sandbox was stopped (on_leak = kill)"),
        stops + 1,
        "{context}"
    );
}

#[test]
fn secrets_on_docker() {
    secrets_on("docker", true);
}

#[test]
fn secrets_on_podman() {
    secrets_on("podman", true);
}

#[test]
fn secrets_on_gvisor() {
    secrets_on("gvisor", false);
}

/// In a QEMU microVM (emulated here: one VM for all the checks, and one for the kill).
#[test]
fn secrets_on_microvm() {
    secrets_on("microvm", true);
}
