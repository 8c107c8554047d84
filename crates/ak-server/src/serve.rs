//! Binding the API to a TCP address or a Unix socket and serving it until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::auth::{TokenCheck, check_listen_address};
use crate::{AppState, router};

/// How long a client may take to send a request's head, counted from when the server
/// waits for one: on a new connection and after each answer on a kept-alive one. It is
/// also the idle (keep-alive) timeout, since hyper runs the same timer while a kept-alive
/// connection waits for its next request. Without it a client that connects and sends
/// nothing (or a byte a minute) holds a task and a descriptor for ever.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the accept loop pauses after a failed accept (out of descriptors, mostly),
/// instead of spinning on the same error until a descriptor is freed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Where to listen.
#[derive(Debug, Clone)]
pub enum Listen {
    /// A TCP address; it needs a token.
    Tcp(SocketAddr),
    /// A loopback TCP address without a token (`--insecure-no-auth`): every local user may
    /// use it. Refused for any other address.
    TcpNoAuth(SocketAddr),
    /// A Unix socket, created with mode 0600 (only this user may connect).
    Unix(PathBuf),
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Token(#[from] TokenCheck),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("{0} is in use by a running server")]
    SocketInUse(PathBuf),
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
}

/// A bound listener, not serving yet.
#[derive(Debug)]
pub enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Bound {
    /// Binds `listen`; TCP needs `token` (see [`check_listen_address`]).
    pub async fn bind(listen: &Listen, token: Option<&str>) -> Result<Bound, ServeError> {
        let address = match listen {
            Listen::Tcp(address) => {
                check_listen_address(*address, token, false)?;
                address
            }
            Listen::TcpNoAuth(address) => {
                check_listen_address(*address, token, true)?;
                address
            }
            Listen::Unix(path) => {
                if token == Some("") {
                    return Err(TokenCheck::EmptyToken.into());
                }
                return Ok(Bound::Unix(bind_private_socket(path)?, path.clone()));
            }
        };
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| ServeError::Bind {
                address: address.to_string(),
                source,
            })?;
        Ok(Bound::Tcp(listener))
    }

    /// The URL (TCP) or path (Unix socket) clients use.
    pub fn address(&self) -> String {
        match self {
            Bound::Tcp(listener) => match listener.local_addr() {
                Ok(address) => format!("http://{address}"),
                Err(_) => "http://(unknown address)".into(),
            },
            Bound::Unix(_, path) => path.display().to_string(),
        }
    }

    /// Serves the API until `shutdown` resolves; requests in flight are finished first.
    pub async fn serve(
        self,
        state: AppState,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let header_read_timeout = state.config.header_read_timeout;
        let app = router(state);
        match self {
            Bound::Tcp(listener) => {
                let listener = &listener;
                let accept = move || async move { listener.accept().await.map(|(s, _)| s) };
                serve_connections(accept, app, header_read_timeout, shutdown).await;
                Ok(())
            }
            Bound::Unix(listener, path) => {
                let listener = &listener;
                let accept = move || async move { listener.accept().await.map(|(s, _)| s) };
                serve_connections(accept, app, header_read_timeout, shutdown).await;
                let _ = std::fs::remove_file(&path);
                Ok(())
            }
        }
    }
}

/// Accepts connections and serves each with hyper until `shutdown`, then lets every open
/// connection finish the request it is in (idle ones close at once). Served by hand
/// rather than by `axum::serve`, which offers no header-read timeout.
async fn serve_connections<S, A, F>(
    mut accept: A,
    app: axum::Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: FnMut() -> F,
    F: Future<Output = std::io::Result<S>>,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = accept() => match accepted {
                Ok(stream) => stream,
                // One client's connection failing on the way in concerns only that client.
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    tracing::warn!("accepting a connection: {error}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that goes away or times out is its own business, not an error here.
            if let Err(error) = connection.await {
                tracing::debug!("connection ended: {error}");
            }
        });
    }
    graceful.shutdown().await;
}

fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

/// Binds a Unix socket that is mode 0600 from the moment `path` exists: bound in a fresh
/// directory only this user can enter, made 0600 there, then hard-linked to `path`.
///
/// Not by setting the umask around `bind`: the umask is the whole process's, and while it
/// is narrowed other threads (the runtime's workers, already creating sandbox
/// directories) would make their files with the wrong modes. Not by `chmod` after `bind`
/// at `path`: between the two anyone may connect. `link` also never replaces a socket
/// another server bound meanwhile. Called within a Tokio runtime.
pub fn bind_private_socket(path: &Path) -> Result<UnixListener, ServeError> {
    remove_stale_socket(path)?;
    let bind_error = |source| ServeError::Bind {
        address: path.display().to_string(),
        source,
    };
    let staged = PrivateDir::beside(path).map_err(bind_error)?;
    let listener = UnixListener::bind(&staged.socket).map_err(bind_error)?;
    std::fs::set_permissions(&staged.socket, std::fs::Permissions::from_mode(0o600))
        .map_err(bind_error)?;
    std::fs::hard_link(&staged.socket, path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            ServeError::SocketInUse(path.to_path_buf())
        } else {
            bind_error(error)
        }
    })?;
    Ok(listener)
}

/// A fresh directory (mode 0700) beside a socket's final path, to bind it in; removed, with
/// the socket's name in it, when dropped (a bound listener stays open without its name).
#[derive(Debug)]
struct PrivateDir {
    dir: PathBuf,
    /// Where to bind in it.
    socket: PathBuf,
}

impl PrivateDir {
    fn beside(path: &Path) -> std::io::Result<PrivateDir> {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // Short names: a socket's whole path must fit in 108 bytes.
        let unique = ak_core::random::uuid_v4().simple().to_string();
        let dir = parent.join(format!(".ak-{}", &unique[..12]));
        // mkdir sets the mode itself; a umask can only narrow it.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(PrivateDir {
            socket: dir.join("s"),
            dir,
        })
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A socket left by a server that is gone is removed; one that answers is in use.
fn remove_stale_socket(path: &Path) -> Result<(), ServeError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket(path.to_path_buf()));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ServeError::SocketInUse(path.to_path_buf()));
    }
    std::fs::remove_file(path).map_err(|source| ServeError::Bind {
        address: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::mem::MaybeUninit;
    use std::sync::Arc;
    use std::time::Instant;

    use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

    use super::*;
    use crate::ApiConfig;

    const TOKEN: &str = "serve-test-token";

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_socket_is_private_from_the_moment_it_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        // Where it is bound first: a directory only this user can enter, so that the
        // socket's default mode there (umask) gives nobody a chance to connect.
        let staged = PrivateDir::beside(&path).unwrap();
        assert_eq!(mode(&staged.dir), 0o700);
        assert_eq!(staged.dir.parent(), Some(dir.path()));
        drop(staged);
        assert!(
            names_in(dir.path()).is_empty(),
            "the staging directory is left"
        );

        let listener = bind_private_socket(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        // Only the socket, no staging directory beside it.
        assert_eq!(names_in(dir.path()), ["api.sock"]);
        // The name linked into place is the bound socket itself.
        let client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        assert!(listener.accept().await.is_ok());
        drop(client);
        // A second server finds it in use, and leaves it alone.
        assert!(matches!(
            bind_private_socket(&path),
            Err(ServeError::SocketInUse(_))
        ));
        assert_eq!(names_in(dir.path()), ["api.sock"]);
        // Once the first is gone, its socket is stale and replaced.
        drop(listener);
        let _again = bind_private_socket(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
    }

    /// What happened to `name` in `dir` while `make` ran: inotify's events on it, in order.
    fn events_on(dir: &Path, name: &str, make: impl FnOnce()) -> Vec<ReadFlags> {
        let watch = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).unwrap();
        inotify::add_watch(&watch, dir, WatchFlags::CREATE | WatchFlags::ATTRIB).unwrap();
        make();
        let mut buffer = [MaybeUninit::uninit(); 4096];
        let mut reader = inotify::Reader::new(&watch, &mut buffer);
        let mut events = Vec::new();
        loop {
            match reader.next() {
                Ok(event) => {
                    if event
                        .file_name()
                        .is_some_and(|n| n.to_bytes() == name.as_bytes())
                    {
                        events.push(event.events());
                    }
                }
                Err(rustix::io::Errno::AGAIN) => return events,
                Err(error) => panic!("reading inotify events: {error}"),
            }
        }
    }

    #[tokio::test]
    async fn a_socket_needs_no_chmod_once_at_its_path() {
        let dir = tempfile::tempdir().unwrap();
        // What the watch sees of a socket bound at its path and chmod-ed after: created
        // with the umask's mode (anyone could connect), then changed.
        let late = events_on(dir.path(), "late.sock", || {
            let path = dir.path().join("late.sock");
            let _listener = UnixListener::bind(&path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        });
        assert_eq!(late, [ReadFlags::CREATE, ReadFlags::ATTRIB]);
        // Ours appears once, already 0600, and is never changed after.
        let path = dir.path().join("api.sock");
        let mut listener = None;
        let ours = events_on(dir.path(), "api.sock", || {
            listener = Some(bind_private_socket(&path).unwrap());
        });
        assert_eq!(ours, [ReadFlags::CREATE]);
        assert_eq!(mode(&path), 0o600);
    }

    #[tokio::test]
    async fn a_file_in_the_way_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        std::fs::write(&path, "data").unwrap();
        assert!(matches!(
            bind_private_socket(&path),
            Err(ServeError::NotASocket(_))
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
    }

    /// A server on loopback whose connections must send a request's head within `timeout`.
    async fn server(timeout: Duration) -> (SocketAddr, tempfile::TempDir) {
        let state = tempfile::tempdir().unwrap();
        let service = Arc::new(ak_service::Service::new(
            Vec::new(),
            state.path().join("registry.db"),
        ));
        let config = ApiConfig {
            token: Some(TOKEN.into()),
            header_read_timeout: timeout,
            ..ApiConfig::default()
        };
        let bound = Bound::bind(&Listen::Tcp("127.0.0.1:0".parse().unwrap()), Some(TOKEN))
            .await
            .unwrap();
        let Bound::Tcp(listener) = &bound else {
            unreachable!("bound to TCP")
        };
        let address = listener.local_addr().unwrap();
        let state_ = AppState::new(service, config);
        tokio::spawn(bound.serve(state_, std::future::pending()));
        (address, state)
    }

    /// Reads until the server closes the connection; what it sent, and how long that took.
    fn until_closed(mut stream: std::net::TcpStream) -> (String, Duration) {
        let begun = Instant::now();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut seen = Vec::new();
        let mut buffer = [0; 4096];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => seen.extend_from_slice(&buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!(
                    "the connection is still open after {:?} ({e}); read: {}",
                    begun.elapsed(),
                    String::from_utf8_lossy(&seen)
                ),
            }
        }
        (String::from_utf8_lossy(&seen).into_owned(), begun.elapsed())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_and_slow_clients_are_disconnected() {
        let (address, _state) = server(Duration::from_secs(1)).await;
        tokio::task::spawn_blocking(move || {
            // Connects and sends nothing.
            let stream = std::net::TcpStream::connect(address).unwrap();
            let (seen, took) = until_closed(stream);
            assert!(took < Duration::from_secs(5), "{took:?}");
            assert!(!seen.contains("200 OK"), "{seen}");

            // Sends the start of a head, then nothing more.
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            let (seen, took) = until_closed(stream);
            assert!(took < Duration::from_secs(5), "{took:?}");
            assert!(!seen.contains("200 OK"), "{seen}");

            // Gets an answer, then keeps the connection idle.
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let (seen, took) = until_closed(stream);
            assert!(seen.starts_with("HTTP/1.1 200 OK"), "{seen}");
            assert!(took < Duration::from_secs(5), "{took:?}");
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_within_the_timeout_is_answered() {
        let (address, _state) = server(Duration::from_secs(2)).await;
        tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            // Slow, but each request's head arrives within the bound.
            for _ in 0..2 {
                std::thread::sleep(Duration::from_millis(500));
                stream.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
                std::thread::sleep(Duration::from_millis(500));
                stream.write_all(b"Host: x\r\n\r\n").unwrap();
            }
            stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let (seen, _) = until_closed(stream);
            assert_eq!(seen.matches("HTTP/1.1 200 OK").count(), 3, "{seen}");
        })
        .await
        .unwrap();
    }
}
