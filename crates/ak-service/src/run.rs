//! One command in a fresh, one-shot sandbox: provision, connect, exec; the session
//! releases the sandbox when it finishes.

use ak_core::backend::Lifetime;
use ak_core::{ExecSpec, SandboxSpec};

use crate::Service;
use crate::error::ServiceError;
use crate::sandboxes::command_line;
use crate::session::CommandSession;

impl Service {
    /// Starts `exec` in a fresh sandbox described by `spec`; the sandbox's timeout applies
    /// to the command.
    pub async fn start_run(
        &self,
        spec: &SandboxSpec,
        exec: ExecSpec,
    ) -> Result<CommandSession, ServiceError> {
        let detail = command_line(&exec.argv);
        let result = self.start_run_unaudited(spec, exec).await;
        self.audited("run", None, Some(detail), result)
    }

    async fn start_run_unaudited(
        &self,
        spec: &SandboxSpec,
        mut exec: ExecSpec,
    ) -> Result<CommandSession, ServiceError> {
        if exec.argv.is_empty() {
            return Err(ServiceError::EmptyCommand);
        }
        let mut spec = spec.clone();
        settle_image(&mut spec, Some(&exec.argv));
        let spec = &spec;
        let backend = self.backend(spec.backend)?;
        with_spec_timeout(spec, &mut exec);
        let begun = std::time::Instant::now();
        let mut sandbox = backend.create(spec, Lifetime::Ephemeral).await?;
        tracing::debug!(elapsed = ?begun.elapsed(), "sandbox created");
        let transport = match sandbox.connect().await {
            Ok(transport) => transport,
            Err(error) => {
                let _ = sandbox.destroy().await;
                return Err(error.into());
            }
        };
        let session = CommandSession::start(transport, exec, Some(sandbox)).await;
        tracing::debug!(elapsed = ?begun.elapsed(), "command sent to the agent");
        session
    }
}

impl Service {
    /// Starts `exec` in a never-used pool sandbox for `spec`, reached over `transport`
    /// (handed out by the daemon). Pool sandboxes start without any caller's environment or
    /// timeout, so the spec's go with the command.
    pub async fn start_pooled(
        &self,
        transport: Box<dyn ak_core::Transport>,
        spec: &SandboxSpec,
        mut exec: ExecSpec,
    ) -> Result<CommandSession, ServiceError> {
        with_spec_timeout(spec, &mut exec);
        let command_env = std::mem::take(&mut exec.env);
        exec.env = spec.env.iter().cloned().chain(command_env).collect();
        let detail = command_line(&exec.argv);
        let result = CommandSession::over(transport, exec).await;
        self.audited("run", None, Some(detail), result)
    }
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
