//! What the service has a VM's guest do through the agent itself: the agent is the
//! guest's init, so `/proc/1/exe` runs it whatever the image holds. Two one-shot modes of
//! the agent serve the microVM backend: `--sync-filesystems` (before a snapshot's freeze,
//! the guest's cached writes go to its disks) and `--set-clock` (after a resume from a pause,
//! the guest's clock, which stopped with its vCPUs, is set to the host's; a restore from
//! a memory state sets it on the agent's serial sync line instead).

use std::time::Duration;

use ak_core::ExitStatus;
use ak_protocol::serial::WallTime;
use ak_protocol::{AgentClient, ExecEvent};

use crate::Service;
use crate::error::ServiceError;

/// How long a guest's flush may take (a gigabyte of dirty pages written out under
/// emulation takes seconds).
const FLUSH_LIMIT: Duration = Duration::from_secs(120);
/// How long setting the clock may take.
const CLOCK_LIMIT: Duration = Duration::from_secs(10);

impl Service {
    /// Runs the agent of `sandbox`'s guest with `args` and waits for it to succeed.
    /// Returns the connection it used, still open (see [`Service::flush_guest`]).
    async fn run_guest_agent(
        &self,
        sandbox: &str,
        args: Vec<String>,
        limit: Duration,
        what: &str,
    ) -> Result<AgentClient, ServiceError> {
        let failed = |why: String| ServiceError::State(format!("{what} in the guest: {why}"));
        let client = self.client_named(sandbox).await?;
        let mut argv = vec!["/proc/1/exe".to_string()];
        argv.extend(args);
        let mut exec = client
            .exec(ak_core::ExecSpec {
                argv,
                timeout_ms: Some(limit.as_millis() as u64),
                ..ak_core::ExecSpec::default()
            })
            .await?;
        loop {
            match exec.next_event().await? {
                Some(ExecEvent::Exited { status, timed_out }) => {
                    return match (status, timed_out) {
                        (ExitStatus::Code(0), false) => Ok(client),
                        (_, true) => Err(failed(format!("not done within {limit:?}"))),
                        (status, false) => Err(failed(format!("it ended with {status:?}"))),
                    };
                }
                Some(_) => {}
                None => return Err(failed("the agent's connection closed".into())),
            }
        }
    }

    /// Has a running VM's guest write its cached file system data to its disks, before it
    /// is frozen for a copy of them. Writes made between this and the freeze may be
    /// partly on the disk: they are what the file system's journal recovers at the
    /// restored VM's first mount. Returns the connection it used, for the caller to close
    /// once the VM runs again (closed just before QEMU's `stop`, its packets in flight
    /// left vhost-device-vsock 0.3.0 answering no new connection).
    pub(crate) async fn flush_guest(&self, sandbox: &str) -> Result<AgentClient, ServiceError> {
        self.run_guest_agent(
            sandbox,
            vec![ak_protocol::SYNC_FILESYSTEMS_ARG.into()],
            FLUSH_LIMIT,
            "flushing the file systems",
        )
        .await
    }

    /// Sets a resumed VM's clock to the host's: it stood still while the VM was paused.
    pub(crate) async fn set_guest_clock(&self, sandbox: &str) -> Result<(), ServiceError> {
        let now =
            WallTime::now().map_err(|e| ServiceError::State(format!("the host's clock: {e}")))?;
        self.run_guest_agent(
            sandbox,
            vec![ak_protocol::SET_CLOCK_ARG.into(), now.to_string()],
            CLOCK_LIMIT,
            "setting the clock",
        )
        .await
        .map(drop)
    }
}
