//! `run --image <loopback registry>/…` on the native backend: pulled into the store and
//! run from its layers, with no container engine involved, the image's config applied.

use std::path::Path;

use super::registry::Registry;
use super::registry::images::{busybox, push};
use super::{cli, stderr};

fn run(state: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["run", "--backend", "native", "--no-network"];
    all.extend_from_slice(args);
    cli(state, &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_runs_a_pulled_image_with_its_config_applied() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests need root"
    );
    let registry = Registry::plain();
    let reference = push(&registry, "busybox:run", &busybox()).await;
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    std::fs::write(state.join("config.toml"), "").unwrap();

    // Not in the store and told not to pull: a clear error, exit code 2, nothing run.
    let never = run(
        state,
        &["--image", &reference, "--pull", "never", "--", "true"],
    );
    assert_eq!(never.status.code(), Some(2), "{}", stderr(&never));
    assert!(
        stderr(&never).contains("not in the local store"),
        "{}",
        stderr(&never)
    );

    // Pulled when missing (the default); WorkingDir and Env from the image.
    let out = run(
        state,
        &[
            "--image",
            &reference,
            "--",
            "sh",
            "-c",
            "pwd; echo $IMAGE; ls /bin/busybox; test -e /usr/bin || echo no-host",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/home/user\nbusybox\n/bin/busybox\nno-host\n"
    );
    // Now stored: `--pull never` runs it; the sandbox's env wins over the image's.
    let out = run(
        state,
        &[
            "--image",
            &reference,
            "--pull",
            "never",
            "--env",
            "IMAGE=mine",
            "--",
            "sh",
            "-c",
            "echo $IMAGE",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "mine\n");

    // A name the registry does not have: a clear error, no retry.
    let missing = run(
        state,
        &["--image", &registry.reference("nothing:here"), "--", "true"],
    );
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("nothing"), "{}", stderr(&missing));
}
