//! One sandbox in a microVM: reached through the vsock device socket in its runtime
//! directory; ended by killing its processes.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ak_core::backend::{Lifetime, SandboxHandle, SandboxUsage, Transport};
use ak_core::{BackendError, BackendKind, Sandbox};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use crate::vm::VmRecord;
use crate::{serial, vsock};

#[derive(Debug)]
pub struct MicrovmSandbox {
    pub(crate) id: String,
    pub(crate) record: VmRecord,
    /// Ephemeral: the one connection, until handed out.
    pub(crate) transport: Option<UnixStream>,
    /// Cleared when the hypervisor exits (VMs this process started); a VM found again
    /// from its handle is checked through its recorded process instead.
    pub(crate) running: Arc<AtomicBool>,
    pub(crate) watcher: Option<JoinHandle<()>>,
    pub(crate) destroyed: bool,
    /// Where creating it went (see `Sandbox::boot_phases`); empty when found again.
    pub(crate) boot_phases: Vec<(&'static str, std::time::Duration)>,
}

impl MicrovmSandbox {
    fn lifetime(&self) -> Lifetime {
        self.record.lifetime
    }

    /// Lets go of the VM without ending it (its record ends it): nothing watches it or
    /// ends it when this is dropped.
    pub(crate) fn forget(mut self) -> VmRecord {
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
        self.destroyed = true;
        self.record.clone()
    }
}

#[async_trait::async_trait]
impl Sandbox for MicrovmSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn handle(&self) -> SandboxHandle {
        SandboxHandle {
            backend: BackendKind::Microvm,
            id: self.id.clone(),
            data: serde_json::to_string(&self.record).unwrap_or_default(),
        }
    }

    async fn connect(&mut self) -> Result<Box<dyn Transport>, BackendError> {
        match self.lifetime() {
            Lifetime::Ephemeral => ak_core::backend::take_one_shot_transport(&mut self.transport),
            Lifetime::Persistent => {
                if !self.is_running() {
                    return Err(BackendError::Gone(self.id.clone()));
                }
                let connected = if self.record.serial_ports > 0 {
                    serial::connect(&self.record.layout, self.record.serial_ports).await
                } else {
                    vsock::connect(&self.record.layout.vsock(), vsock::AGENT_PORT).await
                };
                match connected {
                    Ok(stream) => Ok(Box::new(stream)),
                    Err(e) if !self.record.hypervisor_alive() => {
                        tracing::debug!("{e}");
                        self.running.store(false, Ordering::SeqCst);
                        Err(BackendError::Gone(self.id.clone()))
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    async fn destroy(&mut self) -> Result<SandboxUsage, BackendError> {
        drop(self.transport.take());
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
        // Ending a VM with a network runs iptables and waits on netlink (~50 ms): off
        // the runtime's threads.
        let record = self.record.clone();
        tokio::task::spawn_blocking(move || record.end())
            .await
            .map_err(|e| BackendError::Setup(format!("ending the VM: {e}")))??;
        self.running.store(false, Ordering::SeqCst);
        self.destroyed = true;
        Ok(SandboxUsage::default())
    }

    fn take_transport_fd(&mut self) -> Result<OwnedFd, BackendError> {
        ak_core::backend::hand_out_transport(self.transport.take())
    }

    fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst) && self.record.hypervisor_alive()
    }

    fn boot_phases(&self) -> Vec<(&'static str, std::time::Duration)> {
        self.boot_phases.clone()
    }

    fn detach(mut self: Box<Self>) {
        if self.lifetime() == Lifetime::Persistent {
            // Forgotten, still running: its handle finds it again.
            self.destroyed = true;
        }
    }
}

impl Drop for MicrovmSandbox {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
        if self.destroyed || self.lifetime() == Lifetime::Persistent {
            return;
        }
        if let Err(e) = self.record.end() {
            tracing::warn!("{e}");
        }
    }
}
