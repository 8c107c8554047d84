//! Starting a VM's processes and waiting for its agent: booted (the agent says it is
//! ready, over vsock or on its serial control port) or restored from a memory state
//! (QEMU says the guest runs again, its agent where it was).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ak_core::SandboxSpec;
use ak_core::backend::Lifetime;
use tokio::net::{UnixListener, UnixStream};

use crate::error::MicrovmError;
use crate::sandbox::MicrovmSandbox;
use crate::vm::{Layout, VmRecord};
use crate::{
    BOOT_LIMIT, Boot, DriverKind, HostNetwork, Launched, MicrovmBackend, firecracker, qemu, qmp,
    serial, vsock,
};

/// How long a VM whose agent's channel failed gets to be seen exiting: its exit, not the
/// channel's error, is the reason to report.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl MicrovmBackend {
    pub(crate) async fn start(
        &self,
        boot: &Boot<'_>,
        layout: &Layout,
        lifetime: Lifetime,
        spec: &SandboxSpec,
        kvm: bool,
        network: HostNetwork,
    ) -> Result<MicrovmSandbox, MicrovmError> {
        let ready_path = vsock::host_port_socket(&layout.vsock(), vsock::READY_PORT);
        // Listening before the VM starts: the agent's one connection here is its "ready",
        // and a one-shot VM's transport.
        let ready = if boot.serial_ports == 0 {
            Some(
                UnixListener::bind(&ready_path).map_err(MicrovmError::io(format!(
                    "listen on {}",
                    ready_path.display()
                )))?,
            )
        } else {
            None
        };
        let launch_started = std::time::Instant::now();
        let launched = match self.driver {
            DriverKind::Qemu => qemu::launch(boot, layout, lifetime, kvm).await?,
            DriverKind::Firecracker => {
                firecracker::launch(&self.hypervisor()?, boot, layout, lifetime).await?
            }
        };
        let Launched {
            mut hypervisor,
            hypervisor_id,
            helper,
            mut phases,
        } = launched;
        let launch_done = std::time::Instant::now();
        let record = VmRecord {
            layout: layout.clone(),
            driver: self.driver,
            lifetime,
            hypervisor: hypervisor_id,
            vsock_daemon: helper.as_ref().map(|(_, id)| id.clone()),
            creator: ak_core::process::identity(std::process::id()).unwrap_or_default(),
            net: network.nat,
            egress: network.egress_helper,
            serial_ports: boot.serial_ports,
        };
        let outcome = async {
            record.save()?;
            // A restore's steps timed apart: where its time goes decides what to speed up.
            let mut restore_phases = Vec::new();
            let agent_ready = async {
                match (&ready, boot.incoming) {
                    (Some(ready), _) => ready
                        .accept()
                        .await
                        .map(|(stream, _)| Some(stream))
                        .map_err(MicrovmError::io("accept the agent's ready connection")),
                    (None, None) => serial::wait_ready(layout, false).await.map(|()| None),
                    (None, Some(state)) => {
                        // Only once it runs: QEMU tells the guest which hosts left over
                        // the save as it starts it, before this connection's word.
                        let step = std::time::Instant::now();
                        qmp::wait_restored(
                            &layout.qmp_socket(),
                            state,
                            boot.memory.loads_without_memory(),
                        )
                        .await?;
                        restore_phases.push(("memory state loaded, guest running", step.elapsed()));
                        let step = std::time::Instant::now();
                        serial::wait_ready(layout, true).await?;
                        restore_phases.push((
                            "agent's sync on the control port (clock set, RNG reseeded)",
                            step.elapsed(),
                        ));
                        let step = std::time::Instant::now();
                        if lifetime == Lifetime::Ephemeral {
                            // A copy of a template, whose ports were never connected:
                            // nothing to clear, and its agent serves the first
                            // connection, this one, as the VM's only one.
                            let stream = serial::connect_first(layout).await?;
                            restore_phases.push(("one-shot connection made", step.elapsed()));
                            return Ok(Some(stream));
                        }
                        serial::clear_ports(layout, boot.serial_ports).await?;
                        restore_phases.push(("data ports cleared", step.elapsed()));
                        Ok(None)
                    }
                }
            };
            let accepted: Option<UnixStream> = tokio::select! {
                accepted = agent_ready => match accepted {
                    // A serial channel fails at once when the guest dies (QEMU closes
                    // its sockets as it exits): the VM's own last words say why.
                    Err(e) if !matches!(e, MicrovmError::Boot { .. }) => {
                        match tokio::time::timeout(EXIT_WAIT, hypervisor.wait()).await {
                            Ok(status) => Err(MicrovmError::Boot {
                                reason: format!(
                                    "the {} process exited ({}) before the agent was ready ({e})",
                                    self.driver,
                                    status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
                                ),
                                log: layout.last_output(),
                            }),
                            Err(_) => Err(e),
                        }
                    }
                    accepted => accepted,
                },
                status = hypervisor.wait() => Err(MicrovmError::Boot {
                    reason: format!(
                        "the {} process exited ({}) before the agent was ready",
                        self.driver,
                        status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
                    ),
                    log: layout.last_output(),
                }),
                () = tokio::time::sleep(BOOT_LIMIT) => Err(MicrovmError::Boot {
                    reason: format!(
                        "the agent was not ready within {}s; the watchdog killed the VM",
                        BOOT_LIMIT.as_secs()
                    ),
                    log: layout.last_output(),
                }),
            }?;
            if let Some(ready) = ready {
                drop(ready);
                let _ = std::fs::remove_file(&ready_path);
            }
            if boot.incoming.is_some() {
                phases.extend(restore_phases);
            } else {
                phases.push(("guest boot until the agent is ready", launch_done.elapsed()));
            }
            // A persistent VM's connections are made to its listener, later.
            Ok(match lifetime {
                Lifetime::Ephemeral => accepted,
                Lifetime::Persistent => None,
            })
        }
        .await;
        let transport = match outcome {
            Ok(transport) => transport,
            Err(e) => {
                let _ = hypervisor.start_kill();
                if let Some((mut helper, _)) = helper {
                    let _ = helper.start_kill();
                }
                let _ = record.end();
                return Err(e);
            }
        };
        let running = Arc::new(AtomicBool::new(true));
        let watcher = {
            let running = running.clone();
            tokio::spawn(async move {
                let _ = hypervisor.wait().await;
                running.store(false, Ordering::SeqCst);
                // The vsock daemon serves no one once the VM is gone.
                if let Some((mut helper, _)) = helper {
                    let _ = helper.kill().await;
                }
            })
        };
        tracing::debug!(?phases, total = ?launch_started.elapsed(), "microVM started");
        Ok(MicrovmSandbox {
            id: spec.id.clone(),
            record,
            transport,
            running,
            watcher: Some(watcher),
            destroyed: false,
            boot_phases: phases,
        })
    }
}
