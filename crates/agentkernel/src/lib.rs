//! agentkernel's command line, linked into two executables: `agentkernel` itself and
//! `ak-server`, which runs its long-lived servers (see [`Executable`]).

mod cli;
mod commands;
mod daemon;
mod exit;
mod front;
mod wiring;

/// Which of the two executables is running. Both are this command line; they differ in
/// how they are linked (`build.rs`):
///
/// - `agentkernel` is a static executable at a fixed address. A position-independent one
///   relocates itself at every start, writing (copy-on-write) the ~430 KB of pointers in
///   its read-only data: 0.6 ms of every cold `run` here (docs/benchmarks.md), for a
///   process that serves one local user's command and exits.
/// - `ak-server` is position-independent, so its code lands at a random address. It runs
///   the processes that read other programs' input for as long as they live: `serve` (an
///   HTTP API, possibly remote), `mcp` (an agent client) and the daemon. A fixed address
///   would hand an exploit of any bug in them, or in the C code they link, every code
///   address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executable {
    Client,
    Server,
}

/// Runs the command line and exits.
pub fn main(executable: Executable) -> ! {
    let cli = cli::Cli::from_command_line();
    if cli.command.is_long_lived_server() {
        if executable == Executable::Client {
            exit::fail(exit::SANDBOX_FAILURE, &wiring::exec_server());
        }
        wiring::LONG_LIVED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    wiring::ONE_AT_A_TIME.store(
        !cli.command.needs_worker_threads(),
        std::sync::atomic::Ordering::Relaxed,
    );
    init_tracing(cli.global.verbose);
    // One thread for one command; commands that build several sandboxes at once (blocking
    // work) get a worker per core.
    let mut builder = if cli.command.needs_worker_threads() {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => exit::fail(
            exit::SANDBOX_FAILURE,
            &anyhow::anyhow!("cannot start the async runtime: {error}"),
        ),
    };
    let code = runtime.block_on(commands::dispatch(cli.command));
    // Exit at once: a thread blocked reading our stdin must not keep the process alive.
    std::process::exit(code);
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTKERNEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}
