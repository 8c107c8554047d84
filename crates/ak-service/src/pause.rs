//! Pausing a running named sandbox and resuming it: every process (a VM's vCPUs) stopped
//! where it is, its memory, open files and connections kept, no CPU used until resumed.
//! The backend's freezer does it (`Backend::set_frozen`: the native backend's cgroup
//! freezer, the container engine's pause, QEMU's `stop`/`cont`), the same one a snapshot
//! of a running sandbox uses; the registry records the state, so a paused sandbox stays
//! paused across daemon restarts until someone resumes it.

use ak_core::SandboxState;

use crate::error::ServiceError;
use crate::registry::SandboxRecord;
use crate::sandboxes::{parse_handle, require};
use crate::{Caller, Service};

impl Service {
    /// Freezes (`pause`) or thaws (`!pause`) a named sandbox and records its new state.
    async fn set_paused(&self, name: &str, pause: bool) -> Result<SandboxRecord, ServiceError> {
        let (from, to, action) = if pause {
            (SandboxState::Running, SandboxState::Paused, "pause")
        } else {
            (SandboxState::Paused, SandboxState::Running, "resume")
        };
        // A sandbox whose processes died is found failed here, not paused.
        let (_lock, record) = self.lock_name_checked(name).await?;
        require(&record, &[from], action)?;
        let handle = parse_handle(&record)?;
        self.backend(record.backend)?
            .set_frozen(&handle, pause)
            .await?;
        let recorded = self
            .registry()?
            .transition(name, from, to, record.handle.clone(), None);
        if recorded.is_err()
            && let Err(e) = self
                .backend(record.backend)?
                .set_frozen(&handle, !pause)
                .await
        {
            tracing::warn!(name, "undoing a {action} that could not be recorded: {e}");
        }
        Ok(recorded?)
    }

    /// Pauses a running sandbox: its processes stop where they are and use no CPU; they
    /// keep their memory, files and connections. Commands cannot reach it until resumed.
    /// `save`: saved to disk with its memory instead, its processes ended (state
    /// `saved`, see `memory.rs`).
    pub async fn pause_named(
        &self,
        caller: Caller,
        name: &str,
        save: bool,
    ) -> Result<SandboxRecord, ServiceError> {
        if save {
            return self.save_named(caller, name).await;
        }
        let result = self.set_paused(name, true).await;
        self.audited(caller, "pause", Some(name), None, result)
    }

    /// Resumes a paused sandbox where it stopped (a VM's clock set to the host's: it
    /// stood still while paused).
    pub async fn resume_named(
        &self,
        caller: Caller,
        name: &str,
    ) -> Result<SandboxRecord, ServiceError> {
        // A saved sandbox is started from its memory state, which sets its clock.
        if self.record(name)?.state == SandboxState::Saved {
            let result = self.resume_saved(name).await;
            return self.audited(caller, "resume", Some(name), Some("saved".into()), result);
        }
        let result = self.set_paused(name, false).await;
        if let Ok(record) = &result
            && self.backend(record.backend)?.clock_stops_when_frozen()
            && let Err(e) = self.set_guest_clock(name).await
        {
            // Resumed all the same; its clock lags by the time it was paused.
            tracing::warn!(name, "setting the clock of a resumed VM: {e}");
        }
        self.audited(caller, "resume", Some(name), None, result)
    }
}
