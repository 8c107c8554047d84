//! `run --backend microvm --image <loopback registry>/…`: the VM boots a disk built from
//! the store's layers, with no container engine involved (the image exists only in the
//! registry and the store). Needs what `agentkernel setup` builds, as the other microvm
//! tests do.

use super::registry::Registry;
use super::registry::images::{busybox, push};
use super::{cli, stderr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microvm_boots_an_image_from_the_store() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests need root"
    );
    let registry = Registry::plain();
    let reference = push(&registry, "busybox:vm", &busybox()).await;
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    std::fs::write(state.join("config.toml"), "").unwrap();

    // Pulled on the way (`--pull always`), packed from its layers, booted.
    let out = cli(
        state,
        &[
            "run",
            "--backend",
            "microvm",
            "--image",
            &reference,
            "--pull",
            "always",
            "--",
            "sh",
            "-c",
            "echo $IMAGE; ls -ln /bin/busybox | cut -c1-10; stat -c %u:%g /bin/busybox",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    // The image's Env applies, and the image's owners are back to its own (root), not the
    // store's shifted ids.
    assert!(text.starts_with("busybox\n"), "{text}");
    assert!(text.ends_with("0:0\n"), "{text}");

    // Now in the store: the default (pull when missing) boots the cached disk.
    let again = cli(
        state,
        &[
            "run",
            "--backend",
            "microvm",
            "--image",
            &reference,
            "--",
            "sh",
            "-c",
            "cat /etc/passwd",
        ],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(String::from_utf8_lossy(&again.stdout).starts_with("root:"));
}
