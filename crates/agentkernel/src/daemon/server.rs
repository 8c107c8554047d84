//! The daemon process: accepts requests on its socket, hands out pool sandboxes, keeps the
//! pools topped up, and stops gracefully.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ak_core::SandboxSpec;
use ak_core::config::SandboxOptions;
use ak_server::{ApiConfig, AppState, Bound, Listen};
use ak_service::Service;
use anyhow::{Context, bail};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::UnixStream;

use super::{DaemonStatus, MAX_MESSAGE, Request, Response};

/// How often used sandboxes are released and pools topped up.
const MAINTAIN_EVERY: Duration = Duration::from_millis(50);
/// How often named sandboxes whose time to live ran out are removed.
const REAP_EVERY: Duration = Duration::from_secs(5);
/// How long `stop` waits for handed-out commands before ending them.
const STOP_GRACE: Duration = Duration::from_secs(10);

struct Daemon {
    /// The one service: its pools, the CLI's requests (as the local caller) and the HTTP
    /// API (as the API caller).
    service: Arc<Service>,
    started: Instant,
    stop: tokio::sync::Notify,
}

/// Runs the daemon on `socket` until asked to stop, with the HTTP API on `api_socket`,
/// over `service` (which keeps the warm pools).
pub async fn serve(socket: &Path, api_socket: &Path, service: Service) -> anyhow::Result<()> {
    let Some(pools) = service.pools().cloned() else {
        bail!("the daemon's service keeps no pools");
    };
    if socket.exists() {
        if super::client::call(socket, &Request::Status).is_ok() {
            bail!("a daemon is already running at {}", socket.display());
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("remove stale {}", socket.display()))?;
    }
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    // Mode 0600 from the moment the socket exists, not only after a chmod.
    let listener = ak_server::bind_private_socket(socket)?;
    tracing::info!("daemon listening on {}", socket.display());

    let daemon = Arc::new(Daemon {
        service: Arc::new(service),
        started: Instant::now(),
        stop: tokio::sync::Notify::new(),
    });
    // The same HTTP API as `agentkernel serve`, over the daemon's service and pools, on a
    // socket only this user can reach (0600), so it needs no token.
    let api_state = AppState::new(
        daemon.service.clone(),
        ApiConfig {
            // The user's settings only: one daemon serves every project.
            base_options: crate::wiring::settings()
                .user_only()
                .sandbox_options(SandboxOptions::default()),
            ..ApiConfig::default()
        },
    );
    let api = Bound::bind(&Listen::Unix(api_socket.to_path_buf()), None).await?;
    tracing::info!("daemon serving the HTTP API on {}", api.address());
    let (api_stop, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api_task = tokio::spawn(api.serve(api_state, async move {
        let _ = api_stopped.await;
    }));
    // Refills and releases run beside the request loop, so that a hit never waits for
    // a sandbox being built or torn down.
    // Stopped between passes, never inside one: a pass cut off mid-way could leave a
    // sandbox half built (a container created but not started) that nobody releases.
    let stop_maintenance = Arc::new(tokio::sync::Notify::new());
    let maintainer = tokio::spawn(daemon.service.clone().maintain_until(
        MAINTAIN_EVERY,
        REAP_EVERY,
        stop_maintenance.clone(),
    ));
    // SIGTERM and SIGINT stop the daemon as gracefully as `daemon stop` does.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    // The accept loop is a task of its own, not this function's (which the main thread
    // drives outside the workers): a request's task then starts on the worker that
    // accepted it, with no hop to and from the main thread (sched traces: 6 context
    // switches and ~0.26 ms per hand-out before).
    let accepting = tokio::spawn({
        let daemon = daemon.clone();
        async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            let daemon = daemon.clone();
                            tokio::spawn(async move {
                                if let Err(e) = handle(&daemon, stream).await {
                                    tracing::warn!("daemon request failed: {e:#}");
                                }
                            });
                        }
                        Err(e) => tracing::warn!("accept: {e}"),
                    },
                    _ = daemon.stop.notified() => break,
                    _ = terminate.recv() => break,
                    _ = interrupt.recv() => break,
                }
            }
        }
    });
    if let Err(error) = accepting.await {
        tracing::warn!("the daemon's accept loop ended abnormally: {error}");
    }
    let _ = api_stop.send(());
    // Requests in flight (a long stream) get the same grace as handed-out sandboxes.
    match tokio::time::timeout(STOP_GRACE, api_task).await {
        Ok(Ok(Err(error))) => tracing::warn!("the HTTP API stopped with an error: {error}"),
        Ok(_) => {}
        Err(_) => tracing::warn!("HTTP requests still running after {STOP_GRACE:?}; ending them"),
    }
    // `notify_one` keeps the wake-up for a pass in progress: the loop ends right after it.
    stop_maintenance.notify_one();
    let _ = maintainer.await;
    daemon.service.shutdown(STOP_GRACE).await;
    drop(pools);
    // Last: `daemon stop` waits for the socket to go, so it returns once all is released.
    let _ = std::fs::remove_file(socket);
    tracing::info!("daemon stopped");
    Ok(())
}

async fn handle(daemon: &Daemon, stream: UnixStream) -> anyhow::Result<()> {
    // Only our own user may use the daemon (the socket is 0600; this also covers root).
    let peer = stream.peer_cred().context("peer credentials")?;
    let me = rustix::process::geteuid().as_raw();
    if peer.uid() != me {
        bail!("refused a connection from uid {}", peer.uid());
    }
    let mut reader = BufReader::new(stream).take(MAX_MESSAGE as u64);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .await
        .context("read the request")?;
    let stream = reader.into_inner().into_inner();
    let request: Request = match serde_json::from_str(&line) {
        Ok(request) => request,
        Err(e) => {
            return reply(
                &stream,
                &Response::Error {
                    message: format!("malformed request: {e}"),
                    code: crate::exit::USAGE,
                },
                None,
            )
            .await;
        }
    };
    match request {
        Request::Acquire { spec } => acquire(daemon, &stream, &spec).await,
        Request::Status => {
            let status = DaemonStatus {
                pid: std::process::id(),
                uptime_s: daemon.started.elapsed().as_secs(),
                pools: pools_status(daemon),
            };
            reply(&stream, &Response::Status(status), None).await
        }
        Request::Stop => {
            reply(&stream, &Response::Stopping, None).await?;
            daemon.stop.notify_one();
            Ok(())
        }
        named => {
            let (response, connection) = super::named::answer(&daemon.service, named).await;
            reply(&stream, &response, connection).await
        }
    }
}

fn pools_status(daemon: &Daemon) -> Vec<ak_service::pool::PoolStatus> {
    daemon
        .service
        .pools()
        .map(|pools| pools.status())
        .unwrap_or_default()
}

async fn acquire(daemon: &Daemon, stream: &UnixStream, spec: &SandboxSpec) -> anyhow::Result<()> {
    let Some(pools) = daemon.service.pools() else {
        let error = ak_service::ServiceError::Unavailable("the daemon keeps no pools".into());
        return reply(stream, &super::named::failure(error), None).await;
    };
    match pools.acquire(&daemon.service, spec).await {
        Ok(handed) => {
            let response = Response::Acquired {
                sandbox_id: handed.sandbox_id,
                hit: handed.hit,
            };
            reply(stream, &response, Some(handed.transport)).await
        }
        Err(error) => reply(stream, &super::named::failure(error), None).await,
    }
}

/// Writes one JSON line, with `fd` attached when given. Our copy of `fd` closes here, so
/// the caller's becomes the only one.
async fn reply(
    stream: &UnixStream,
    response: &Response,
    fd: Option<OwnedFd>,
) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(response)?;
    line.push(b'\n');
    let mut sent = 0;
    if let Some(fd) = fd {
        stream.writable().await?;
        let fds = [fd.as_fd()];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut ancillary = SendAncillaryBuffer::new(&mut space);
        ancillary.push(SendAncillaryMessage::ScmRights(&fds));
        sent = sendmsg(
            stream,
            &[std::io::IoSlice::new(&line)],
            &mut ancillary,
            SendFlags::NOSIGNAL,
        )
        .context("send the sandbox connection")?;
    }
    let mut rest = &line[sent..];
    while !rest.is_empty() {
        stream.writable().await?;
        match stream.try_write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_unknown_fields_are_refused() {
        let line = serde_json::to_string(&Request::Status).unwrap();
        assert!(matches!(
            serde_json::from_str(&line).unwrap(),
            Request::Status
        ));
        assert!(serde_json::from_str::<Request>("{\"acquire\":{\"spec\":{},\"x\":1}}").is_err());
        assert!(serde_json::from_str::<Request>("\"reboot\"").is_err());
    }
}
