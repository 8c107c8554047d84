//! Binding the API to a TCP address or a Unix socket and serving it until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};

use crate::auth::{TokenCheck, check_listen_address};
use crate::{AppState, router};

/// Where to listen.
#[derive(Debug, Clone)]
pub enum Listen {
    Tcp(SocketAddr),
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
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

/// A bound listener, not serving yet.
#[derive(Debug)]
pub enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Bound {
    /// Binds `listen`; a TCP address beyond loopback needs `token`.
    pub async fn bind(listen: &Listen, token: Option<&str>) -> Result<Bound, ServeError> {
        match listen {
            Listen::Tcp(address) => {
                check_listen_address(*address, token)?;
                let listener =
                    TcpListener::bind(address)
                        .await
                        .map_err(|source| ServeError::Bind {
                            address: address.to_string(),
                            source,
                        })?;
                Ok(Bound::Tcp(listener))
            }
            Listen::Unix(path) => {
                if token == Some("") {
                    return Err(TokenCheck::EmptyToken.into());
                }
                remove_stale_socket(path)?;
                let bind_error = |source| ServeError::Bind {
                    address: path.display().to_string(),
                    source,
                };
                let listener = UnixListener::bind(path).map_err(bind_error)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(bind_error)?;
                Ok(Bound::Unix(listener, path.clone()))
            }
        }
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
        let app = router(state);
        match self {
            Bound::Tcp(listener) => axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(ServeError::Serve),
            Bound::Unix(listener, path) => {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
                    .map_err(ServeError::Serve);
                let _ = std::fs::remove_file(&path);
                served
            }
        }
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
