//! Exit codes of the CLI besides the command's own, and the one place errors are printed.

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
