//! The docker backend end to end through the CLI: run, exit codes, streaming, stdin, named
//! sandboxes, cp, concurrent execs, the pool, hardening, and failures (a missing image,
//! an unreachable engine, a container killed from outside). Needs a running Docker engine
//! (`DOCKER_HOST` or /var/run/docker.sock) and the `docker` CLI for set-up and checks; the
//! tests fail, saying so, when there is none (CI starts one in `.ci/run`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::{
    Mode, agentkernel, ak, ak_with_state, assert_code, exclusive_host, sandbox_id, shared_host,
    stderr, stdout,
};

/// Built by the tests from the host's static busybox: no registry needed.
pub(crate) const IMAGE: &str = "agentkernel-test:busybox";
const MODE: Mode = Mode::Root;

pub(crate) fn docker(args: &[&str]) -> std::process::Output {
    cli("docker", args)
}

/// The engine's own CLI (`docker` or `podman`), for set-up and checks only.
pub(crate) fn cli(engine: &str, args: &[&str]) -> std::process::Output {
    Command::new(engine)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("the {engine} tests need the {engine} CLI for set-up: {e}"))
}

/// Checks the docker engine answers and the test image exists, building it once.
pub(crate) fn engine() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| prepare("docker"));
}

/// Checks `engine` answers and has the test image, importing it from the host's static
/// busybox when it has not.
fn prepare(engine: &str) {
    let version = cli(engine, &["version", "--format", "{{.Server.Version}}"]);
    assert!(
        version.status.success(),
        "the {engine} tests need a running {engine} engine (its API socket; CI starts one): {}",
        String::from_utf8_lossy(&version.stderr)
    );
    if cli(engine, &["image", "inspect", IMAGE]).status.success() {
        return;
    }
    let busybox = std::path::Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "building the test image needs a static busybox at /bin/busybox (apt install busybox-static)"
    );
    let root = tempfile::tempdir().unwrap();
    for dir in ["bin", "etc", "tmp", "root"] {
        std::fs::create_dir_all(root.path().join(dir)).unwrap();
    }
    std::fs::copy(busybox, root.path().join("bin/busybox")).unwrap();
    let applets = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.path().join("bin").join(applet));
        }
    }
    std::fs::write(
        root.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
    )
    .unwrap();
    let mut tar = Command::new("tar")
        .args(["-C", &root.path().to_string_lossy(), "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let import = Command::new(engine)
        .args(["import", "--change", "ENV PATH=/bin", "-", IMAGE])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(
        tar.wait().unwrap().success(),
        "tar of the test image failed"
    );
    assert!(
        import.status.success(),
        "{engine} import: {}",
        stderr(&import)
    );
}

fn name(test: &str) -> String {
    format!("d-{test}-{}", std::process::id())
}

/// Creates named sandbox `n` on `engine` (the test image, no network) and starts it.
pub(crate) fn create_started(engine: &str, n: &str) {
    let create = [
        "create",
        n,
        "--backend",
        engine,
        "--image",
        IMAGE,
        "--no-network",
    ];
    assert_code(&ak(MODE, &create), 0);
    assert_code(&ak(MODE, &["start", n]), 0);
}

fn drun(flags: &[&str], cmd: &[&str]) -> std::process::Output {
    let mut args = vec!["run", "--backend", "docker", "--image", IMAGE];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend_from_slice(cmd);
    ak(MODE, &args)
}

/// Our containers (by label) still on the engine for sandbox names or ids matching `part`.
fn containers_left(part: &str) -> Vec<String> {
    let listed = docker(&[
        "ps",
        "-a",
        "--filter",
        "label=io.agentkernel.sandbox",
        "--format",
        "{{.Names}}",
    ]);
    stdout(&listed)
        .lines()
        .filter(|l| l.contains(part))
        .map(String::from)
        .collect()
}

#[test]
fn docker_run_streams_output_and_exits_with_the_code() {
    let _host = shared_host();
    engine();
    let output = drun(
        &["--no-network"],
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
    );
    assert_code(&output, 7);
    assert_eq!(stdout(&output), "out\n");
    assert!(stderr(&output).contains("err"), "{}", stderr(&output));
    let killed = drun(&["--no-network"], &["sh", "-c", "kill -9 $$"]);
    assert_code(&killed, 137);
    let missing = drun(&["--no-network"], &["no-such-command"]);
    assert_code(&missing, 127);

    let start = Instant::now();
    let mut child = agentkernel(
        MODE,
        &[
            "run",
            "--backend",
            "docker",
            "--image",
            IMAGE,
            "--no-network",
            "--",
            "sh",
            "-c",
            "echo first; sleep 2; echo second",
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "first");
    let first_after = start.elapsed();
    assert_eq!(lines.next().unwrap().unwrap(), "second");
    assert!(start.elapsed() - first_after > Duration::from_millis(1500));
    assert!(child.wait().unwrap().success());

    let mut child = agentkernel(
        MODE,
        &[
            "run",
            "--backend",
            "docker",
            "--image",
            IMAGE,
            "--no-network",
            "--",
            "cat",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "through stdin\n");
}

#[test]
fn docker_sdk_file_examples_round_trip() {
    let _host = shared_host();
    engine();
    crate::sdk_files::sdk_file_examples_round_trip("docker", Some(IMAGE));
}

#[test]
fn docker_sandboxes_are_hardened() {
    let _host = shared_host();
    engine();
    let marker = format!("/tmp/agentkernel-host-marker-{}", std::process::id());
    std::fs::write(&marker, "host secret").unwrap();
    let mut host_process = Command::new("sleep").arg("31.4159").spawn().unwrap();
    let probe = "grep -E '^(CapBnd|CapEff|NoNewPrivs|Seccomp):' /proc/self/status; \
        cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; \
        ls /proc | grep -c '^[0-9]'; \
        mount -t tmpfs none /mnt 2>/dev/null && echo MOUNTED; \
        ps -o args | grep -c '^sleep' || true";
    let output = drun(
        &["--no-network"],
        &[
            "sh",
            "-c",
            &format!("test -e {marker} && echo VISIBLE; {probe}"),
        ],
    );
    let _ = host_process.kill();
    let _ = host_process.wait();
    let _ = std::fs::remove_file(&marker);
    assert_code(&output, 0);
    let text = stdout(&output);
    assert!(!text.contains("VISIBLE"), "a host file is visible: {text}");
    assert!(!text.contains("MOUNTED"), "mount worked: {text}");
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert!(text.contains("Seccomp:\t2"), "no seccomp filter: {text}");
    let bounding = text
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:\t"))
        .map(|hex| u64::from_str_radix(hex, 16).unwrap())
        .unwrap();
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    const CAP_SYS_PTRACE: u64 = 1 << 19;
    const CAP_NET_RAW: u64 = 1 << 13;
    assert_eq!(
        bounding & (CAP_SYS_ADMIN | CAP_SYS_PTRACE | CAP_NET_RAW),
        0,
        "{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    // Only loopback, and only the container's own processes (the agent, sh and a few).
    assert!(
        lines.contains(&"lo") && !lines.iter().any(|l| l.starts_with("eth")),
        "{text}"
    );
    let last_two: Vec<usize> = lines[lines.len() - 2..]
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(last_two[0] < 10, "host processes visible: {text}");
    // The host's `sleep 31.4159` is not there.
    assert_eq!(last_two[1], 0, "{text}");

    // Memory: the limit holds (the kernel kills the hog), and the host survives it.
    let hog = drun(
        &["--no-network", "--memory", "32m"],
        &["sh", "-c", "head -c 200000000 /dev/zero | tail > /dev/null"],
    );
    assert_code(&hog, 137);
    // Restrictive: read-only root (but a writable /tmp and workdir).
    let ro = drun(
        &["--profile", "restrictive"],
        &[
            "sh",
            "-c",
            "touch /etc/x 2>/dev/null && echo WROTE; touch /tmp/ok /workspace/ok && echo fine",
        ],
    );
    assert_code(&ro, 0);
    assert_eq!(stdout(&ro), "fine\n");
}

#[test]
fn docker_named_sandbox_lifecycle_cp_and_concurrent_execs() {
    let _host = shared_host();
    engine();
    let n = name("life");
    create_started("docker", &n);
    let id = sandbox_id(MODE, &n);
    assert_eq!(containers_left(&id).len(), 1);
    let output = ak(
        MODE,
        &[
            "exec",
            &n,
            "--",
            "sh",
            "-c",
            "echo kept > /workspace/f; exit 5",
        ],
    );
    assert_code(&output, 5);

    // cp in and out: binary content and a directory.
    let dir = tempfile::tempdir().unwrap();
    let blob: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    std::fs::write(dir.path().join("blob"), &blob).unwrap();
    std::fs::create_dir(dir.path().join("tree")).unwrap();
    std::fs::write(dir.path().join("tree/a"), "A").unwrap();
    let inside = format!("{n}:/workspace/blob");
    assert_code(
        &ak(
            MODE,
            &["cp", &dir.path().join("blob").to_string_lossy(), &inside],
        ),
        0,
    );
    assert_code(
        &ak(
            MODE,
            &[
                "cp",
                &dir.path().join("tree").to_string_lossy(),
                &format!("{n}:/workspace/tree"),
            ],
        ),
        0,
    );
    let back = dir.path().join("back");
    assert_code(&ak(MODE, &["cp", &inside, &back.to_string_lossy()]), 0);
    assert_eq!(std::fs::read(&back).unwrap(), blob);
    assert_eq!(
        stdout(&ak(MODE, &["exec", &n, "--", "cat", "/workspace/tree/a"])),
        "A"
    );

    // Concurrent execs in one container.
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let n = n.clone();
            std::thread::spawn(move || {
                ak(
                    MODE,
                    &[
                        "exec",
                        &n,
                        "--",
                        "sh",
                        "-c",
                        &format!("sleep 0.3; echo {i}"),
                    ],
                )
            })
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let output = handle.join().unwrap();
        assert_code(&output, 0);
        assert_eq!(stdout(&output), format!("{i}\n"));
    }

    // Stop keeps the workdir; start again.
    assert_code(&ak(MODE, &["stop", &n]), 0);
    assert!(
        containers_left(&id).is_empty(),
        "a stopped sandbox has no container"
    );
    assert_code(&ak(MODE, &["start", &n]), 0);
    assert_eq!(
        stdout(&ak(MODE, &["exec", &n, "--", "cat", "/workspace/f"])),
        "kept\n"
    );
    assert_code(&ak(MODE, &["remove", &n, "--force"]), 0);
    assert!(containers_left(&id).is_empty());
    assert!(!stdout(&ak(MODE, &["list"])).contains(&n));
}

#[test]
fn a_container_killed_from_outside_fails_and_is_cleaned_up() {
    let _host = shared_host();
    engine();
    let n = name("killed");
    create_started("docker", &n);
    let id = sandbox_id(MODE, &n);
    let container = format!("agentkernel-{id}");
    assert!(docker(&["kill", &container]).status.success());
    let output = ak(MODE, &["exec", &n, "--", "true"]);
    assert_code(&output, 2);
    assert!(stderr(&output).contains("failed"), "{}", stderr(&output));
    let inspected: serde_json::Value =
        serde_json::from_slice(&ak(MODE, &["inspect", &n, "--json"]).stdout).unwrap();
    assert_eq!(inspected["state"], "failed", "{inspected}");
    // Its container and runtime directory are released.
    assert!(
        containers_left(&id).is_empty(),
        "{:?}",
        containers_left(&id)
    );
    assert!(
        !std::path::Path::new("/run/agentkernel-docker")
            .join(&id)
            .exists()
    );
    assert_code(&ak(MODE, &["remove", &n]), 0);
}

/// Nothing of ours on the engine or in the runtime directory (run alone: other tests'
/// sandboxes would count).
fn assert_no_docker_leaks() {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !containers_left("agentkernel-").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        containers_left("agentkernel-").is_empty(),
        "{:?}",
        containers_left("")
    );
    let dirs: Vec<_> = std::fs::read_dir("/run/agentkernel-docker")
        .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(dirs.is_empty(), "runtime directories left: {dirs:?}");
}

#[test]
fn one_shot_containers_leave_nothing_behind() {
    let _host = exclusive_host();
    engine();
    for cmd in [
        &["true"][..],
        &["sh", "-c", "exit 3"],
        &["no-such-command"],
        &["sh", "-c", "sleep 60 & kill -9 $$"],
    ] {
        let output = drun(&["--no-network"], cmd);
        assert!(output.status.code().is_some(), "{output:?}");
    }
    let timed_out = drun(&["--no-network", "--timeout", "1s"], &["sleep", "30"]);
    assert_code(&timed_out, 124);
    assert_no_docker_leaks();
}

#[test]
fn docker_pool_hands_out_started_containers() {
    let _host = exclusive_host();
    engine();
    // Its own registry directory, so its daemon is not another test's.
    let state = tempfile::tempdir().unwrap();
    let with_state = |args: &[&str]| ak_with_state(state.path(), args);
    assert_code(&with_state(&["daemon", "start"]), 0);
    let flags = [
        "run",
        "-F",
        "--backend",
        "docker",
        "--image",
        IMAGE,
        "--no-network",
        "--",
    ];
    for i in 0..3 {
        let mut args = flags.to_vec();
        let text = format!("echo pooled {i}; hostname");
        args.extend(["sh", "-c", &text]);
        let output = with_state(&args);
        assert_code(&output, 0);
        assert!(stdout(&output).starts_with(&format!("pooled {i}\n")));
    }
    std::thread::sleep(Duration::from_millis(500));
    let status: serde_json::Value =
        serde_json::from_slice(&with_state(&["daemon", "status", "--json"]).stdout).unwrap();
    let pool = &status["pools"][0];
    assert!(
        pool["pool"].as_str().unwrap().starts_with("docker/"),
        "{status}"
    );
    // A spare ready (a hit) or one still starting when the run came (joined): either
    // way a pool container, not one built for the run.
    let pooled = pool["hits"].as_u64().unwrap() + pool["joined"].as_u64().unwrap();
    assert!(pooled >= 1, "{status}");
    assert_code(&with_state(&["daemon", "stop"]), 0);
    // The daemon removed its spares, and the used ones removed themselves.
    assert_no_docker_leaks();
}

#[test]
fn docker_failures_are_clear() {
    let _host = shared_host();
    engine();
    let missing = ak(
        MODE,
        &[
            "run",
            "--backend",
            "docker",
            "--image",
            "agentkernel-test:absent",
            "--",
            "true",
        ],
    );
    assert_code(&missing, 125);
    assert!(
        stderr(&missing).contains("not on this machine"),
        "{}",
        stderr(&missing)
    );
    let unreachable = agentkernel(
        MODE,
        &["run", "--backend", "docker", "--image", IMAGE, "--", "true"],
    )
    .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    .output()
    .unwrap();
    assert_code(&unreachable, 125);
    assert!(
        stderr(&unreachable).contains("not usable"),
        "{}",
        stderr(&unreachable)
    );
    let host_image = ak(
        MODE,
        &[
            "run",
            "--backend",
            "docker",
            "--image",
            "host",
            "--",
            "true",
        ],
    );
    assert_code(&host_image, 125);
    assert!(
        stderr(&host_image).contains("--image"),
        "{}",
        stderr(&host_image)
    );
}

/// Checks the podman engine answers and has the test image, building it once.
pub(crate) fn podman_engine() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| prepare("podman"));
}

#[test]
fn podman_runs_and_execs() {
    let _host = shared_host();
    podman_engine();
    let output = ak(
        MODE,
        &[
            "run",
            "--backend",
            "podman",
            "--image",
            IMAGE,
            "--no-network",
            "--",
            "sh",
            "-c",
            "echo from podman; exit 6",
        ],
    );
    assert_code(&output, 6);
    assert_eq!(stdout(&output), "from podman\n");
    let n = name("podman");
    create_started("podman", &n);
    let output = ak(
        MODE,
        &[
            "exec",
            &n,
            "--",
            "sh",
            "-c",
            "echo kept > /workspace/f; cat /workspace/f",
        ],
    );
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "kept\n");
    let id = sandbox_id(MODE, &n);
    assert_code(&ak(MODE, &["remove", &n, "--force"]), 0);
    let left = cli("podman", &["ps", "-a", "--format", "{{.Names}}"]);
    assert!(!stdout(&left).contains(&id), "{}", stdout(&left));
}

#[test]
fn docker_volumes_and_sources() {
    let _host = shared_host();
    engine();
    crate::volumes::volumes_and_sources(MODE, &["--backend", "docker", "--image", IMAGE]);
}
