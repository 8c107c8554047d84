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

use std::future::Future;
use std::pin::Pin;

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

/// The command's future, boxed: each lives on the heap at its own size. As one `async fn`
/// over every command, the future was as large as the largest command's, and it was moved
/// through `main`'s and the runtime's stack frames, whose probes touched every page of them:
/// about 125 KB of stack, ~30 page faults of every `run` (perf, `--call-graph`, `%sp`
/// probes; docs/benchmarks.md).
pub fn dispatch(command: Command) -> Pin<Box<dyn Future<Output = i32>>> {
    match command {
        Command::Run(args) => Box::pin(run::run(*args)),
        Command::Status(args) => Box::pin(async move { status::status(args) }),
        Command::Create(args) => Box::pin(sandbox::create(*args)),
        Command::Start(args) => Box::pin(sandbox::start(args)),
        Command::Exec(args) => Box::pin(exec::exec(args)),
        Command::Attach(args) => Box::pin(attach::attach(args)),
        Command::Cp(args) => Box::pin(cp::cp(args)),
        Command::Stop(args) => Box::pin(sandbox::stop(args)),
        Command::Pause(args) => Box::pin(sandbox::pause(args)),
        Command::Resume(args) => Box::pin(sandbox::resume(args)),
        Command::Remove(args) => Box::pin(sandbox::remove(args)),
        Command::List(args) => Box::pin(sandbox::list(args)),
        Command::Inspect(args) => Box::pin(sandbox::inspect(args)),
        Command::Volume(command) => Box::pin(volume::volume(command)),
        Command::Secret(command) => Box::pin(async move { secret::secret(command) }),
        Command::Snapshot(command) => Box::pin(snapshot::snapshot(command)),
        Command::Network(command) => Box::pin(network::network(command)),
        Command::Fork(args) => Box::pin(snapshot::fork(args)),
        Command::Daemon(command) => Box::pin(daemon::daemon(command)),
        Command::Bench(args) => Box::pin(bench::bench(*args)),
        Command::Serve(args) => Box::pin(serve::serve(args)),
        Command::Audit(args) => Box::pin(async move { audit::audit(args) }),
        Command::Mcp => Box::pin(mcp::mcp()),
        Command::Plugin(command) => Box::pin(async move { plugin::plugin(command) }),
        Command::Image(command) => Box::pin(image::image(command)),
        Command::Setup(args) => Box::pin(setup::setup(args)),
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
