//! Firecracker's snapshots: a started VM, paused, written out as two files (the
//! devices' and vCPUs' state, and the guest's memory) by `PUT /snapshot/create`, and a
//! fresh Firecracker process started from them by `PUT /snapshot/load`.
//!
//! The API followed is Firecracker 1.16's (`firecracker.yaml` 1.16.1 and
//! `docs/snapshotting/snapshot-support.md`): the memory comes back through `mem_backend`
//! (the older `mem_file_path` is deprecated), dirty-page tracking at load is
//! `track_dirty_pages` (`enable_diff_snapshots` is deprecated since 1.13), and the restored
//! VM's vsock socket is moved into its new runtime directory with `vsock_override` (new in
//! 1.16). Unverified on real hardware, like the rest of the driver: only the stand-in
//! server of the tests has answered these calls.
//!
//! A diff snapshot's memory file holds only the pages written since the previous
//! snapshot (the rest of it is a hole). The first one after a boot loads on its own; a
//! later one must first be merged onto its base (Firecracker's `snapshot-editor
//! edit-memory rebase`), which this driver does not do. Firecracker can merge a diff into
//! an existing memory file in place, but a failed merge would leave a base that looks
//! whole and is not; so each snapshot here goes to files of its own, beside its paths.

use std::path::{Path, PathBuf};

use ak_core::backend::Lifetime;
use serde_json::{Value, json};

use super::{ApiRequest, Client, pause_request, start};
use crate::Launched;
use crate::error::MicrovmError;
use crate::vm::Layout;

/// What a snapshot's memory file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// All of the guest's memory: loads on its own.
    Full,
    /// The pages written since the previous snapshot (or the boot, or the load); needs
    /// the VM started with dirty-page tracking (see [`save_snapshot`]).
    Diff,
}

impl SnapshotKind {
    fn api_name(self) -> &'static str {
        match self {
            SnapshotKind::Full => "Full",
            SnapshotKind::Diff => "Diff",
        }
    }
}

/// The two files of a snapshot. Only both together are a snapshot; the state file is
/// renamed into place last, so its presence says the pair is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPaths {
    /// The devices' and vCPUs' state (Firecracker's `snapshot_path`).
    pub state: PathBuf,
    /// The guest's memory (`mem_file_path` when created, the file backend when loaded).
    pub memory: PathBuf,
}

impl SnapshotPaths {
    /// Absolute paths: Firecracker opens them from its own working directory, this
    /// driver renames them from the caller's.
    fn absolute(&self) -> Result<SnapshotPaths, MicrovmError> {
        let absolute = |path: &Path| {
            std::path::absolute(path).map_err(MicrovmError::io(format!(
                "resolve the snapshot path {}",
                path.display()
            )))
        };
        Ok(SnapshotPaths {
            state: absolute(&self.state)?,
            memory: absolute(&self.memory)?,
        })
    }

    /// Where Firecracker writes the snapshot before it is renamed into place: beside
    /// each file (the same file system, so the rename is atomic).
    fn partial(&self) -> SnapshotPaths {
        let beside = |path: &Path| {
            let mut name = path.as_os_str().to_owned();
            name.push(".partial");
            PathBuf::from(name)
        };
        SnapshotPaths {
            state: beside(&self.state),
            memory: beside(&self.memory),
        }
    }

    async fn remove(&self) -> Result<(), MicrovmError> {
        for path in [&self.state, &self.memory] {
            match tokio::fs::remove_file(path).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(MicrovmError::io(format!("remove {}", path.display()))(e));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// What the VM does once its snapshot is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSnapshot {
    /// Stays paused (to be snapshotted again, or ended).
    StayPaused,
    /// Runs on, also when the snapshot failed.
    Resume,
}

/// The call that writes a paused VM's snapshot to `paths`.
pub fn create_request(paths: &SnapshotPaths, kind: SnapshotKind) -> ApiRequest {
    ApiRequest::put(
        "/snapshot/create",
        json!({
            "snapshot_type": kind.api_name(),
            "snapshot_path": paths.state,
            "mem_file_path": paths.memory,
        }),
    )
}

/// The call that loads the snapshot at `paths` into a fresh Firecracker process and lets
/// it run (`resume_vm`: one call rather than a load and a `PATCH /vm`). Its vsock's
/// socket becomes `vsock`: the one recorded in the snapshot is in the runtime directory
/// of the VM it was taken from. `track_dirty_pages`: whether diff snapshots of the
/// restored VM will be wanted.
pub fn load_request(paths: &SnapshotPaths, vsock: &Path, track_dirty_pages: bool) -> ApiRequest {
    ApiRequest::put(
        "/snapshot/load",
        json!({
            "snapshot_path": paths.state,
            "mem_backend": { "backend_type": "File", "backend_path": paths.memory },
            "track_dirty_pages": track_dirty_pages,
            "vsock_override": { "uds_path": vsock },
            "resume_vm": true,
        }),
    )
}

/// Writes a snapshot of the started VM whose API is at `api_socket` to `paths`, pausing it
/// first if it runs. The files are written beside `paths` and renamed into place only
/// once both are complete; a failed snapshot removes them and leaves whatever was at
/// `paths` before (or, if it failed between the renames, no state file: never a state
/// file beside a memory file it does not belong to).
///
/// A diff snapshot is refused, before the VM is touched, unless the VM tracks dirty
/// pages. Firecracker would take it anyway and pick the pages with `mincore(2)`, which
/// misses pages the host swapped out: a diff that loads and is silently wrong.
pub async fn save_snapshot(
    api_socket: &Path,
    paths: &SnapshotPaths,
    kind: SnapshotKind,
    after: AfterSnapshot,
) -> Result<(), MicrovmError> {
    let paths = paths.absolute()?;
    let partial = paths.partial();
    let mut client = Client::connect(api_socket).await?;
    if kind == SnapshotKind::Diff && !tracks_dirty_pages(&mut client).await? {
        return Err(MicrovmError::State(
            "a diff snapshot needs a VM that tracks dirty pages (started with \
             track_dirty_pages); without it Firecracker guesses the pages with mincore(2), \
             which misses those in swap"
                .into(),
        ));
    }
    // Pausing a paused VM keeps it paused: no need to ask first.
    client.send(&pause_request(true)).await?;
    let saved = async {
        // Leftovers of an earlier save that died: a diff would be merged into a memory
        // file of the right size rather than written afresh.
        partial.remove().await?;
        client.send(&create_request(&partial, kind)).await?;
        commit(&partial, &paths).await
    }
    .await;
    if saved.is_err() {
        // What Firecracker or a rename left half done; the error that matters is `saved`.
        let _ = partial.remove().await;
    }
    match after {
        AfterSnapshot::StayPaused => saved,
        AfterSnapshot::Resume => {
            let resumed = client.send(&pause_request(false)).await;
            saved.and(resumed.map(drop))
        }
    }
}

/// Whether the VM logs its dirty pages, as its machine configuration says (set at
/// configuration, or at load).
async fn tracks_dirty_pages(client: &mut Client) -> Result<bool, MicrovmError> {
    let read = ApiRequest {
        method: hyper::Method::GET,
        path: "/machine-config",
        body: Value::Null,
    };
    let body = client.send(&read).await?;
    let config: Value = serde_json::from_slice(&body).map_err(|e| {
        MicrovmError::State(format!(
            "Firecracker's machine configuration is not JSON: {e}"
        ))
    })?;
    Ok(config["track_dirty_pages"].as_bool().unwrap_or(false))
}

/// Renames the complete files at `partial` to `paths`: the old state file goes first and
/// the new one comes last, so no moment pairs a state file with another snapshot's
/// memory.
async fn commit(partial: &SnapshotPaths, paths: &SnapshotPaths) -> Result<(), MicrovmError> {
    match tokio::fs::remove_file(&paths.state).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(MicrovmError::io(format!(
                "remove {}",
                paths.state.display()
            ))(e));
        }
        _ => {}
    }
    for (from, to) in [
        (&partial.memory, &paths.memory),
        (&partial.state, &paths.state),
    ] {
        tokio::fs::rename(from, to)
            .await
            .map_err(MicrovmError::io(format!("rename {}", from.display())))?;
    }
    // The renames are durable only once their directories are written out; Firecracker
    // has synced the files themselves.
    let mut directories = vec![paths.state.parent(), paths.memory.parent()];
    directories.dedup();
    for directory in directories.into_iter().flatten() {
        let synced = async { tokio::fs::File::open(directory).await?.sync_all().await };
        synced
            .await
            .map_err(MicrovmError::io(format!("sync {}", directory.display())))?;
    }
    Ok(())
}

/// Starts Firecracker as [`super::launch`] does, with the VM of the snapshot at `paths`
/// instead of a boot (nothing is configured before the load: Firecracker takes a
/// snapshot only into a fresh process), and lets it run. The VM has the devices and
/// paths it had when the snapshot was taken, but for its vsock socket, which is in
/// `layout`; a network device's tap is the one it had (not overridden here).
pub async fn launch_from_snapshot(
    program: &Path,
    layout: &Layout,
    lifetime: Lifetime,
    paths: &SnapshotPaths,
    track_dirty_pages: bool,
) -> Result<Launched, MicrovmError> {
    let load = load_request(&paths.absolute()?, &layout.vsock(), track_dirty_pages);
    start(
        program,
        layout,
        lifetime,
        "snapshot load and resume",
        &[load],
    )
    .await
}

#[cfg(test)]
mod tests;
