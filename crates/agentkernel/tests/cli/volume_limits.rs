//! Volumes with a size limit (`volume create NAME --size SIZE`): enforced by a btrfs quota
//! group on a btrfs file system the test makes itself (a loop device, quotas enabled), as
//! EDQUOT inside the sandbox; refused clearly, leaving nothing, where the file system keeps
//! no quotas (quotas disabled, or the ext4 state directory of these machines, whose kernel
//! has no `CONFIG_QUOTA`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{ak_with_state, assert_code, stderr, stdout};

/// A btrfs file system mounted for the test, unmounted (and its loop device freed) when
/// dropped.
struct Btrfs {
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl Btrfs {
    fn new() -> Btrfs {
        assert!(
            Path::new("/usr/sbin/mkfs.btrfs").exists() || Path::new("/sbin/mkfs.btrfs").exists(),
            "mkfs.btrfs is missing: install Debian's btrfs-progs (.ci/run does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(256 << 20).unwrap();
        let sh = |program: &str, args: &[&str]| {
            let out = Command::new(program).args(args).output().unwrap();
            assert!(
                out.status.success(),
                "{program} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh("mkfs.btrfs", &["-q", image.to_str().unwrap()]);
        sh(
            "mount",
            &[
                "-o",
                "loop",
                image.to_str().unwrap(),
                mount.to_str().unwrap(),
            ],
        );
        sh("btrfs", &["quota", "enable", mount.to_str().unwrap()]);
        // Sandboxes' roots (unprivileged host uids) pass through to the volumes.
        std::fs::set_permissions(&mount, std::os::unix::fs::PermissionsExt::from_mode(0o711))
            .unwrap();
        Btrfs { mount, _dir: dir }
    }
}

impl Drop for Btrfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

#[test]
fn a_volume_with_a_size_limit_holds_no_more() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the volume limit test needs root (a loop device)"
    );
    let btrfs = Btrfs::new();
    let state = btrfs.mount.join("state");
    let created = ak_with_state(
        &state,
        &["volume", "create", "capped", "--size", "2M", "--json"],
    );
    assert_code(&created, 0);
    let info: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!(info["size_limit_bytes"], 2 << 20, "{info}");

    // Inside: 1 MiB fits, 4 more do not (EDQUOT), whoever writes.
    let written = ak_with_state(
        &state,
        &[
            "run",
            "--backend",
            "native",
            "--no-network",
            "--volume",
            "capped:/data",
            "--",
            "sh",
            "-c",
            "dd if=/dev/zero of=/data/a bs=1M count=1 2>/dev/null && echo fits; \
             dd if=/dev/zero of=/data/b bs=1M count=4 conv=fsync 2>&1 | grep -o 'Disk quota exceeded'",
        ],
    );
    assert_code(&written, 0);
    assert_eq!(
        stdout(&written),
        "fits\nDisk quota exceeded\n",
        "{}",
        stderr(&written)
    );
    let inspected: serde_json::Value = serde_json::from_slice(
        &ak_with_state(&state, &["volume", "inspect", "capped", "--json"]).stdout,
    )
    .unwrap();
    assert!(
        inspected["size_bytes"].as_u64().unwrap() <= (2 << 20) + (64 << 10),
        "{inspected}"
    );
    assert_code(&ak_with_state(&state, &["volume", "remove", "capped"]), 0);

    // Quotas switched off: a clear refusal, nothing left under volumes/.
    let off = Command::new("btrfs")
        .args(["quota", "disable"])
        .arg(&btrfs.mount)
        .status()
        .unwrap();
    assert!(off.success());
    let refused = ak_with_state(&state, &["volume", "create", "nope", "--size", "2M"]);
    assert_code(&refused, 125);
    assert!(
        stderr(&refused).contains("quotas disabled"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(std::fs::read_dir(state.join("volumes")).unwrap().count(), 0);

    // A file system without quotas (a tmpfs here): the same, naming what would allow it.
    let plain = tempfile::tempdir_in("/dev/shm").unwrap();
    let refused = ak_with_state(plain.path(), &["volume", "create", "nope", "--size", "2M"]);
    assert_code(&refused, 125);
    assert!(
        stderr(&refused).contains("keeps no quotas"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        std::fs::read_dir(plain.path().join("volumes"))
            .unwrap()
            .count(),
        0
    );
    // Bad sizes are usage errors.
    for bad in ["0", "1x", "-1"] {
        assert_code(
            &ak_with_state(plain.path(), &["volume", "create", "nope", "--size", bad]),
            2,
        );
    }
}
