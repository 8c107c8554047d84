//! Bearer-token auth for every request but `GET /health`, compared in constant time, and
//! the audit entry of every refused request (4xx), whatever refused it.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ak_service::Outcome;
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rustix::fs::OFlags;
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::{ApiError, Refusal};

/// Why a listener may not start.
#[derive(Debug, thiserror::Error)]
pub enum TokenCheck {
    #[error(
        "refusing to listen on {0} without a token: set AGENTKERNEL_API_KEY (or api_key in the config)"
    )]
    TcpWithoutToken(SocketAddr),
    #[error(
        "refusing to listen on {0} without a token: --insecure-no-auth is for loopback addresses only; set AGENTKERNEL_API_KEY (or api_key in the config)"
    )]
    NoAuthBeyondLoopback(SocketAddr),
    #[error("the API token must not be empty")]
    EmptyToken,
}

/// Every TCP listener needs a token: any local user can reach loopback, and with the API
/// they could run commands in this user's sandboxes. `no_auth` (`--insecure-no-auth`)
/// waives that on loopback only, never for an address other hosts can reach.
pub fn check_listen_address(
    address: SocketAddr,
    token: Option<&str>,
    no_auth: bool,
) -> Result<(), TokenCheck> {
    match token {
        Some("") => Err(TokenCheck::EmptyToken),
        Some(_) => Ok(()),
        None if no_auth && address.ip().is_loopback() => Ok(()),
        None if no_auth => Err(TokenCheck::NoAuthBeyondLoopback(address)),
        None => Err(TokenCheck::TcpWithoutToken(address)),
    }
}

/// The file, in the state directory, holding the token generated when none is configured.
pub const TOKEN_FILE: &str = "api-token";

/// Longest token file read (a token is 64 characters; anything far longer is not ours).
const MAX_TOKEN_FILE: u64 = 4096;

/// Why the stored token could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot create the API token file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the API token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a regular file of this user readable by nobody else (mode 0600); remove it and a new token is made"
    )]
    Unsafe { path: PathBuf },
    #[error(
        "{path} holds no valid token (empty, too long, or with whitespace inside); remove it and a new token is made"
    )]
    Invalid { path: PathBuf },
}

/// A token kept in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub token: String,
    pub path: PathBuf,
    /// Made now (else an earlier server's was reused, so clients keep working).
    pub created: bool,
}

/// The token in `path`, made (random, 64 hex digits) when there is none yet.
///
/// The file is written whole under a temporary name (created exclusively, mode 0600, so no
/// umask can widen it) and then hard-linked into place: `link` never replaces an existing
/// file and never follows a symbolic link, and another server starting at the same moment
/// reads either no file or a complete one, never a half-written token.
pub fn load_or_create_token(path: &Path) -> Result<StoredToken, TokenFileError> {
    match read_token(path) {
        Ok(token) => {
            return Ok(StoredToken {
                token,
                path: path.to_path_buf(),
                created: false,
            });
        }
        Err(TokenFileError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let create_error = |source| TokenFileError::Create {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(create_error)?;
    // A v4 UUID is 122 bits from the kernel's random source; two make 244.
    let token = format!(
        "{}{}",
        ak_core::random::uuid_v4().simple(),
        ak_core::random::uuid_v4().simple()
    );
    let staged = dir.join(format!(
        ".{TOKEN_FILE}.{}",
        ak_core::random::uuid_v4().simple()
    ));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags((OFlags::NOFOLLOW | OFlags::CLOEXEC).bits() as i32)
        .open(&staged)
        .and_then(|mut file| {
            file.write_all(format!("{token}\n").as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| std::fs::hard_link(&staged, path));
    let _ = std::fs::remove_file(&staged);
    match written {
        Ok(()) => Ok(StoredToken {
            token,
            path: path.to_path_buf(),
            created: true,
        }),
        // Another server made it first: use theirs.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(StoredToken {
            token: read_token(path)?,
            path: path.to_path_buf(),
            created: false,
        }),
        Err(error) => Err(create_error(error)),
    }
}

/// The token in `path`, if the file is this user's alone: anyone else who could write it
/// (or had put it there) would know the token.
fn read_token(path: &Path) -> Result<String, TokenFileError> {
    let read_error = |source| TokenFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::NOFOLLOW | OFlags::CLOEXEC).bits() as i32)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            // O_NOFOLLOW on a symbolic link.
            Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() => {
                TokenFileError::Unsafe {
                    path: path.to_path_buf(),
                }
            }
            _ => read_error(source),
        })?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file()
        || meta.uid() != rustix::process::geteuid().as_raw()
        || meta.mode() & 0o077 != 0
    {
        return Err(TokenFileError::Unsafe {
            path: path.to_path_buf(),
        });
    }
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    let token = text.trim();
    if token.is_empty()
        || text.len() as u64 > MAX_TOKEN_FILE
        || token.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(TokenFileError::Invalid {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

/// Refuses requests without the right token, and records every refused request.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let open = method == Method::GET && path == "/health";
    let response = match &state.config.token {
        Some(expected) if !open => match presented(&request) {
            Some(given) if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) => {
                next.run(request).await
            }
            Some(_) => ApiError::Unauthorized("invalid API token".into()).into_response(),
            None => ApiError::Unauthorized(
                "missing API token (send Authorization: Bearer <token>)".into(),
            )
            .into_response(),
        },
        _ => next.run(request).await,
    };
    let status = response.status();
    if status.is_client_error() {
        let reason = response
            .extensions()
            .get::<Refusal>()
            .map_or_else(|| status.to_string(), |r| r.0.clone());
        state.service.record_audit(
            ak_service::Caller::Api,
            "request",
            sandbox_of(&path),
            Outcome::Refused,
            Some(format!("{method} {path}: {} {reason}", status.as_u16())),
        );
    }
    response
}

/// The token of an `Authorization: Bearer …` header.
fn presented(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The sandbox a path is about (`/sandboxes/NAME/…`), when its name is a valid one.
fn sandbox_of(path: &str) -> Option<&str> {
    let name = path.strip_prefix("/sandboxes/")?.split('/').next()?;
    (name != "by-uuid" && ak_core::spec::validate_name(name).is_ok()).then_some(name)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn every_tcp_listener_needs_a_token() {
        let loopback: SocketAddr = "127.0.0.1:18888".parse().unwrap();
        let v6_loopback: SocketAddr = "[::1]:18888".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:18888".parse().unwrap();
        // Loopback is no boundary between local users: a token even there.
        assert!(matches!(
            check_listen_address(loopback, None, false),
            Err(TokenCheck::TcpWithoutToken(_))
        ));
        assert!(matches!(
            check_listen_address(any, None, false),
            Err(TokenCheck::TcpWithoutToken(_))
        ));
        // Unless waived, and then on loopback only.
        assert!(check_listen_address(loopback, None, true).is_ok());
        assert!(check_listen_address(v6_loopback, None, true).is_ok());
        assert!(matches!(
            check_listen_address(any, None, true),
            Err(TokenCheck::NoAuthBeyondLoopback(_))
        ));
        assert!(check_listen_address(any, Some("secret"), false).is_ok());
        assert!(matches!(
            check_listen_address(loopback, Some(""), false),
            Err(TokenCheck::EmptyToken)
        ));
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_token_is_made_once_readable_only_by_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/api-token");
        let made = load_or_create_token(&path).unwrap();
        assert!(made.created);
        assert_eq!(made.token.len(), 64);
        assert!(made.token.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // A restart reuses it, so that clients keep working.
        let again = load_or_create_token(&path).unwrap();
        assert_eq!(
            (again.token.as_str(), again.created),
            (made.token.as_str(), false)
        );
        // Nothing staged is left beside it.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("api-token")]);
    }

    #[test]
    fn a_token_file_others_could_read_or_plant_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-token");
        std::fs::write(&path, "planted-token\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create_token(&path),
            Err(TokenFileError::Unsafe { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        // A symbolic link is never followed (it could point at a file of the attacker's).
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "planted-token\n").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(matches!(
            load_or_create_token(&path),
            Err(TokenFileError::Unsafe { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        // Empty or whitespace-ridden contents are no token.
        for bad in ["", "\n", "two words\n"] {
            std::fs::write(&path, bad).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(
                matches!(
                    load_or_create_token(&path),
                    Err(TokenFileError::Invalid { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_dangling_link_in_the_way_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-token");
        let target = dir.path().join("created-by-us");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(load_or_create_token(&path).is_err());
        assert!(!target.exists());
    }

    #[test]
    fn sandbox_names_in_paths() {
        assert_eq!(sandbox_of("/sandboxes/box/exec"), Some("box"));
        assert_eq!(sandbox_of("/sandboxes/box"), Some("box"));
        assert_eq!(sandbox_of("/sandboxes/by-uuid/x"), None);
        assert_eq!(sandbox_of("/sandboxes/..%2f/x"), None);
        assert_eq!(sandbox_of("/run"), None);
    }
}
