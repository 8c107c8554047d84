//! The operations on named sandboxes as values: what a front end asks, handled once by
//! [`Service::perform`]. The daemon's socket carries these as they are (the CLI sends the
//! same value it would perform itself without a daemon), so no front end has request types
//! of its own for them. Operations that stream (a run, an exec, files) are started through
//! their own methods, since their answers are sessions rather than values.

use std::path::PathBuf;

use ak_core::SandboxSpec;
use ak_core::egress::AllowlistEntries;
use serde::{Deserialize, Serialize};

use crate::error::ServiceError;
use crate::registry::SandboxRecord;
use crate::snapshot::SnapshotInfo;
use crate::volumes::VolumeInfo;
use crate::{Caller, Service};

/// One operation on named sandboxes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Records a new sandbox, stopped. `dir` makes a host directory its workdir (absolute:
    /// a front end resolves it where its user is).
    Create {
        name: String,
        spec: Box<SandboxSpec>,
        dir: Option<PathBuf>,
    },
    Start {
        name: String,
    },
    Stop {
        name: String,
    },
    /// Freezes a running sandbox where it is (see `pause.rs`).
    Pause {
        name: String,
        /// Saved to disk with its memory (see `memory.rs`).
        #[serde(default)]
        save: bool,
    },
    Resume {
        name: String,
    },
    /// `force` stops a running sandbox first.
    Remove {
        name: String,
        force: bool,
    },
    List,
    Inspect {
        name: String,
    },
    /// Gives an allowlist sandbox the allowlist `entries` name; `extend` adds them to its
    /// current one instead.
    SetAllowlist {
        name: String,
        entries: AllowlistEntries,
        extend: bool,
    },
    /// Named volumes (see `volumes.rs`): not sandboxes, but kept by the same service.
    VolumeCreate {
        name: String,
        /// The most its files may take, in bytes (a project quota).
        #[serde(default)]
        size_limit: Option<u64>,
    },
    VolumeList,
    VolumeInspect {
        name: String,
    },
    VolumeRemove {
        name: String,
    },
    /// Snapshots a sandbox's writable state; `snapshot` names it (default
    /// `<sandbox>-<unix seconds>`).
    SnapshotCreate {
        sandbox: String,
        snapshot: Option<String>,
    },
    SnapshotList,
    SnapshotInspect {
        snapshot: String,
    },
    SnapshotRemove {
        snapshot: String,
    },
    /// Records a new sandbox made from a snapshot; `start` starts it too.
    CreateFromSnapshot {
        name: String,
        snapshot: String,
        start: bool,
    },
    /// Makes each of `new` from one snapshot of `sandbox` (running if it ran).
    Fork {
        sandbox: String,
        new: Vec<String>,
    },
}

/// What an [`Action`] answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Record(Box<SandboxRecord>),
    Records(Vec<SandboxRecord>),
    Removed,
    Volume(Box<VolumeInfo>),
    Volumes(Vec<VolumeInfo>),
    Snapshot(Box<SnapshotInfo>),
    Snapshots(Vec<SnapshotInfo>),
}

impl Answer {
    /// The one sandbox this answer carries.
    pub fn into_record(self) -> Result<SandboxRecord, ServiceError> {
        match self {
            Answer::Record(record) => Ok(*record),
            other => Err(mismatch("a sandbox", &other)),
        }
    }

    /// The sandboxes this answer carries.
    pub fn into_records(self) -> Result<Vec<SandboxRecord>, ServiceError> {
        match self {
            Answer::Records(records) => Ok(records),
            other => Err(mismatch("a list of sandboxes", &other)),
        }
    }

    /// The one volume this answer carries.
    pub fn into_volume(self) -> Result<VolumeInfo, ServiceError> {
        match self {
            Answer::Volume(volume) => Ok(*volume),
            other => Err(mismatch("a volume", &other)),
        }
    }

    /// The volumes this answer carries.
    pub fn into_volumes(self) -> Result<Vec<VolumeInfo>, ServiceError> {
        match self {
            Answer::Volumes(volumes) => Ok(volumes),
            other => Err(mismatch("a list of volumes", &other)),
        }
    }

    /// That a removal happened.
    pub fn into_removed(self) -> Result<(), ServiceError> {
        match self {
            Answer::Removed => Ok(()),
            other => Err(mismatch("a removal", &other)),
        }
    }
}

impl Answer {
    /// The one snapshot this answer carries.
    pub fn into_snapshot(self) -> Result<SnapshotInfo, ServiceError> {
        match self {
            Answer::Snapshot(info) => Ok(*info),
            other => Err(mismatch("a snapshot", &other)),
        }
    }

    /// The snapshots this answer carries.
    pub fn into_snapshots(self) -> Result<Vec<SnapshotInfo>, ServiceError> {
        match self {
            Answer::Snapshots(infos) => Ok(infos),
            other => Err(mismatch("a list of snapshots", &other)),
        }
    }
}

fn mismatch(wanted: &str, got: &Answer) -> ServiceError {
    ServiceError::State(format!("expected {wanted} in the answer, got {got:?}"))
}

impl Service {
    /// Performs `action` for `caller`: the one handler of every named-sandbox operation.
    pub async fn perform(&self, caller: Caller, action: Action) -> Result<Answer, ServiceError> {
        let record = |record| Answer::Record(Box::new(record));
        match action {
            Action::Create { name, spec, dir } => self
                .create_named(caller, &name, *spec, dir.as_deref())
                .await
                .map(record),
            Action::Start { name } => self.start_named(caller, &name).await.map(record),
            Action::Stop { name } => self.stop_named(caller, &name).await.map(record),
            Action::Pause { name, save } => self.pause_named(caller, &name, save).await.map(record),
            Action::Resume { name } => self.resume_named(caller, &name).await.map(record),
            Action::Remove { name, force } => self
                .remove_named(caller, &name, force)
                .await
                .map(|()| Answer::Removed),
            Action::List => self.list_named().await.map(Answer::Records),
            Action::Inspect { name } => self.inspect_named(&name).await.map(record),
            Action::SetAllowlist {
                name,
                entries,
                extend,
            } => self
                .set_allowlist(caller, &name, &entries, extend)
                .await
                .map(record),
            Action::VolumeCreate { name, size_limit } => self
                .create_volume(caller, &name, size_limit)
                .await
                .map(|v| Answer::Volume(Box::new(v))),
            Action::VolumeList => self.list_volumes(caller).await.map(Answer::Volumes),
            Action::VolumeInspect { name } => self
                .inspect_volume(caller, &name)
                .await
                .map(|v| Answer::Volume(Box::new(v))),
            Action::VolumeRemove { name } => self
                .remove_volume(caller, &name)
                .await
                .map(|()| Answer::Removed),
            Action::SnapshotCreate { sandbox, snapshot } => self
                .snapshot_create(caller, &sandbox, snapshot.as_deref())
                .await
                .map(|info| Answer::Snapshot(Box::new(info))),
            Action::SnapshotList => self.snapshot_list().map(Answer::Snapshots),
            Action::SnapshotInspect { snapshot } => self
                .snapshot_inspect(&snapshot)
                .map(|info| Answer::Snapshot(Box::new(info))),
            Action::SnapshotRemove { snapshot } => self
                .snapshot_remove(caller, &snapshot)
                .await
                .map(|()| Answer::Removed),
            Action::CreateFromSnapshot {
                name,
                snapshot,
                start,
            } => self
                .create_from_snapshot(caller, &name, &snapshot, start)
                .await
                .map(record),
            Action::Fork { sandbox, new } => {
                self.fork(caller, &sandbox, &new).await.map(Answer::Records)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_round_trip_and_unknown_fields_are_refused() {
        for action in [
            Action::Start { name: "a".into() },
            Action::Remove {
                name: "a".into(),
                force: true,
            },
            Action::List,
        ] {
            let line = serde_json::to_string(&action).unwrap();
            assert_eq!(serde_json::from_str::<Action>(&line).unwrap(), action);
        }
        assert!(serde_json::from_str::<Action>(r#"{"start":{"name":"a","x":1}}"#).is_err());
        assert!(serde_json::from_str::<Action>(r#""reboot""#).is_err());
    }
}
