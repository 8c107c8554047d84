//! Persistent native sandboxes: they keep running after the value (and the process) that
//! created them is gone, are reached again from their handle by another backend value,
//! and release every host resource from that handle alone. Root only, like the CLI tests.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions panic on failure by design"
)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ak_core::backend::{Lifetime, SandboxHandle};
use ak_core::config::{NetworkSetting, SandboxOptions, resolve};
use ak_core::spec::new_sandbox_id;
use ak_core::{Backend, BackendError, ExecSpec, ExitStatus, Mount, Sandbox, SandboxSpec};
use ak_native::cgroup::{CgroupLayout, SandboxCgroup};
use ak_native::{NativeBackend, ROOT_MAPPED_BASE, sandbox_root_host_ids};
use ak_protocol::handshake::software;
use ak_protocol::{AgentClient, ExecEvent};

/// Set for the child process of `a_sandbox_outlives_the_process_that_created_it`: the file
/// the child writes its sandbox's handle to.
const HANDLE_FILE_ENV: &str = "AK_PERSISTENT_TEST_HANDLE_FILE";

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the persistent sandbox tests must run as root (CI does): they create cgroups and \
         check host resources of sandboxes"
    );
}

fn backend() -> NativeBackend {
    NativeBackend::new(PathBuf::from(env!("CARGO_BIN_EXE_ak-agent")))
}

fn spec() -> SandboxSpec {
    let options = SandboxOptions {
        network: Some(NetworkSetting::Enabled(false)),
        ..SandboxOptions::default()
    };
    resolve(options, Path::new("/"), new_sandbox_id()).unwrap()
}

/// Runs `script` with `sh -c` over `client`; returns its exit status and stdout.
async fn exec(client: &AgentClient, script: &str) -> (ExitStatus, String) {
    let mut handle = client
        .exec(ExecSpec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            ..ExecSpec::default()
        })
        .await
        .unwrap();
    let mut stdout = Vec::new();
    loop {
        match handle.next_event().await.unwrap() {
            Some(ExecEvent::Stdout(data)) => stdout.extend(data),
            Some(ExecEvent::Exited { status, .. }) => {
                return (status, String::from_utf8_lossy(&stdout).into_owned());
            }
            Some(_) => {}
            None => panic!("the command's events ended without an exit"),
        }
    }
}

/// Opens a new connection to `sandbox` and handshakes.
async fn client(sandbox: &mut Box<dyn Sandbox>) -> AgentClient {
    let transport = sandbox.connect().await.unwrap();
    AgentClient::connect(transport, software("persistent-test"))
        .await
        .unwrap()
}

fn init_pid(handle: &SandboxHandle) -> u32 {
    let data: serde_json::Value = serde_json::from_str(&handle.data).unwrap();
    data["pid"].as_u64().unwrap() as u32
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        !state.starts_with('Z') && !state.starts_with('X')
    })
}

fn rundir(id: &str) -> PathBuf {
    Path::new("/run/agentkernel").join(id)
}

fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    SandboxCgroup::existing(&CgroupLayout::detect(), id)
        .paths()
        .iter()
        .filter(|p| p.exists())
        .cloned()
        .collect()
}

/// Waits (bounded) until `pid` no longer runs: a process killed by another may take a
/// moment to be gone.
fn wait_not_running(pid: u32) -> bool {
    for _ in 0..200 {
        if !running(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The session id of a process as this pid namespace sees it: 0 when the
/// session leader lives in an outer namespace (as in a containerised CI), which
/// is why this reads /proc rather than calling `getsid` (rustix asserts > 0).
fn session_of(pid: &str) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the `(comm)`, which may itself hold spaces: state ppid pgrp session.
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    after_comm.split(' ').nth(3).unwrap().parse().unwrap()
}

/// Checks that nothing of sandbox `id` (init `pid`) is left on the host.
fn assert_released(id: &str, pid: u32) {
    assert!(wait_not_running(pid), "the init {pid} still runs");
    assert!(!rundir(id).exists(), "the runtime directory is left");
    assert_eq!(cgroup_dirs(id), Vec::<PathBuf>::new(), "cgroups are left");
}

#[tokio::test]
async fn a_detached_sandbox_runs_on_and_is_released_from_its_handle() {
    require_root();
    let spec = spec();
    let mut sandbox = backend().create(&spec, Lifetime::Persistent).await.unwrap();
    let handle = sandbox.handle();
    let pid = init_pid(&handle);
    assert_eq!(handle.id, spec.id);
    // Its own session: a terminal's Ctrl-C or hang-up for the creator does not reach it.
    assert_eq!(session_of(&pid.to_string()), pid, "init leads its session");
    assert_ne!(session_of("self"), pid);
    assert!(rundir(&spec.id).join("agent.sock").exists());
    if CgroupLayout::detect().usable().is_ok() {
        assert!(!cgroup_dirs(&spec.id).is_empty(), "a cgroup was made");
    }

    // Every connect is a new connection with its own handshake.
    let (first, second) = (client(&mut sandbox).await, client(&mut sandbox).await);
    assert_eq!(
        exec(&first, "echo hi").await,
        (ExitStatus::Code(0), "hi\n".into())
    );
    assert_eq!(
        exec(&second, "echo hi").await,
        (ExitStatus::Code(0), "hi\n".into())
    );
    // The socket is the host's: the sandbox never sees it.
    let (status, _) = exec(
        &first,
        &format!("test -e /run/agentkernel/{}/agent.sock", spec.id),
    )
    .await;
    assert_eq!(status, ExitStatus::Code(1));
    assert_eq!(
        exec(&first, "echo kept > /tmp/marker; sleep 300 & echo started").await,
        (ExitStatus::Code(0), "started\n".into())
    );
    drop((first, second));
    sandbox.detach();
    assert!(running(pid), "detaching does not end the sandbox");

    // Another backend value (as after a daemon restart) finds it again.
    let other = backend();
    let mut attached = other.attach(&handle).await.unwrap();
    assert_eq!(attached.handle(), handle);
    let again = client(&mut attached).await;
    assert_eq!(
        exec(
            &again,
            "cat /tmp/marker; pgrep -x sleep >/dev/null && echo sleeping"
        )
        .await,
        (ExitStatus::Code(0), "kept\nsleeping\n".into())
    );
    drop(again);
    drop(attached);
    assert!(running(pid), "dropping an attached sandbox does not end it");

    other.release(&handle).await.unwrap();
    assert_released(&spec.id, pid);
    match other.attach(&handle).await {
        Err(BackendError::Gone(id)) => assert_eq!(id, spec.id),
        other => panic!("attach after release: {other:?}"),
    }
    other.release(&handle).await.unwrap();
    backend().release(&handle).await.unwrap();
}

#[tokio::test]
async fn destroy_ends_a_persistent_sandbox_and_reports_usage() {
    require_root();
    let spec = spec();
    let backend = backend();
    let mut sandbox = backend.create(&spec, Lifetime::Persistent).await.unwrap();
    let handle = sandbox.handle();
    let connection = client(&mut sandbox).await;
    assert_eq!(exec(&connection, "true").await.0, ExitStatus::Code(0));
    let usage = sandbox.destroy().await.unwrap();
    if CgroupLayout::detect().usable().is_ok() {
        assert!(usage.peak_memory_bytes.is_some_and(|peak| peak > 0));
    }
    assert_released(&spec.id, init_pid(&handle));
    sandbox.destroy().await.unwrap();
    assert!(matches!(
        backend.attach(&handle).await,
        Err(BackendError::Gone(_))
    ));
}

#[tokio::test]
async fn a_shutdown_from_any_connection_ends_it_and_release_cleans_up() {
    require_root();
    let spec = spec();
    let backend = backend();
    let mut sandbox = backend.create(&spec, Lifetime::Persistent).await.unwrap();
    let handle = sandbox.handle();
    let pid = init_pid(&handle);
    let (stays, stops) = (client(&mut sandbox).await, client(&mut sandbox).await);
    stops.shutdown().await.unwrap();
    // The init is our child and stays a zombie until reaped, which the release does.
    assert!(wait_not_running(pid), "the agent did not exit");
    assert!(stays.ping().await.is_err(), "every connection ended");
    match sandbox.connect().await {
        Err(BackendError::Gone(id)) => assert_eq!(id, spec.id),
        other => panic!("connect after shutdown: {other:?}"),
    }
    assert!(matches!(
        backend.attach(&handle).await,
        Err(BackendError::Gone(_))
    ));
    backend.release(&handle).await.unwrap();
    assert_released(&spec.id, pid);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the release reaped the zombie"
    );
}

#[tokio::test]
async fn ephemeral_sandboxes_cannot_be_attached_and_end_when_detached() {
    require_root();
    let spec = spec();
    let backend = backend();
    let mut sandbox = backend.create(&spec, Lifetime::Ephemeral).await.unwrap();
    let handle = sandbox.handle();
    let pid = init_pid(&handle);
    assert!(!rundir(&spec.id).join("agent.sock").exists());
    let connection = client(&mut sandbox).await;
    assert_eq!(exec(&connection, "true").await.0, ExitStatus::Code(0));
    assert!(sandbox.connect().await.is_err(), "one transport only");
    assert!(matches!(
        backend.attach(&handle).await,
        Err(BackendError::Unsupported { .. })
    ));
    sandbox.detach();
    assert_released(&spec.id, pid);
}

#[tokio::test]
async fn a_host_directory_owned_by_the_sandbox_root_is_writable() {
    require_root();
    assert_eq!(
        sandbox_root_host_ids(),
        (ROOT_MAPPED_BASE, ROOT_MAPPED_BASE)
    );
    let dir = tempfile::tempdir().unwrap();
    let (uid, gid) = sandbox_root_host_ids();
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
    let mut spec = spec();
    spec.mounts.push(Mount {
        host: dir.path().to_path_buf(),
        target: spec.workdir.clone(),
        writable: true,
    });
    let backend = backend();
    let mut sandbox = backend.create(&spec, Lifetime::Persistent).await.unwrap();
    let connection = client(&mut sandbox).await;
    assert_eq!(
        exec(&connection, "echo data > made && id -u && pwd").await,
        (
            ExitStatus::Code(0),
            format!("0\n{}\n", spec.workdir.display())
        )
    );
    sandbox.destroy().await.unwrap();
    let made = dir.path().join("made");
    assert_eq!(std::fs::read_to_string(&made).unwrap(), "data\n");
    assert_eq!(std::fs::metadata(&made).unwrap().uid(), ROOT_MAPPED_BASE);
}

/// Run by `a_sandbox_outlives_the_process_that_created_it` in a child process (does
/// nothing otherwise): creates a persistent sandbox, leaves a mark in it, writes its
/// handle to the file named by the environment, and exits with the sandbox still running.
#[tokio::test]
async fn creator_process() {
    let Some(handle_file) = std::env::var_os(HANDLE_FILE_ENV) else {
        return;
    };
    let spec = spec();
    let mut sandbox = backend().create(&spec, Lifetime::Persistent).await.unwrap();
    let connection = client(&mut sandbox).await;
    assert_eq!(
        exec(&connection, "echo from-the-creator > /tmp/mark")
            .await
            .0,
        ExitStatus::Code(0)
    );
    let handle = serde_json::to_string(&sandbox.handle()).unwrap();
    std::fs::write(handle_file, handle).unwrap();
    sandbox.detach();
}

#[tokio::test]
async fn a_sandbox_outlives_the_process_that_created_it() {
    require_root();
    // Orphans of the creator become ours, so that the release can reap the killed init.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let handle_file = dir.path().join("handle.json");
    let creator = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "creator_process", "--test-threads=1"])
        .env(HANDLE_FILE_ENV, &handle_file)
        .output()
        .unwrap();
    assert!(
        creator.status.success(),
        "the creator failed: {}\n{}",
        String::from_utf8_lossy(&creator.stdout),
        String::from_utf8_lossy(&creator.stderr)
    );
    let handle: SandboxHandle =
        serde_json::from_str(&std::fs::read_to_string(&handle_file).unwrap()).unwrap();
    let pid = init_pid(&handle);
    assert!(running(pid), "the sandbox died with its creator");
    assert!(
        rundir(&handle.id).join("lock").exists(),
        "the sandbox's runtime directory was swept"
    );

    let backend = backend();
    // A new sandbox sweeps stale runtime directories: this one is held by its agent.
    let mut other = backend.create(&spec(), Lifetime::Ephemeral).await.unwrap();
    other.destroy().await.unwrap();
    assert!(rundir(&handle.id).exists(), "a live sandbox was swept");

    let mut attached = backend.attach(&handle).await.unwrap();
    let connection = client(&mut attached).await;
    assert_eq!(
        exec(&connection, "cat /tmp/mark").await,
        (ExitStatus::Code(0), "from-the-creator\n".into())
    );
    drop(connection);
    attached.detach();
    backend.release(&handle).await.unwrap();
    assert_released(&handle.id, pid);
}

#[tokio::test]
async fn the_network_helper_of_a_persistent_sandbox_lives_and_ends_with_it() {
    require_root();
    let options = SandboxOptions {
        network: Some(NetworkSetting::Enabled(true)),
        ..SandboxOptions::default()
    };
    let spec = resolve(options, Path::new("/"), new_sandbox_id()).unwrap();
    let backend = backend();
    let mut sandbox = backend.create(&spec, Lifetime::Persistent).await.unwrap();
    let handle = sandbox.handle();
    let data: serde_json::Value = serde_json::from_str(&handle.data).unwrap();
    let helper = data["network"]["pid"].as_u64().unwrap() as u32;
    let connection = client(&mut sandbox).await;
    assert_eq!(
        exec(
            &connection,
            "cat /sys/class/net/tap0/address >/dev/null && echo up"
        )
        .await,
        (ExitStatus::Code(0), "up\n".into())
    );
    drop(connection);
    sandbox.detach();
    assert!(running(helper), "the helper ended with the sandbox value");
    backend.release(&handle).await.unwrap();
    assert_released(&handle.id, init_pid(&handle));
    assert!(wait_not_running(helper), "the helper outlived the sandbox");
}
