//! Named QEMU VMs saved with their memory and restored from it: QEMU migrates the whole
//! VM (memory, devices, vCPUs) to a file (`migrate` to `exec:cat > FILE`, with its vCPUs
//! stopped) and a new QEMU with the same devices loads it (`-incoming`), its guest going
//! on where it was. The agent's channel is virtio-serial (vhost-user vsock cannot
//! migrate); what else cannot migrate, or cannot be recreated the same on the host, is
//! refused up front: a network (the tap, its lease and NAT rules, or the egress helper
//! and its connection) and 9p shares (QEMU refuses to migrate a mounted one).

use std::path::Path;

use ak_core::backend::{Lifetime, SandboxHandle};
use ak_core::{BackendError, NetworkMode, Sandbox, SandboxSpec};

use crate::error::MicrovmError;
use crate::vm::VmRecord;
use crate::{DriverKind, MicrovmBackend, qmp};

impl MicrovmBackend {
    /// Why a VM of `spec` cannot be saved with its memory, if it cannot.
    pub(crate) fn check_savable(&self, spec: &SandboxSpec) -> Result<(), MicrovmError> {
        self.check_carried_over(spec)?;
        if spec.root_dir.is_none() {
            return Err(MicrovmError::Unsupported(
                "a VM is saved with its memory (pause --save, fork of a running VM) only when it is a named sandbox (its root's layer disk goes with it)".into(),
            ));
        }
        Ok(())
    }

    /// Why a VM of `spec` cannot be carried across a save and a restore, if it cannot
    /// (also what a one-shot VM restored from a template must meet, `template.rs`).
    pub(crate) fn check_carried_over(&self, spec: &SandboxSpec) -> Result<(), MicrovmError> {
        let refuse = |why: &str| {
            Err(MicrovmError::Unsupported(format!(
                "a VM is saved with its memory (pause --save, fork of a running VM) only {why}"
            )))
        };
        if self.driver != DriverKind::Qemu {
            return refuse("with the QEMU driver (Firecracker's snapshots are not supported)");
        }
        if spec.policy.network != NetworkMode::None {
            return refuse("without network (its tap or egress connection cannot be carried over)");
        }
        if !spec.mounts.is_empty() || ak_egress::provision::has_secrets(spec) {
            return refuse(
                "without host directories or secrets shared into it (QEMU cannot migrate a mounted 9p share)",
            );
        }
        Ok(())
    }

    pub(crate) async fn save(
        &self,
        handle: &SandboxHandle,
        spec: &SandboxSpec,
        state: &Path,
        end: bool,
    ) -> Result<(), MicrovmError> {
        self.check_savable(spec)?;
        let record: VmRecord = serde_json::from_str(&handle.data)
            .map_err(|e| MicrovmError::State(format!("bad handle of {}: {e}", handle.id)))?;
        if record.serial_ports == 0 {
            return Err(MicrovmError::Unsupported(
                "this VM was started with a vsock channel, which cannot be saved: stop and start it again".into(),
            ));
        }
        if !record.hypervisor_alive() {
            return Err(MicrovmError::State(format!(
                "VM {} is not running",
                handle.id
            )));
        }
        // Written beside, renamed into place once complete: a saved VM's file is whole.
        let partial = state.with_extension("partial");
        let socket = record.layout.qmp_socket();
        let was_running = qmp::is_running(&socket).await?;
        if was_running {
            qmp::set_paused(&socket, true).await?;
        }
        if let Err(e) = qmp::save_state(&socket, &partial).await {
            let _ = std::fs::remove_file(&partial);
            // A failed save leaves the VM as it was.
            if was_running && let Err(again) = qmp::set_paused(&socket, false).await {
                tracing::warn!("resuming a VM whose save failed: {again}");
            }
            return Err(e);
        }
        std::fs::rename(&partial, state)
            .map_err(MicrovmError::io(format!("rename {}", partial.display())))?;
        if end {
            if let Err(e) = qmp::quit(&socket).await {
                tracing::debug!("QEMU's quit: {e}");
            }
            tokio::task::spawn_blocking(move || record.end())
                .await
                .map_err(|e| MicrovmError::State(format!("ending the VM: {e}")))??;
        } else if was_running {
            qmp::set_paused(&socket, false).await?;
        }
        Ok(())
    }

    pub(crate) async fn restore(
        &self,
        spec: &SandboxSpec,
        state: &Path,
    ) -> Result<Box<dyn Sandbox>, BackendError> {
        self.check_savable(spec)?;
        if !state.is_file() {
            return Err(MicrovmError::State(format!("{} does not exist", state.display())).into());
        }
        Ok(Box::new(
            self.boot(spec, Lifetime::Persistent, Some(state)).await?,
        ))
    }
}
