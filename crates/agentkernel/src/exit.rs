//! Exit codes of the CLI besides the command's own, and the one place errors are printed.

use ak_protocol::ErrorKind;
use ak_service::{ErrorClass, ServiceError};

/// Invalid usage or input (flags, config files, names).
pub const USAGE: i32 = 2;
/// The command ran past its timeout and was killed (as `timeout(1)`).
pub const TIMED_OUT: i32 = 124;
/// The sandbox could not be created, reached or released.
pub const SANDBOX_FAILURE: i32 = 125;
/// The command exists but could not be executed.
pub const CANNOT_EXECUTE: i32 = 126;
/// The command was not found in the sandbox.
pub const NOT_FOUND: i32 = 127;

/// The exit code for a service operation that failed: one rule, whether the work was done
/// in this process or by the daemon (which sends the code along with its message).
pub fn code_for(error: &ServiceError) -> i32 {
    // What the agent could not do is the command's failure, as a shell reports it.
    if let ServiceError::Command(agent) = error {
        return match agent.kind {
            ErrorKind::NotFound => NOT_FOUND,
            _ => CANNOT_EXECUTE,
        };
    }
    match error.class() {
        ErrorClass::Invalid
        | ErrorClass::Forbidden
        | ErrorClass::NotFound
        | ErrorClass::Conflict
        | ErrorClass::TooLarge => USAGE,
        ErrorClass::Unavailable | ErrorClass::Fault => SANDBOX_FAILURE,
    }
}

/// What the CLI user can do about `error`, in CLI terms (the service's messages name no
/// command or flag, since other front ends show them too).
pub fn hint_for(error: &ServiceError) -> Option<String> {
    match error {
        ServiceError::NotFound(_) => Some("see `agentkernel list`".into()),
        ServiceError::WrongState { name, state, .. } => match state {
            ak_core::SandboxState::Stopped => Some(format!("agentkernel start {name}")),
            ak_core::SandboxState::Running => Some(format!(
                "agentkernel stop {name}, or agentkernel remove --force {name}"
            )),
            ak_core::SandboxState::Failed => Some(format!("agentkernel remove {name}")),
            ak_core::SandboxState::Paused | ak_core::SandboxState::Saved => {
                Some(format!("agentkernel resume {name}"))
            }
            _ => None,
        },
        _ => None,
    }
}

/// `error` as the CLI prints it: the service's message with the CLI's hint.
pub fn with_hint(error: ServiceError) -> anyhow::Error {
    match hint_for(&error) {
        Some(hint) => anyhow::anyhow!("{:#} ({hint})", anyhow::Error::from(error)),
        None => error.into(),
    }
}

/// Prints `error` with its causes and exits with `code`.
pub fn fail(code: i32, error: &anyhow::Error) -> ! {
    report(error);
    std::process::exit(code)
}

/// Prints `error` with its causes on stderr.
pub fn report(error: &anyhow::Error) {
    #[allow(clippy::print_stderr, reason = "the CLI's error output")]
    {
        eprintln!("agentkernel: {error:#}");
    }
}
