//! Snapshots against the stand-in API ([`crate::firecracker::stand_in`]): what Firecracker
//! refuses, what the driver refuses before asking, the files written beside and renamed,
//! and the calls against the recorded contract.

use std::path::Path;
use std::sync::{Arc, Mutex};

use ak_core::backend::Lifetime;
use serde_json::Value;

use super::*;
use crate::firecracker::stand_in::{Api, boot, serve, serve_at};
use crate::firecracker::{configure, requests};

/// A stand-in API with a VM configured (tracking dirty pages or not) and started.
async fn started_vm(dir: &Path, track_dirty_pages: bool) -> (PathBuf, Arc<Mutex<Api>>) {
    let (socket, api) = serve(dir).await;
    let (kernel, initramfs, base) = (
        Path::new("/cache/vmlinux"),
        Path::new("/cache/agent.cpio"),
        Path::new("/cache/base.ext4"),
    );
    let mut boot = boot(kernel, initramfs, base);
    boot.track_dirty_pages = track_dirty_pages;
    let layout = Layout {
        dir: "/run/vm".into(),
    };
    configure(&socket, &requests(&boot, &layout)).await.unwrap();
    (socket, api)
}

fn paths_in(dir: &Path) -> SnapshotPaths {
    SnapshotPaths {
        state: dir.join("vm.state"),
        memory: dir.join("vm.memory"),
    }
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The calls the stand-in recorded, its temporary directory written `/snapshots`.
fn recorded(api: &Mutex<Api>, dir: &Path) -> Value {
    let calls = Value::Array(api.lock().unwrap().calls.clone()).to_string();
    serde_json::from_str(&calls.replace(&dir.display().to_string(), "/snapshots")).unwrap()
}

fn contract(scenario: &str) -> Value {
    let contract: Value = serde_json::from_str(include_str!("../contract.json")).unwrap();
    contract[scenario].clone()
}

#[tokio::test]
async fn a_full_snapshot_pauses_the_vm_writes_beside_and_renames() {
    let vm = tempfile::tempdir().unwrap();
    let (socket, api) = started_vm(vm.path(), false).await;
    let snapshots = tempfile::tempdir().unwrap();
    let paths = paths_in(snapshots.path());
    // A running VM: the driver pauses it, and it runs on after.
    save_snapshot(&socket, &paths, SnapshotKind::Full, AfterSnapshot::Resume)
        .await
        .unwrap();
    assert_eq!(names(snapshots.path()), ["vm.memory", "vm.state"]);
    assert_eq!(std::fs::read_to_string(&paths.state).unwrap(), "Full state");
    assert_eq!(
        std::fs::read_to_string(&paths.memory).unwrap(),
        "Full memory"
    );
    let calls = recorded(&api, snapshots.path());
    let calls = calls.as_array().unwrap();
    let create = &calls[calls.len() - 2]["body"];
    assert_eq!(
        create["snapshot_path"], "/snapshots/vm.state.partial",
        "Firecracker writes beside the final name"
    );
    assert_eq!(create["mem_file_path"], "/snapshots/vm.memory.partial");
    assert!(!api.lock().unwrap().paused, "resumed as asked");

    // Again, left paused: the new pair replaces the old one.
    save_snapshot(
        &socket,
        &paths,
        SnapshotKind::Full,
        AfterSnapshot::StayPaused,
    )
    .await
    .unwrap();
    assert!(api.lock().unwrap().paused, "left paused as asked");
    assert_eq!(names(snapshots.path()), ["vm.memory", "vm.state"]);
}

#[tokio::test]
async fn firecracker_refuses_a_snapshot_of_a_running_or_unstarted_vm() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(dir.path());
    let unstarted = tempfile::tempdir().unwrap();
    let (fresh, _api) = serve(unstarted.path()).await;
    let error = configure(&fresh, &[create_request(&paths, SnapshotKind::Full)])
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("before starting the microVM"), "{error}");

    let (socket, _api) = started_vm(dir.path(), false).await;
    let error = configure(&socket, &[create_request(&paths, SnapshotKind::Full)])
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("PUT /snapshot/create"), "{error}");
    assert!(error.contains("must be paused"), "{error}");
    assert!(!paths.state.exists() && !paths.memory.exists());
}

#[tokio::test]
async fn a_diff_snapshot_is_refused_without_dirty_page_tracking() {
    let vm = tempfile::tempdir().unwrap();
    let (socket, api) = started_vm(vm.path(), false).await;
    let snapshots = tempfile::tempdir().unwrap();
    let paths = paths_in(snapshots.path());
    let calls_before = api.lock().unwrap().calls.len();
    let error = save_snapshot(&socket, &paths, SnapshotKind::Diff, AfterSnapshot::Resume)
        .await
        .unwrap_err();
    assert!(matches!(error, MicrovmError::State(_)), "{error}");
    assert!(error.to_string().contains("track_dirty_pages"), "{error}");
    assert_eq!(
        api.lock().unwrap().calls.len(),
        calls_before,
        "refused before the VM was paused or anything written"
    );
    assert!(names(snapshots.path()).is_empty());
}

#[tokio::test]
async fn a_diff_snapshot_of_a_vm_tracking_dirty_pages_is_taken() {
    let vm = tempfile::tempdir().unwrap();
    let (socket, api) = started_vm(vm.path(), true).await;
    let snapshots = tempfile::tempdir().unwrap();
    let paths = paths_in(snapshots.path());
    save_snapshot(&socket, &paths, SnapshotKind::Full, AfterSnapshot::Resume)
        .await
        .unwrap();
    let layer = SnapshotPaths {
        state: snapshots.path().join("layer.state"),
        memory: snapshots.path().join("layer.memory"),
    };
    // A leftover of a save that died, which Firecracker would merge the diff into.
    std::fs::write(snapshots.path().join("layer.memory.partial"), "stale").unwrap();
    save_snapshot(
        &socket,
        &layer,
        SnapshotKind::Diff,
        AfterSnapshot::StayPaused,
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(&layer.memory).unwrap(),
        "Diff memory"
    );
    assert_eq!(
        names(snapshots.path()),
        ["layer.memory", "layer.state", "vm.memory", "vm.state"]
    );
    assert_eq!(
        recorded(&api, snapshots.path()),
        contract("diff-ready boot, full then diff snapshot"),
        "the calls differ from the recorded contract"
    );
}

#[tokio::test]
async fn a_failed_snapshot_leaves_the_previous_one_whole_and_no_partial_files() {
    let vm = tempfile::tempdir().unwrap();
    let (socket, api) = started_vm(vm.path(), false).await;
    let snapshots = tempfile::tempdir().unwrap();
    let paths = paths_in(snapshots.path());
    save_snapshot(&socket, &paths, SnapshotKind::Full, AfterSnapshot::Resume)
        .await
        .unwrap();
    std::fs::write(&paths.state, "previous state").unwrap();
    std::fs::write(&paths.memory, "previous memory").unwrap();
    // Firecracker writes the state file, then fails on the memory.
    api.lock().unwrap().disk_full = true;
    let error = save_snapshot(&socket, &paths, SnapshotKind::Full, AfterSnapshot::Resume)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("No space left on device"), "{error}");
    assert_eq!(names(snapshots.path()), ["vm.memory", "vm.state"]);
    assert_eq!(
        std::fs::read_to_string(&paths.state).unwrap(),
        "previous state"
    );
    assert_eq!(
        std::fs::read_to_string(&paths.memory).unwrap(),
        "previous memory"
    );
    assert!(
        !api.lock().unwrap().paused,
        "resumed as asked, although the snapshot failed"
    );

    // Nothing before: nothing after, not even half a snapshot.
    let empty = tempfile::tempdir().unwrap();
    let error = save_snapshot(
        &socket,
        &paths_in(empty.path()),
        SnapshotKind::Full,
        AfterSnapshot::StayPaused,
    )
    .await;
    assert!(error.is_err());
    assert!(names(empty.path()).is_empty(), "{:?}", names(empty.path()));
}

/// A "firecracker" that serves nothing and runs `script`: the stand-in, if any, serves
/// its API socket.
fn program(dir: &Path, script: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let program = dir.join("firecracker");
    std::fs::write(&program, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    program
}

#[tokio::test]
async fn a_snapshot_loads_into_a_fresh_process_and_runs() {
    let snapshots = tempfile::tempdir().unwrap();
    let paths = paths_in(snapshots.path());
    std::fs::write(&paths.state, "Full state").unwrap();
    std::fs::write(&paths.memory, "Full memory").unwrap();
    let layout = Layout::create(snapshots.path().join("run")).unwrap();
    let api = serve_at(&layout.api_socket()).await;
    let program = program(snapshots.path(), "exec sleep 60");
    let mut launched = launch_from_snapshot(&program, &layout, Lifetime::Ephemeral, &paths, true)
        .await
        .unwrap();
    let _ = launched.hypervisor.start_kill();
    assert_eq!(
        launched.phases.iter().map(|p| p.0).collect::<Vec<_>>(),
        ["hypervisor process start", "snapshot load and resume"]
    );
    {
        let api = api.lock().unwrap();
        assert!(api.started && !api.paused, "loaded and running");
    }
    assert_eq!(
        recorded(&api, snapshots.path()),
        contract("snapshot load"),
        "the calls differ from the recorded contract"
    );
    // Loaded with tracking: a diff of it can be taken.
    let layer = SnapshotPaths {
        state: snapshots.path().join("layer.state"),
        memory: snapshots.path().join("layer.memory"),
    };
    save_snapshot(
        &layout.api_socket(),
        &layer,
        SnapshotKind::Diff,
        AfterSnapshot::Resume,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_snapshot_is_not_loaded_after_configuration_or_from_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(dir.path());
    std::fs::write(&paths.state, "Full state").unwrap();
    let vsock = dir.path().join("vsock.sock");
    let (socket, _api) = serve(dir.path()).await;
    let error = configure(&socket, &[load_request(&paths, &vsock, false)])
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("No such file"), "{error}");

    std::fs::write(&paths.memory, "Full memory").unwrap();
    let (kernel, initramfs, base) = (Path::new("/k"), Path::new("/i"), Path::new("/b"));
    let layout = Layout {
        dir: "/run/vm".into(),
    };
    let configured = requests(&boot(kernel, initramfs, base), &layout);
    configure(&socket, &configured[..1]).await.unwrap();
    let error = configure(&socket, &[load_request(&paths, &vsock, false)])
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("PUT /snapshot/load"), "{error}");
    assert!(error.contains("after configuring"), "{error}");
}

#[tokio::test]
async fn a_load_with_a_bad_memory_backend_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(dir.path());
    let (socket, _api) = serve(dir.path()).await;
    let mut load = load_request(&paths, &dir.path().join("vsock.sock"), false);
    load.body["mem_backend"]["backend_type"] = "Disk".into();
    let error = configure(&socket, &[load.clone()])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("backend_type must be File or Uffd"),
        "{error}"
    );
    load.body["mem_file_path"] = "/snapshots/vm.memory".into();
    let error = configure(&socket, &[load]).await.unwrap_err().to_string();
    assert!(error.contains("exactly one of mem_backend"), "{error}");
}

#[tokio::test]
async fn a_firecracker_that_exits_before_its_api_is_up_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::create(dir.path().join("run")).unwrap();
    // Not at once (that is seen as it starts): while its API socket is awaited.
    let program = program(dir.path(), "sleep 0.2; exit 3");
    let error = launch_from_snapshot(
        &program,
        &layout,
        Lifetime::Ephemeral,
        &paths_in(dir.path()),
        false,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, MicrovmError::Boot { reason, .. } if reason.contains("before its API was up")),
        "{error}"
    );
}
