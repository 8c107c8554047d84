//! The microvm backend end to end through the CLI, with the QEMU driver (emulated here:
//! KVM on these machines takes only paravirtualised guests): run, exit codes, streaming,
//! named sandboxes, cp, concurrent execs, the warm pool, isolation (the host's files are
//! out of reach; no network unless asked for: see `microvm_net`), a hypervisor killed
//! from outside, a bad kernel and a corrupt image. Needs what `agentkernel setup` builds
//! (CI runs it in `.ci/run`); the tests fail, saying so, when it is missing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::{
    Mode, agentkernel, ak, ak_with_state, assert_code, exclusive_host, sandbox_id, shared_host,
    stderr, stdout,
};

const MODE: Mode = Mode::Root;
/// Where root's VMs keep their runtime directories.
const RUN_BASE: &str = "/run/agentkernel-microvm";

/// Checks the backend is usable (kernel and image built), once.
pub(crate) fn ready() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let status = ak(MODE, &["status", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        let microvm = report["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["backend"] == "microvm")
            .unwrap()
            .clone();
        assert!(
            microvm["usable"].as_bool().unwrap(),
            "the microvm tests need qemu-system-x86, vhost-device-vsock and what `agentkernel setup` builds (CI runs it): {microvm}"
        );
        let image = microvm["details"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d[0] == "image")
            .unwrap();
        assert!(
            !image[1].as_str().unwrap().contains("not built"),
            "the default image is not built: run `agentkernel setup` ({microvm})"
        );
    });
}

pub(crate) fn name(test: &str) -> String {
    format!("vm-{test}-{}", std::process::id())
}

pub(crate) fn vrun(flags: &[&str], cmd: &[&str]) -> std::process::Output {
    let mut args = vec!["run", "--backend", "microvm"];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend_from_slice(cmd);
    ak(MODE, &args)
}

/// Runs `agentkernel ARGS` (split at spaces) on a terminal made by `script`; its output.
fn in_terminal(args: &str) -> String {
    let cli = agentkernel(MODE, &[]);
    let line = format!("{} {args}", cli.get_program().to_string_lossy());
    let mut script = std::process::Command::new("script");
    script.args(["-qec", &line, "/dev/null"]);
    for (key, value) in cli.get_envs() {
        match value {
            Some(value) => script.env(key, value),
            None => script.env_remove(key),
        };
    }
    let output = script.output().expect("script (util-linux) runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Hypervisor and vsock daemon processes whose command line mentions `part`.
pub(crate) fn vm_processes(part: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if (cmdline.starts_with("/usr/bin/qemu-system") || cmdline.contains("vhost-device-vsock"))
            && cmdline.contains(part)
        {
            found.push(pid);
        }
    }
    found
}

pub(crate) fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn microvm_run_exit_codes_and_its_own_kernel() {
    let _host = shared_host();
    ready();
    let output = vrun(
        &["--env", "AK_VM_ENV=run"],
        &["sh", "-c", "echo hello from $(uname -r) $AK_VM_ENV; exit 7"],
    );
    assert_code(&output, 7);
    // Our guest kernel, not the host's; the sandbox's environment reaches the command
    // (the guest's agent, the kernel's init, starts without it).
    assert_eq!(
        stdout(&output),
        "hello from 6.1.192 run\n",
        "{}",
        stderr(&output)
    );
    let stderr_only = vrun(&[], &["sh", "-c", "echo oops >&2; kill -9 $$"]);
    assert_code(&stderr_only, 137);
    assert_eq!(stderr(&stderr_only), "oops\n");
    let missing = vrun(&[], &["no-such-command"]);
    assert_code(&missing, 127);
    // stdin reaches the command.
    let mut child = agentkernel(
        MODE,
        &[
            "run",
            "--backend",
            "microvm",
            "--",
            "sh",
            "-c",
            "tr a-z A-Z",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"piped\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(stdout(&output), "PIPED\n");
}

#[test]
fn microvm_output_streams_before_the_command_ends() {
    let _host = shared_host();
    ready();
    let mut child = agentkernel(
        MODE,
        &[
            "run",
            "--backend",
            "microvm",
            "--",
            "sh",
            "-c",
            "echo first; sleep 3; echo second",
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "first");
    let first_seen = Instant::now();
    assert_eq!(lines.next().unwrap().unwrap(), "second");
    assert!(
        first_seen.elapsed() > Duration::from_secs(2),
        "the first line came before the command's sleep, not with the second"
    );
    assert!(child.wait().unwrap().success());
}

#[test]
fn microvm_is_isolated_from_the_host() {
    let _host = shared_host();
    ready();
    let marker = tempfile::Builder::new()
        .prefix("host-secret")
        .tempfile_in("/root")
        .unwrap();
    let probe = format!(
        "test -e {0} && echo visible || echo invisible; ls /sys/class/net; \
         echo x > /etc/written && echo wrote; rm -r /etc/apt && mkdir /etc/apt && ls -A /etc/apt | wc -l",
        marker.path().display()
    );
    let output = vrun(&[], &["sh", "-c", &probe]);
    assert_code(&output, 0);
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "invisible", "{text}");
    // No network device: loopback only.
    assert_eq!(lines[1], "lo", "{text}");
    // The root is writable (an overlay in the VM's memory)...
    assert_eq!(lines[2], "wrote", "{text}");
    // A directory of the image removed and made again is empty (overlay's opaque dirs).
    assert_eq!(lines[3], "0", "{text}");
    // ...and nothing of it reaches the next VM or the image.
    let again = vrun(
        &[],
        &[
            "sh",
            "-c",
            "test -e /etc/written && echo kept || echo fresh",
        ],
    );
    assert_eq!(stdout(&again), "fresh\n");
    // A network, when asked for, is microvm_net's.
}

#[test]
fn microvm_sdk_file_examples_round_trip() {
    let _host = shared_host();
    ready();
    crate::sdk_files::sdk_file_examples_round_trip("microvm", None);
}

#[test]
fn microvm_named_lifecycle_cp_and_concurrent_execs() {
    let _host = shared_host();
    ready();
    let n = name("named");
    assert_code(
        &ak(
            MODE,
            &[
                "create",
                &n,
                "--backend",
                "microvm",
                "--env",
                "AK_VM_ENV=named",
            ],
        ),
        0,
    );
    assert_code(&ak(MODE, &["start", &n]), 0);
    let exec = |script: &str| ak(MODE, &["exec", &n, "--", "sh", "-c", script]);
    let output = exec("echo kept > /workspace/f; cat /workspace/f; echo $AK_VM_ENV");
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "kept\nnamed\n");
    // Files in both directions, a directory included.
    let host = tempfile::tempdir().unwrap();
    let tree = host.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    let binary: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    std::fs::write(tree.join("sub/blob"), &binary).unwrap();
    assert_code(
        &ak(
            MODE,
            &[
                "cp",
                &tree.to_string_lossy(),
                &format!("{n}:/workspace/tree"),
            ],
        ),
        0,
    );
    let sum = exec("md5sum < /workspace/tree/sub/blob");
    let expected = std::process::Command::new("md5sum")
        .stdin(std::fs::File::open(tree.join("sub/blob")).unwrap())
        .output()
        .unwrap();
    assert_eq!(stdout(&sum), stdout(&expected));
    let back = host.path().join("back");
    assert_code(
        &ak(
            MODE,
            &[
                "cp",
                &format!("{n}:/workspace/tree"),
                &back.to_string_lossy(),
            ],
        ),
        0,
    );
    assert_eq!(std::fs::read(back.join("sub/blob")).unwrap(), binary);
    // Several execs at once on one VM.
    let started = Instant::now();
    let children: Vec<_> = (0..4)
        .map(|i| {
            agentkernel(
                MODE,
                &["exec", &n, "--", "sh", "-c", &format!("sleep 2; echo {i}")],
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        assert_eq!(stdout(&output), format!("{i}\n"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "the execs ran one after another"
    );
    // A terminal: `exec -t` gets a PTY from the guest's agent (`script` gives the CLI one).
    let tty = in_terminal(&format!("exec -t {n} -- tty"));
    assert!(tty.contains("/dev/pts/"), "{tty}");
    let id = sandbox_id(MODE, &n);
    assert_code(&ak(MODE, &["stop", &n]), 0);
    assert!(vm_processes(&id).is_empty(), "stopped, its VM is gone");
    assert!(!Path::new(RUN_BASE).join(&id).exists());
    assert_code(&ak(MODE, &["start", &n]), 0);
    assert_code(&exec("true"), 0);
    assert_code(&ak(MODE, &["remove", &n, "--force"]), 0);
    assert!(vm_processes(&id).is_empty());
    assert!(!Path::new(RUN_BASE).join(&id).exists());
}

#[test]
fn microvm_hypervisor_killed_from_outside_fails_and_is_released() {
    let _host = shared_host();
    ready();
    let n = name("killed");
    assert_code(&ak(MODE, &["create", &n, "--backend", "microvm"]), 0);
    assert_code(&ak(MODE, &["start", &n]), 0);
    let id = sandbox_id(MODE, &n);
    let processes = vm_processes(&id);
    // QEMU alone: a named VM's agent channel is virtio-serial, with no vsock daemon.
    assert_eq!(processes.len(), 1, "qemu only: {processes:?}");
    let qemu = processes
        .iter()
        .copied()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .unwrap()
                .starts_with("qemu")
        })
        .unwrap();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(qemu as i32, libc::SIGKILL) };
    let exec = ak(MODE, &["exec", &n, "--", "true"]);
    assert_ne!(exec.status.code(), Some(0));
    assert!(
        stderr(&exec).contains("failed") || stderr(&exec).contains("no longer running"),
        "{}",
        stderr(&exec)
    );
    let inspected: serde_json::Value =
        serde_json::from_slice(&ak(MODE, &["inspect", &n, "--json"]).stdout).unwrap();
    assert_eq!(inspected["state"], "failed", "{inspected}");
    wait_until(
        "the VM's processes are gone",
        Duration::from_secs(10),
        || vm_processes(&id).is_empty(),
    );
    assert!(
        !Path::new(RUN_BASE).join(&id).exists(),
        "its sockets and logs are released"
    );
    assert_code(&ak(MODE, &["remove", &n]), 0);
}

/// The cache root's and its built kernel's paths (root's cache, as `setup` built it).
fn built_cache() -> (PathBuf, PathBuf) {
    let cache = PathBuf::from("/var/cache/agentkernel/microvm");
    let kernel = std::fs::read_dir(cache.join("kernel"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("vmlinux"))
        .find(|p| p.is_file())
        .expect("a built kernel");
    (cache, kernel)
}

#[test]
fn microvm_bad_kernel_and_corrupt_image_fail_clearly() {
    let _host = shared_host();
    ready();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let with_config = |kernel: &str| {
        std::fs::write(&config, format!("[microvm]\nkernel = \"{kernel}\"\n")).unwrap();
        agentkernel(MODE, &["run", "--backend", "microvm", "--", "true"])
            .env("AGENTKERNEL_CONFIG", &config)
            .output()
            .unwrap()
    };
    let missing = with_config("/nonexistent/vmlinux");
    assert_ne!(missing.status.code(), Some(0));
    assert!(
        stderr(&missing).contains("/nonexistent/vmlinux"),
        "{}",
        stderr(&missing)
    );
    let not_elf = dir.path().join("bzImage");
    std::fs::write(&not_elf, b"MZ this is no vmlinux").unwrap();
    let bad = with_config(&not_elf.to_string_lossy());
    assert!(stderr(&bad).contains("not an ELF file"), "{}", stderr(&bad));

    // The Firecracker driver where there is no Firecracker (nor KVM for it), and a driver
    // that does not exist: clear errors, nothing started.
    for (driver, code, words) in [
        ("firecracker", 125, "firecracker not found"),
        ("bogus", 2, "[microvm] unknown variant `bogus`"),
    ] {
        std::fs::write(&config, format!("[microvm]\ndriver = \"{driver}\"\n")).unwrap();
        let output = agentkernel(MODE, &["run", "--backend", "microvm", "--", "true"])
            .env("AGENTKERNEL_CONFIG", &config)
            .output()
            .unwrap();
        assert_code(&output, code);
        assert!(stderr(&output).contains(words), "{}", stderr(&output));
    }
    // A bad [microvm] section breaks only the microvm backend, not a native run.
    let output = agentkernel(MODE, &["run", "--no-network", "--", "true"])
        .env("AGENTKERNEL_CONFIG", &config)
        .output()
        .unwrap();
    assert_code(&output, 0);

    // A corrupt base image: a private cache holding the real kernel and a garbage image.
    let (cache, kernel) = built_cache();
    let private = dir.path().join("cache");
    let kernel_dir = private
        .join("kernel")
        .join(kernel.parent().unwrap().file_name().unwrap());
    std::fs::create_dir_all(&kernel_dir).unwrap();
    std::fs::copy(&kernel, kernel_dir.join("vmlinux")).unwrap();
    std::fs::create_dir_all(private.join("images")).unwrap();
    for image in std::fs::read_dir(cache.join("images")).unwrap().flatten() {
        std::fs::write(
            private.join("images").join(image.file_name()),
            vec![0x5a; 1 << 20],
        )
        .unwrap();
    }
    let corrupt = agentkernel(MODE, &["run", "--backend", "microvm", "--", "true"])
        .env("AGENTKERNEL_MICROVM_CACHE", &private)
        .output()
        .unwrap();
    assert_ne!(corrupt.status.code(), Some(0));
    let text = stderr(&corrupt);
    assert!(text.contains("the VM did not start"), "{text}");
    assert!(
        text.contains("mount the base image"),
        "the guest's own words: {text}"
    );
}

#[test]
fn microvm_pool_hands_out_booted_vms() {
    let _host = exclusive_host();
    ready();
    let state = tempfile::tempdir().unwrap();
    let with_state = |args: &[&str]| ak_with_state(state.path(), args);
    let before = run_dirs();
    assert_code(&with_state(&["daemon", "start"]), 0);
    for i in 0..3 {
        let text = format!("echo pooled {i}; cat /proc/sys/kernel/random/boot_id");
        let output = with_state(&["run", "-F", "--backend", "microvm", "--", "sh", "-c", &text]);
        assert_code(&output, 0);
        assert!(
            stdout(&output).starts_with(&format!("pooled {i}\n")),
            "{}",
            stdout(&output)
        );
    }
    let status: serde_json::Value =
        serde_json::from_slice(&with_state(&["daemon", "status", "--json"]).stdout).unwrap();
    let pool = microvm_pool(&status);
    // A spare ready (a hit) or one still booting when the run came (joined).
    let pooled = pool["hits"].as_u64().unwrap() + pool["joined"].as_u64().unwrap();
    assert!(pooled >= 1, "{status}");
    assert_code(&with_state(&["daemon", "stop"]), 0);
    wait_until(
        "every VM of the pool is gone",
        Duration::from_secs(15),
        || run_dirs().is_subset(&before),
    );
}

/// The microvm pool of `daemon status --json`'s answer `status`.
pub(crate) fn microvm_pool(status: &serde_json::Value) -> serde_json::Value {
    status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pool"].as_str().unwrap().starts_with("microvm/"))
        .unwrap_or_else(|| panic!("no microvm pool in {status}"))
        .clone()
}

/// The VMs' runtime directories now.
fn run_dirs() -> std::collections::BTreeSet<std::ffi::OsString> {
    std::fs::read_dir(RUN_BASE).map_or_else(
        |_| Default::default(),
        |dir| dir.flatten().map(|e| e.file_name()).collect(),
    )
}

#[test]
fn microvm_boots_a_container_image() {
    let _host = shared_host();
    ready();
    // The docker tests' busybox image, exported through the engine's API into a disk.
    crate::docker::engine();
    let output = vrun(
        &["--image", crate::docker::IMAGE],
        &[
            "sh",
            "-c",
            "readlink /bin/sh; test -e /usr/bin/apt && echo debian || echo busybox",
        ],
    );
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "busybox\nbusybox\n", "{}", stderr(&output));
    // Cached by the image's id: the second boot exports nothing.
    let again = vrun(&["--image", crate::docker::IMAGE], &["true"]);
    assert_code(&again, 0);
    // An image the engine does not have and cannot pull is a clear error.
    let missing = vrun(&["--image", "agentkernel-test:absent"], &["true"]);
    assert_ne!(missing.status.code(), Some(0));
    assert!(
        stderr(&missing).contains("agentkernel-test:absent"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn microvm_volumes_and_sources() {
    let _host = shared_host();
    ready();
    crate::volumes::volumes_and_sources(MODE, &["--backend", "microvm"]);
}
