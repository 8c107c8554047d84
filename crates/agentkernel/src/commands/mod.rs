//! One module per command; `dispatch` maps each to its exit code.

mod attach;
mod audit;
mod bench;
mod cp;
mod daemon;
mod exec;
mod image;
mod mcp;
mod network;
mod plugin;
mod run;
mod sandbox;
mod secret;
mod serve;
mod setup;
mod snapshot;
mod status;
mod stream;
mod terminal;
mod volume;

use ak_core::SandboxSpec;
use ak_core::config::{SandboxOptions, resolve};
use ak_core::spec::new_sandbox_id;
use anyhow::anyhow;

use crate::cli::{Command, SandboxArgs};
use crate::exit;

/// Prints a command's output on stdout: the one place the binary writes results.
#[allow(clippy::print_stdout, reason = "the commands' output")]
pub(crate) fn say(text: &str) {
    println!("{text}");
}

/// Prints `value` as pretty JSON (the `--json` output of every command).
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> i32 {
    match serde_json::to_string_pretty(value) {
        Ok(json) => {
            say(&json);
            0
        }
        Err(e) => {
            exit::report(&e.into());
            exit::SANDBOX_FAILURE
        }
    }
}

pub async fn dispatch(command: Command) -> i32 {
    match command {
        Command::Run(args) => run::run(*args).await,
        Command::Status(args) => status::status(args),
        Command::Create(args) => sandbox::create(*args).await,
        Command::Start(args) => sandbox::start(args).await,
        Command::Exec(args) => exec::exec(args).await,
        Command::Attach(args) => attach::attach(args).await,
        Command::Cp(args) => cp::cp(args).await,
        Command::Stop(args) => sandbox::stop(args).await,
        Command::Pause(args) => sandbox::pause(args).await,
        Command::Resume(args) => sandbox::resume(args).await,
        Command::Remove(args) => sandbox::remove(args).await,
        Command::List(args) => sandbox::list(args).await,
        Command::Inspect(args) => sandbox::inspect(args).await,
        Command::Volume(command) => volume::volume(command).await,
        Command::Secret(command) => secret::secret(command),
        Command::Snapshot(command) => snapshot::snapshot(command).await,
        Command::Network(command) => network::network(command).await,
        Command::Fork(args) => snapshot::fork(args).await,
        Command::Daemon(command) => daemon::daemon(command).await,
        Command::Bench(args) => bench::bench(*args).await,
        Command::Serve(args) => serve::serve(args).await,
        Command::Audit(args) => audit::audit(args),
        Command::Mcp => mcp::mcp().await,
        Command::Plugin(command) => plugin::plugin(command),
        Command::Image(command) => image::image(command).await,
        Command::Setup(args) => setup::setup(args).await,
    }
}

/// The sandbox described by `args` over the config files that apply here; bad input ends
/// the process with a clear error (exit code 2).
fn resolve_spec(args: &SandboxArgs) -> SandboxSpec {
    resolve_options(args.options())
}

/// [`resolve_spec`] for options already taken from the command line.
fn resolve_options(flags: SandboxOptions) -> SandboxSpec {
    let cwd = match std::env::current_dir() {
        Ok(cwd) => cwd,
        Err(e) => exit::fail(
            exit::USAGE,
            &anyhow!("cannot read the current directory: {e}"),
        ),
    };
    let options = crate::wiring::settings().sandbox_options(flags);
    match resolve(options, &cwd, new_sandbox_id()) {
        Ok(spec) => spec,
        Err(e) => exit::fail(exit::USAGE, &e.into()),
    }
}
