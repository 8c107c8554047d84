//! One command in a fresh, one-shot sandbox: provision, connect, exec; the session
//! releases the sandbox when it finishes.

use ak_core::backend::Lifetime;
use ak_core::{ExecSpec, SandboxSpec};
use ak_image::PullPolicy;

use crate::error::ServiceError;
use crate::image_config::{self, Entry};
use crate::pool::poolable;
use crate::sandboxes::command_line;
use crate::session::{CommandSession, Owned};
use crate::{Caller, Service};

/// Where a one-shot run's sandbox comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Built for this run.
    Fresh,
    /// A never-used spare from this host's warm pools when it keeps them and the sandbox
    /// can be prepared ahead; else built for this run.
    Pooled,
}

impl Service {
    /// Says that a [`Service::start_run`] of `spec` in a fresh sandbox follows: its backend
    /// may begin, on other CPUs, the part of the creation that needs nothing else (see
    /// [`ak_core::Backend::expect_ephemeral`]). For a process that is about to run one
    /// command; the run then checks and refuses exactly as without it.
    pub fn expect_run(&self, spec: &SandboxSpec) {
        if let Ok(backend) = self.backend(spec.backend) {
            backend.expect_ephemeral(spec);
        }
    }

    /// Starts `exec` in a one-shot sandbox described by `spec`, which the session releases
    /// when the command ends (or when the session is dropped); the sandbox's timeout
    /// applies to the command.
    pub async fn start_run(
        &self,
        caller: Caller,
        spec: &SandboxSpec,
        exec: ExecSpec,
        placement: Placement,
    ) -> Result<CommandSession, ServiceError> {
        let detail = command_line(&exec.argv);
        let result = self
            .start_run_unaudited(caller, spec, exec, placement)
            .await;
        self.audited(caller, "run", None, Some(detail), result)
    }

    async fn start_run_unaudited(
        &self,
        caller: Caller,
        spec: &SandboxSpec,
        mut exec: ExecSpec,
        placement: Placement,
    ) -> Result<CommandSession, ServiceError> {
        let mut spec = spec.clone();
        self.prepare_image(&mut spec, Some(&exec.argv), PullPolicy::Missing)
            .await?;
        self.resolve_secrets(caller, &mut spec)?;
        let spec = &spec;
        image_config::apply(spec, &mut exec, Entry::Run)?;
        ak_core::exec::validate_argv(&exec.argv, &[])?;
        self.policy.admit(caller, spec)?;
        self.admit_volumes(caller, spec)?;
        // A backend this build lacks is refused before the run waits for a set-up turn.
        self.backend(spec.backend)?;
        with_spec_timeout(spec, &mut exec);
        with_spec_env(spec, &mut exec);
        let begun = std::time::Instant::now();
        if placement == Placement::Pooled
            && let Some(pools) = &self.pools
            && poolable(spec)
        {
            // A spare needs no set-up turn; a miss takes one once the pool has room.
            match pools.take(self, spec, Some(self.setups())).await {
                Ok(taken) => {
                    let owned = Owned::new(taken.sandbox, Some(taken.slot), self.offload_blocking);
                    return self.connect_owned(owned, exec).await;
                }
                // A full pool (or one that cannot build) must not fail the run: a fresh
                // sandbox is what the run would get without a pool.
                Err(error) => tracing::debug!("warm pool unavailable, making a sandbox: {error}"),
            }
        }
        // Only the set-up takes a turn: the command then runs without holding one.
        let turn = self
            .setups()
            .acquire()
            .await
            .map_err(|e| ServiceError::Unavailable(format!("sandbox set-up queue: {e}")))?;
        let sandbox = self.create_sandbox(spec, Lifetime::Ephemeral, None).await?;
        drop(turn);
        tracing::debug!(elapsed = ?begun.elapsed(), "sandbox created");
        let session = self
            .connect_owned(Owned::new(sandbox, None, self.offload_blocking), exec)
            .await;
        tracing::debug!(elapsed = ?begun.elapsed(), "command sent to the agent");
        session
    }

    /// Connects to an owned sandbox's agent and starts `exec`; the sandbox is released if
    /// that fails.
    async fn connect_owned(
        &self,
        mut owned: Owned,
        exec: ExecSpec,
    ) -> Result<CommandSession, ServiceError> {
        let transport = owned.connect().await?;
        CommandSession::start(transport, exec, Some(owned)).await
    }

    /// Starts `exec` in a never-used pool sandbox for `spec`, reached over `transport`
    /// that the daemon handed to this process (the sandbox stays the daemon's, which
    /// releases it once the connection closes). The same action as [`Service::start_run`]
    /// over another transport: the command's data never passes through the daemon.
    pub async fn start_handed_out(
        &self,
        caller: Caller,
        transport: Box<dyn ak_core::Transport>,
        spec: &SandboxSpec,
        mut exec: ExecSpec,
    ) -> Result<CommandSession, ServiceError> {
        with_spec_timeout(spec, &mut exec);
        let applied = image_config::apply(spec, &mut exec, Entry::Run);
        with_spec_env(spec, &mut exec);
        let detail = command_line(&exec.argv);
        let result = match applied.and_then(|()| Ok(ak_core::exec::validate_argv(&exec.argv, &[])?))
        {
            Ok(()) => CommandSession::over(transport, exec).await,
            Err(error) => Err(error),
        };
        self.audited(caller, "run", None, Some(detail), result)
    }
}

/// The spec's environment goes with every command (the command's own entries win): pool
/// sandboxes start without any caller's environment, and a microVM's agent, the kernel's
/// init, starts with none of the spec's; elsewhere it repeats what the agent inherited.
pub(crate) fn with_spec_env(spec: &SandboxSpec, exec: &mut ExecSpec) {
    let command_env = std::mem::take(&mut exec.env);
    exec.env = spec.env.iter().cloned().chain(command_env).collect();
}

/// Makes an `auto` image concrete: by the command's program, else by the project files
/// in the sandbox's workdir when that is a host directory (`--mount-cwd`, `--dir`). Every
/// front end's sandbox goes through here before it is built or pooled.
pub fn settle_image(spec: &mut SandboxSpec, command: Option<&[String]>) {
    let project = spec
        .mounts
        .iter()
        .find(|m| m.target == spec.workdir)
        .map(|m| m.host.clone());
    let program = command.and_then(|c| c.first()).map(String::as_str);
    spec.image = spec.image.settle(program, project.as_deref());
}

/// The sandbox's timeout applies to its command unless the command has its own.
fn with_spec_timeout(spec: &SandboxSpec, exec: &mut ExecSpec) {
    if exec.timeout_ms.is_none() {
        exec.timeout_ms = spec.timeout.map(|t| t.as_millis() as u64);
    }
}
