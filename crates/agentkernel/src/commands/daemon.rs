//! `agentkernel daemon start|status|stop`.

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ak_service::PoolConfig;
use anyhow::{Context, anyhow};

use super::say;
use crate::cli::DaemonCommand;
use crate::daemon::{Request, Response, api_socket_path, client, log_path, server, socket_path};
use crate::exit;
use crate::wiring;

pub async fn daemon(command: DaemonCommand) -> i32 {
    let result = match command {
        DaemonCommand::Start { foreground: true } => {
            match pool_config().and_then(wiring::serving_service) {
                Ok(service) => server::serve(&socket_path(), &api_socket_path(), service).await,
                Err(error) => exit::fail(exit::USAGE, &error.into()),
            }
        }
        DaemonCommand::Start { foreground: false } => start_background(),
        DaemonCommand::Status { json } => status(json),
        DaemonCommand::Stop => stop(),
    };
    match result {
        Ok(()) => 0,
        Err(error) => {
            exit::report(&error);
            1
        }
    }
}

/// Pool sizes: the user's `[daemon]` settings over the defaults.
pub(crate) fn pool_config() -> Result<PoolConfig, ak_core::ConfigError> {
    let options = wiring::settings().daemon()?;
    let defaults = PoolConfig::default();
    Ok(PoolConfig {
        min_warm: options.min_warm.unwrap_or(defaults.min_warm),
        max_warm: options
            .max_warm
            .unwrap_or(defaults.max_warm.max(options.min_warm.unwrap_or(0))),
        max_total: options.max_total.unwrap_or(defaults.max_total),
    })
}

/// Starts `agentkernel daemon start --foreground` in its own session, logging to the state
/// directory, and waits until it answers.
fn start_background() -> anyhow::Result<()> {
    // Bad settings are reported here, not only in the daemon's log.
    pool_config()?;
    let socket = socket_path();
    if let Ok((Response::Status(status), _)) = client::call(&socket, &Request::Status) {
        return Err(anyhow!("a daemon is already running (pid {})", status.pid));
    }
    let log = log_path();
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("open {}", log.display()))?;
    let server = crate::wiring::server_path();
    let mut command = std::process::Command::new(&server);
    command
        .args(["daemon", "start", "--foreground"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    // SAFETY: setsid is async-signal-safe; the daemon must not share our terminal session.
    unsafe {
        command.pre_exec(|| rustix::process::setsid().map(drop).map_err(Into::into));
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("start the daemon ({})", server.display()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok((Response::Status(status), _)) = client::call(&socket, &Request::Status) {
            say(&format!("daemon started (pid {})", status.pid));
            return Ok(());
        }
        if let Ok(Some(code)) = child.try_wait() {
            return Err(anyhow!(
                "the daemon exited at start ({code}); see {}",
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(anyhow!(
        "the daemon did not answer within 10 s; see {}",
        log.display()
    ))
}

fn status(json: bool) -> anyhow::Result<()> {
    let status = match client::call(&socket_path(), &Request::Status)? {
        (Response::Status(status), _) => status,
        (other, _) => return Err(anyhow!("unexpected answer: {other:?}")),
    };
    if json {
        say(&serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let mut out = format!("daemon pid {}, up {} s\n", status.pid, status.uptime_s);
    out.push_str(&format!(
        "{:<5} {:<7} {:<9} {:<7} {:<8} {:<6} {:<7} {:<7} {:<6} {:<7} {:<11} {:<10} POOL\n",
        "WARM",
        "TARGET",
        "BUILDING",
        "IN USE",
        "CREATED",
        "HITS",
        "JOINED",
        "MISSES",
        "HIT %",
        "REQ/s",
        "HANDOUT ms",
        "REFILL ms"
    ));
    for pool in &status.pools {
        let refill = pool
            .refill_ms
            .map_or("-".to_string(), |ms| format!("{ms:.2}"));
        out.push_str(&format!(
            "{:<5} {:<7} {:<9} {:<7} {:<8} {:<6} {:<7} {:<7} {:<6.1} {:<7.1} {:<11.3} {:<10} {}\n",
            pool.warm,
            pool.target,
            pool.building,
            pool.in_use,
            pool.created,
            pool.hits,
            pool.joined,
            pool.misses,
            pool.hit_rate * 100.0,
            pool.requests_per_s,
            pool.average_handout_ms,
            refill,
            pool.pool
        ));
        if let Some(error) = &pool.last_error {
            let retry = pool
                .retry_in_ms
                .map_or(String::new(), |ms| format!(" (next try in {ms} ms)"));
            out.push_str(&format!("      cannot build a spare{retry}: {error}\n"));
        }
    }
    say(out.trim_end());
    Ok(())
}

fn stop() -> anyhow::Result<()> {
    let socket = socket_path();
    client::call(&socket, &Request::Stop)?;
    // The daemon removes its socket once every pool sandbox is released.
    let deadline = Instant::now() + Duration::from_secs(30);
    while socket.exists() {
        if Instant::now() >= deadline {
            return Err(anyhow!(
                "the daemon did not finish stopping within 30 s; see {}",
                log_path().display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    say("daemon stopped");
    Ok(())
}
