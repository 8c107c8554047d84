//! Exit codes of the CLI besides the command's own, and the one place errors are printed.

use ak_protocol::ErrorKind;
use ak_service::ServiceError;

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
    match error {
        ServiceError::Config(_)
        | ServiceError::EmptyCommand
        | ServiceError::InvalidInput(_)
        | ServiceError::NotFound(_)
        | ServiceError::Duplicate(_)
        | ServiceError::WrongState { .. } => USAGE,
        ServiceError::Command(agent) => match agent.kind {
            ErrorKind::NotFound => NOT_FOUND,
            _ => CANNOT_EXECUTE,
        },
        _ => SANDBOX_FAILURE,
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
