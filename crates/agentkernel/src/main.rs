//! agentkernel: run AI agents' commands in isolated sandboxes.

mod cli;
mod commands;
mod daemon;
mod exit;
mod front;
mod wiring;

fn main() {
    let cli = cli::Cli::from_command_line();
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
