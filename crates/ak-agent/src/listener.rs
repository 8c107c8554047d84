//! Where connections come from: one inherited socket (`--fd`), a listener the agent
//! creates (`--listen`), one the host created and handed over (`--listen-fd`), or a vsock
//! port inside a microVM (`--vsock`).

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Duration;

use rustix::io::FdFlags;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_vsock::{VMADDR_CID_ANY, VMADDR_CID_HOST, VsockAddr, VsockListener, VsockStream};

use crate::agent::Agent;

/// How long open connections get to finish (flush the reply to `Shutdown`) at exit.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves the one connection on inherited fd `fd`; returns the exit code.
pub(crate) async fn serve_fd(agent: Agent, fd: i32) -> i32 {
    let stream = match adopt_socket(fd) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::error!("cannot use fd {fd} as the host connection: {e}");
            return 1;
        }
    };
    agent.serve_connection(stream).await;
    // The host is gone (or asked to shut down): nobody is left to report to.
    agent.shutdown();
    0
}

/// Takes ownership of the inherited connection.
fn adopt_socket(fd: i32) -> std::io::Result<UnixStream> {
    let fd = adopt_fd(fd)?;
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(true)?;
    UnixStream::from_std(stream)
}

/// Takes ownership of inherited socket `fd` and makes it close-on-exec.
fn adopt_fd(fd: i32) -> std::io::Result<OwnedFd> {
    let fd = adopt_open_fd(fd)?;
    let stat = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a socket",
        ));
    }
    Ok(fd)
}

/// Takes ownership of inherited descriptor `fd` (of any kind) and makes it close-on-exec.
pub(crate) fn adopt_open_fd(fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: F_GETFD only inspects the descriptor table; an fd number that is not open
    // just yields EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd is open (checked above) and was handed to this process on its command
    // line for exactly this use; nothing else in the process knows of it, so this is its
    // only owner.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Inherited fds are usually not close-on-exec: commands must not get the host's.
    rustix::io::fcntl_setfd(&fd, FdFlags::CLOEXEC)?;
    Ok(fd)
}

/// Takes ownership of an inherited, listening Unix stream socket.
fn adopt_listener(fd: i32) -> std::io::Result<UnixListener> {
    let fd = adopt_fd(fd)?;
    let invalid = |what| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    if rustix::net::sockopt::socket_domain(&fd)? != rustix::net::AddressFamily::UNIX {
        return Err(invalid("not a Unix socket"));
    }
    if !rustix::net::sockopt::socket_acceptconn(&fd)? {
        return Err(invalid("not a listening socket"));
    }
    let listener = std::os::unix::net::UnixListener::from(fd);
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}

/// Accepts connections on the listening socket inherited as `fd` until a shutdown; returns
/// the exit code. The socket file, if any, is the host's to remove.
pub(crate) async fn serve_listen_fd(agent: Agent, fd: i32) -> i32 {
    match adopt_listener(fd) {
        Ok(listener) => {
            accept_loop(agent, listener).await;
            0
        }
        Err(e) => {
            tracing::error!("cannot use fd {fd} as the listening socket: {e}");
            1
        }
    }
}

/// Accepts connections at `path` until a shutdown; returns the exit code.
pub(crate) async fn serve_listener(agent: Agent, path: &Path) -> i32 {
    let listener = match bind(path) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("cannot listen on {}: {e}", path.display());
            return 1;
        }
    };
    accept_loop(agent, listener).await;
    if let Err(e) = std::fs::remove_file(path) {
        tracing::debug!("cannot remove {}: {e}", path.display());
    }
    0
}

/// Accepts one connection at `path`, removes the socket file (nobody else may connect),
/// serves that connection and ends with it; returns the exit code.
pub(crate) async fn serve_one_at(agent: Agent, path: &Path) -> i32 {
    let listener = match bind(path) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("cannot listen on {}: {e}", path.display());
            return 1;
        }
    };
    let accepted = listener.accept().await;
    drop(listener);
    if let Err(e) = std::fs::remove_file(path) {
        tracing::debug!("cannot remove {}: {e}", path.display());
    }
    match accepted {
        Ok((stream, _)) => {
            agent.serve_connection(stream).await;
            agent.shutdown();
            0
        }
        Err(e) => {
            tracing::error!("cannot accept the host's connection: {e}");
            1
        }
    }
}

/// A listening socket of either kind.
trait Acceptor {
    type Stream: AsyncRead + AsyncWrite + Send + 'static;
    async fn accept_one(&self) -> std::io::Result<Self::Stream>;
}

impl Acceptor for UnixListener {
    type Stream = UnixStream;
    async fn accept_one(&self) -> std::io::Result<UnixStream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

impl Acceptor for VsockListener {
    type Stream = VsockStream;
    async fn accept_one(&self) -> std::io::Result<VsockStream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// Listens on vsock `port` (any CID: the VM's own), tells the host on `ready_port` that it
/// does, then serves every connection (`once`: exactly one, ending with it); returns the
/// exit code.
pub(crate) async fn serve_vsock(
    agent: Agent,
    port: u32,
    once: bool,
    ready_port: Option<u32>,
) -> i32 {
    let listener = match VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port)) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("cannot listen on vsock port {port}: {e}");
            return 1;
        }
    };
    if let Some(ready_port) = ready_port {
        crate::guest::reached("listening on vsock");
        // The host listens for this before it starts the VM; the connection itself is the
        // message.
        match VsockStream::connect(VsockAddr::new(VMADDR_CID_HOST, ready_port)).await {
            Ok(stream) => {
                drop(stream);
                crate::guest::reached("ready connection made");
                crate::guest::log_steps();
            }
            Err(e) => {
                tracing::error!(
                    "cannot tell the host (vsock port {ready_port}) that the agent is ready: {e}"
                );
                return 1;
            }
        }
    }
    if !once {
        accept_loop(agent, listener).await;
        return 0;
    }
    match listener.accept_one().await {
        Ok(stream) => {
            drop(listener);
            agent.serve_connection(stream).await;
            agent.shutdown();
            0
        }
        Err(e) => {
            tracing::error!("cannot accept the host's connection: {e}");
            1
        }
    }
}

/// Connects to the host's vsock `port` and serves that one connection, then shuts the
/// agent down (`--vsock-connect`).
pub(crate) async fn serve_vsock_connect(agent: Agent, port: u32) -> i32 {
    match VsockStream::connect(VsockAddr::new(VMADDR_CID_HOST, port)).await {
        Ok(stream) => {
            crate::guest::reached("connected to the host");
            crate::guest::log_steps();
            agent.serve_connection(stream).await;
            agent.shutdown();
            0
        }
        Err(e) => {
            tracing::error!("cannot connect to the host (vsock port {port}): {e}");
            1
        }
    }
}

/// Serves every connection `listener` accepts, each on its own task, until a shutdown;
/// then stops accepting and gives open connections a moment to finish.
async fn accept_loop<L: Acceptor>(agent: Agent, listener: L) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept_one() => match accepted {
                Ok(stream) => {
                    let agent = agent.clone();
                    connections.spawn(async move { agent.serve_connection(stream).await });
                }
                Err(e) => {
                    tracing::warn!("cannot accept a connection: {e}");
                    // Out of fds, typically: give connections time to end instead of spinning.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done {
                    tracing::error!("a connection task failed: {e}");
                }
            }
            () = agent.shutdown_requested() => break,
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::debug!("connections still open at exit");
    }
}

/// Binds `path`, replacing a stale socket file left by an earlier agent (but never any
/// other kind of file). The socket is bound and listening under a temporary name first and
/// then renamed into place, so whoever sees `path` appear can connect at once.
fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let mut staged_name = std::ffi::OsString::from(".");
    staged_name.push(file_name);
    staged_name.push(format!(".{}", std::process::id()));
    let staged = path.with_file_name(staged_name);
    let _ = std::fs::remove_file(&staged);
    let listener = UnixListener::bind(&staged)?;
    if let Err(e) = std::fs::rename(&staged, path) {
        let _ = std::fs::remove_file(&staged);
        return Err(e);
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_sockets_are_replaced_other_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        drop(bind(&path).unwrap());
        assert!(
            path.exists(),
            "the socket file stays after the listener is dropped"
        );
        drop(bind(&path).unwrap());
        let file = dir.path().join("file");
        std::fs::write(&file, "data").unwrap();
        assert!(bind(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"data");
    }

    #[test]
    fn adopt_refuses_closed_and_non_socket_fds() {
        assert!(adopt_socket(987_654).is_err());
        let file = tempfile::tempfile().unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
        assert!(adopt_socket(fd).is_err());
    }

    #[tokio::test]
    async fn adopt_listener_refuses_sockets_that_do_not_listen() {
        use std::os::fd::IntoRawFd;
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let error = adopt_listener(a.into_raw_fd()).unwrap_err();
        assert!(
            error.to_string().contains("not a listening socket"),
            "{error}"
        );
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let error = adopt_listener(udp.into_raw_fd()).unwrap_err();
        assert!(error.to_string().contains("not a Unix socket"), "{error}");
        assert!(adopt_listener(987_654).is_err());
    }

    #[tokio::test]
    async fn an_inherited_listener_serves_many_connections_until_shutdown() {
        use ak_protocol::AgentClient;
        use std::os::fd::IntoRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let agent = Agent::start(crate::AgentConfig::new(dir.path())).unwrap();
        let served = tokio::spawn(serve_listen_fd(agent, listener.into_raw_fd()));
        let connect = || async {
            let stream = UnixStream::connect(&path).await.unwrap();
            AgentClient::connect(stream, "test".into()).await.unwrap()
        };
        let (first, second) = (connect().await, connect().await);
        assert!(!first.ping().await.unwrap().is_empty());
        assert!(!second.ping().await.unwrap().is_empty());
        drop(first);
        // A connection ending does not end the agent; a shutdown from any one does.
        let third = connect().await;
        third.shutdown().await.unwrap();
        assert_eq!(served.await.unwrap(), 0);
        assert!(path.exists(), "the host's socket file is left to the host");
    }
}
