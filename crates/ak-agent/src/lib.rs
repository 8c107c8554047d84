//! ak-agent: the in-sandbox agent, PID 1 of every sandbox.
//!
//! The host talks to it over one byte stream with the `ak-protocol`: it runs commands
//! (with pipes or a pty, timeouts and signals) and reads and writes files confined to the
//! sandbox root. [`main_entry`] is the whole program; [`Agent`] serves connections and is
//! what tests drive in-process.

mod agent;
mod args;
mod direct_spawn;
mod errors;
mod exec;
mod fdio;
mod files;
mod guest;
mod listener;
mod outbox;
mod output;
mod paths;
mod pty;
mod reaper;
mod seccomp;
mod serial;
mod server;
mod signals;
mod spawn;
mod tasks;
mod users;
mod write;

use std::path::PathBuf;

pub use agent::{Agent, AgentConfig};
pub use reaper::ReapPolicy;

use args::{ArgsError, Mode};

/// Environment variable with the log level (`error`, `warn`, `info`, `debug`, `trace`).
const LOG_ENV: &str = "AK_AGENT_LOG";

/// Runs the agent with the process's arguments; returns the process exit code: 0 after a
/// shutdown or the end of the host connection, 1 on a start-up failure, 2 on bad arguments.
pub fn main_entry() -> i32 {
    let given: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let Some(task) = tasks::parse(&given) {
        init_logging();
        return match task {
            Ok(task) => tasks::run(&task),
            Err(e) => {
                tracing::error!("{e}");
                2
            }
        };
    }
    let args = match args::parse(std::env::args_os().skip(1)) {
        Ok(args) => args,
        Err(ArgsError::Help) => {
            report_usage(None);
            return 0;
        }
        Err(e) => {
            report_usage(Some(&e));
            return 2;
        }
    };
    init_logging();
    if args.guest {
        guest::reached("init started");
        // Refused outside a VM's init: it would mount over the host's root.
        if !rustix::process::getpid().is_init() {
            tracing::error!("--guest is only for the init of a microVM");
            return 2;
        }
        let entered = guest::enter_root(args.workdir.as_deref(), &args.shares, args.layer_disk)
            .and_then(|()| match &args.trust_bundle {
                Some(trust) => guest::trust_bundle(trust),
                None => Ok(()),
            })
            .and_then(|()| match &args.net {
                Some(net) => guest::network_up(net, &args.nameservers),
                None => Ok(()),
            });
        if entered.is_ok() && args.net.is_some() {
            guest::reached("network configured");
        }
        if let Err(e) = entered {
            guest::log_steps();
            tracing::error!("{e}");
            guest::power_off();
        }
    }
    // Before any other thread exists: a filter binds the thread that installs it and the
    // threads and processes it starts afterwards.
    if let Some(filters) = &args.seccomp
        && let Err(e) = seccomp::install_from(filters)
    {
        tracing::error!(
            "cannot install the seccomp filters of {}: {e}",
            filters.display()
        );
        return 1;
    }
    let code = serve(args.clone());
    if args.guest {
        guest::power_off();
    }
    code
}

/// Runs the agent's event loop with `args`; returns the process exit code.
fn serve(args: args::Args) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return 1;
        }
    };
    if args.guest {
        guest::reached("runtime built");
    }
    runtime.block_on(run(args))
}

#[allow(
    clippy::print_stderr,
    reason = "bad arguments are reported before logging is set up, and must always be shown"
)]
fn report_usage(error: Option<&ArgsError>) {
    match error {
        Some(error) => eprintln!("ak-agent: {error}\n{}", args::USAGE),
        None => eprintln!("{}", args::USAGE),
    }
}

fn init_logging() {
    // A level, not an `EnvFilter`: per-target filters are not worth their code in every
    // idle sandbox (the filter's regex engine alone was a fifth of the agent's resident
    // memory).
    let filter = std::env::var(LOG_ENV)
        .ok()
        .and_then(|level| {
            level
                .parse::<tracing_subscriber::filter::LevelFilter>()
                .ok()
        })
        .unwrap_or(tracing_subscriber::filter::LevelFilter::WARN);
    // Fails only if a subscriber is already set, which then keeps logging.
    let _ = tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

async fn run(args: args::Args) -> i32 {
    // Commands run as the same uid as the agent: without this they could read its memory
    // (/proc/1/mem where ptrace_scope allows) and speak for it to the host.
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        tracing::warn!("cannot make the agent undumpable: {e}");
    }
    // Held, never used, until the process exits: the host's liveness lock lives on it.
    let _held = match args.hold_fd.map(listener::adopt_open_fd).transpose() {
        Ok(held) => held,
        Err(e) => {
            tracing::error!("cannot keep the descriptor given with --hold-fd: {e}");
            return 1;
        }
    };
    if let Some(dir) = &args.workdir
        && let Err(e) = std::env::set_current_dir(dir)
    {
        tracing::error!("cannot change to the workdir {}: {e}", dir.display());
        return 1;
    }
    let workdir = match std::env::current_dir() {
        Ok(dir) => dir,
        Err(e) => {
            tracing::error!("cannot determine the working directory: {e}");
            return 1;
        }
    };
    // Before the agent is ready: its first command's start should not pay for it.
    spawn::prepare_oom_preference();
    let pid1 = rustix::process::getpid().is_init();
    // Orphaned grandchildren are re-parented to the agent instead of escaping to an
    // outer init, so they stay inside the agent's control (and get reaped by it).
    // The argument is the flag: any non-zero value (here our pid) turns it on; `None` would
    // turn it off.
    let subreaper = match rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        Ok(()) => true,
        Err(errno) => {
            tracing::warn!("cannot become a child subreaper: {errno}");
            false
        }
    };
    // A subreaper inherits orphans just like PID 1 does; left unreaped they would stay
    // zombies, so the binary reaps every child either way.
    let reap = if pid1 || subreaper {
        ReapPolicy::All
    } else {
        ReapPolicy::Tracked
    };
    let config = AgentConfig {
        root: PathBuf::from("/"),
        workdir,
        reap,
    };
    let agent = match Agent::start(config) {
        Ok(agent) => agent,
        Err(e) => {
            tracing::error!("cannot start the agent: {e}");
            return 1;
        }
    };
    if pid1 && let Err(e) = signals::forward_signals(agent.clone()) {
        tracing::warn!("cannot install the signal handlers of PID 1: {e}");
    }
    if args.guest {
        guest::reached("agent started");
    }
    match args.mode {
        Mode::Fd(fd) => listener::serve_fd(agent, fd).await,
        Mode::Listen(path) => listener::serve_listener(agent, &path).await,
        Mode::ListenOnce(path) => listener::serve_one_at(agent, &path).await,
        Mode::ListenFd(fd) => listener::serve_listen_fd(agent, fd).await,
        Mode::Vsock(port) => listener::serve_vsock(agent, port, false, args.ready_port).await,
        Mode::VsockOnce(port) => listener::serve_vsock(agent, port, true, args.ready_port).await,
        Mode::VsockConnect(port) => listener::serve_vsock_connect(agent, port).await,
        Mode::Serial(ports) => serial::serve_serial(agent, ports, false).await,
        Mode::SerialOnce => serial::serve_serial(agent, 1, true).await,
    }
}
