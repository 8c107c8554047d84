//! Where a sandbox's time goes: one sandbox taken through boot, ready, exec and shutdown,
//! each timed on its own (what `agentkernel bench` reports per backend).

use std::time::{Duration, Instant};

use ak_core::backend::Lifetime;
use ak_core::{ExecSpec, ExitStatus, SandboxSpec};
use ak_protocol::ExecEvent;

use crate::Service;
use crate::error::ServiceError;
use crate::session::connect_agent;

/// The times of one sandbox's components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentTimes {
    /// The backend provisions the sandbox and starts its agent.
    pub boot: Duration,
    /// Connection, protocol handshake and a ping answered: the agent takes commands.
    pub ready: Duration,
    /// `echo hello` from request to exit, its output checked.
    pub exec: Duration,
    /// Everything ended and every host resource released.
    pub shutdown: Duration,
    /// `boot` broken down, when the backend tells (see `Sandbox::boot_phases`).
    pub boot_phases: Vec<(&'static str, Duration)>,
}

impl ComponentTimes {
    /// The components in the order they happen, then their sum.
    pub const NAMES: [&'static str; 5] = ["boot", "ready", "exec", "shutdown", "total"];

    /// The times in the order of [`ComponentTimes::NAMES`].
    pub fn values(&self) -> [Duration; 5] {
        [
            self.boot,
            self.ready,
            self.exec,
            self.shutdown,
            self.boot + self.ready + self.exec + self.shutdown,
        ]
    }
}

impl Service {
    /// Takes one fresh sandbox for `spec` through its components. The sandbox is always
    /// released, also when a component fails.
    pub async fn time_components(
        &self,
        spec: &SandboxSpec,
    ) -> Result<ComponentTimes, ServiceError> {
        let backend = self.backend(spec.backend)?;
        let started = Instant::now();
        let mut sandbox = backend.create(spec, Lifetime::Ephemeral).await?;
        let boot = started.elapsed();
        let boot_phases = sandbox.boot_phases();
        let measured = async {
            let started = Instant::now();
            let client = connect_agent(sandbox.connect().await?).await?;
            client.ping().await?;
            let ready = started.elapsed();

            let started = Instant::now();
            let mut handle = client
                .exec(ExecSpec {
                    argv: vec!["echo".into(), "hello".into()],
                    ..ExecSpec::default()
                })
                .await?;
            let mut stdout = Vec::new();
            let mut status = None;
            while let Some(event) = handle.next_event().await? {
                match event {
                    ExecEvent::Stdout(data) => stdout.extend_from_slice(&data),
                    ExecEvent::Exited { status: s, .. } => status = Some(s),
                    ExecEvent::Started { .. } | ExecEvent::Stderr(_) => {}
                }
            }
            let exec = started.elapsed();
            if status != Some(ExitStatus::Code(0)) || stdout != b"hello\n" {
                return Err(ServiceError::State(format!(
                    "`echo hello` in the sandbox ended {status:?} printing {:?}",
                    String::from_utf8_lossy(&stdout)
                )));
            }
            Ok((ready, exec, client))
        }
        .await;
        let started = Instant::now();
        // The connection goes first: an ephemeral sandbox ends when it closes.
        let destroyed = match measured {
            Ok((ready, exec, client)) => {
                drop(client);
                sandbox.destroy().await.map(|_| (ready, exec))
            }
            Err(error) => {
                let _ = sandbox.destroy().await;
                return Err(error);
            }
        };
        let (ready, exec) = destroyed?;
        Ok(ComponentTimes {
            boot,
            ready,
            exec,
            shutdown: started.elapsed(),
            boot_phases,
        })
    }
}
