//! Finding and connecting to a container engine's API socket: `DOCKER_HOST` (or
//! `CONTAINER_HOST` for Podman), the configured socket, then the usual places.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ak_core::BackendKind;
use bollard::Docker;

use crate::error::DockerError;

/// Seconds an Engine API call may take before it fails (image pulls stream for longer:
/// their progress keeps the connection alive).
const API_TIMEOUT_S: u64 = 120;

/// The API version we speak: Docker 20.10's, which later Dockers and Podman 4's
/// compatibility API also serve.
const API_VERSION: bollard::ClientVersion = bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// Where to look for `kind`'s socket. A socket named by the environment, else by the
/// config, is the only candidate (as for the engines' own CLIs: an explicit choice never
/// falls back to another engine); without either, the usual places.
pub fn candidates(kind: BackendKind, configured: Option<&str>) -> Vec<PathBuf> {
    let env = match kind {
        BackendKind::Podman => "CONTAINER_HOST",
        _ => "DOCKER_HOST",
    };
    let named = std::env::var(env)
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| configured.map(String::from));
    if let Some(named) = named {
        return vec![PathBuf::from(
            named.strip_prefix("unix://").unwrap_or(&named),
        )];
    }
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    match kind {
        BackendKind::Podman => runtime_dir
            .map(|dir| dir.join("podman/podman.sock"))
            .into_iter()
            .chain([PathBuf::from("/run/podman/podman.sock")])
            .collect(),
        _ => [PathBuf::from("/var/run/docker.sock")]
            .into_iter()
            .chain(runtime_dir.map(|dir| dir.join("docker.sock")))
            .collect(),
    }
}

/// The first candidate socket that exists.
pub fn find_socket(kind: BackendKind, configured: Option<&str>) -> Result<PathBuf, DockerError> {
    first_existing(kind, candidates(kind, configured))
}

fn first_existing(kind: BackendKind, candidates: Vec<PathBuf>) -> Result<PathBuf, DockerError> {
    candidates
        .iter()
        .find(|path| path.exists())
        .cloned()
        .ok_or(DockerError::NoSocket { kind, candidates })
}

/// A client for the engine at `socket`. It speaks API 1.41, which every engine we support
/// understands, so no version negotiation (a round trip) precedes the first call; nothing
/// is sent until then.
pub fn client(socket: &Path) -> Result<Docker, DockerError> {
    let address = socket.to_string_lossy().into_owned();
    Docker::connect_with_unix(&address, API_TIMEOUT_S, &API_VERSION).map_err(|e| {
        DockerError::Engine {
            what: format!("connect to {address}"),
            source: e,
        }
    })
}

/// [`client`], checked to answer (for `status`).
pub async fn connect(kind: BackendKind, socket: &Path) -> Result<Docker, DockerError> {
    let client = client(socket)?;
    let unreachable = |reason: String| DockerError::Unreachable {
        kind,
        socket: socket.to_path_buf(),
        reason,
    };
    tokio::time::timeout(Duration::from_secs(10), client.ping())
        .await
        .map_err(|_| unreachable("no answer within 10 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(client)
}

/// What `status` shows of an engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    /// `Docker Engine` or `Podman Engine`.
    pub engine: String,
    pub version: String,
    pub api_version: String,
    /// The engine remaps container root to an unprivileged host uid (userns-remap, or
    /// rootless Podman/Docker).
    pub user_namespaces: bool,
}

pub async fn engine_info(client: &Docker) -> Result<EngineInfo, DockerError> {
    let engine_error = |what: &str| {
        let what = what.to_string();
        move |source| DockerError::Engine { what, source }
    };
    let version = client.version().await.map_err(engine_error("version"))?;
    let info = client.info().await.map_err(engine_error("info"))?;
    // Podman names itself in a component ("Podman Engine"); Docker in its platform
    // ("Docker Engine - Community") or its first component ("Engine").
    let components = version.components.as_deref().unwrap_or_default();
    let engine = components
        .iter()
        .find(|c| c.name.contains("Podman"))
        .map(|c| c.name.clone())
        .or_else(|| {
            version
                .platform
                .as_ref()
                .map(|p| p.name.clone())
                .filter(|name| name.contains("Docker"))
        })
        .or_else(|| components.first().map(|c| format!("Docker {}", c.name)))
        .unwrap_or_else(|| "unknown engine".to_string());
    let user_namespaces = info
        .security_options
        .unwrap_or_default()
        .iter()
        .any(|o| o.contains("name=userns") || o.contains("name=rootless"));
    Ok(EngineInfo {
        engine,
        version: version.version.unwrap_or_default(),
        api_version: version.api_version.unwrap_or_default(),
        user_namespaces,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_and_docker_look_in_their_own_places() {
        // CONTAINER_HOST is not set in the test environment (CI does not set it).
        let podman = candidates(BackendKind::Podman, None);
        assert!(podman.contains(&PathBuf::from("/run/podman/podman.sock")));
        assert!(!podman.iter().any(|p| p.ends_with("docker.sock")));
        // A configured socket is the only candidate: no falling back to the usual places.
        assert_eq!(
            candidates(BackendKind::Podman, Some("unix:///srv/p.sock")),
            [PathBuf::from("/srv/p.sock")]
        );
    }

    #[test]
    fn a_missing_socket_names_every_place_looked_at() {
        let places = vec![
            PathBuf::from("/nonexistent/x.sock"),
            PathBuf::from("/nonexistent/y.sock"),
        ];
        let error = first_existing(BackendKind::Podman, places).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("no podman socket found"), "{text}");
        assert!(
            text.contains("/nonexistent/x.sock, /nonexistent/y.sock"),
            "{text}"
        );
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("docker.sock");
        std::fs::write(&present, "").unwrap();
        let places = vec![PathBuf::from("/nonexistent/x.sock"), present.clone()];
        assert_eq!(
            first_existing(BackendKind::Docker, places).unwrap(),
            present
        );
    }
}
