//! The only place that names concrete backends: builds the service for this build.

use std::path::PathBuf;
use std::sync::Arc;

use ak_native::NativeBackend;
use ak_service::Service;

/// Environment variable naming the agent executable explicitly.
pub const AGENT_ENV: &str = "AGENTKERNEL_AGENT";

/// The static agent: `$AGENTKERNEL_AGENT`, else `ak-agent` beside this executable.
pub fn agent_path() -> PathBuf {
    if let Some(path) = std::env::var_os(AGENT_ENV) {
        return PathBuf::from(path);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("ak-agent")))
        .unwrap_or_else(|| PathBuf::from("ak-agent"))
}

/// Environment variable naming the registry database (tests use private ones).
pub const REGISTRY_ENV: &str = "AGENTKERNEL_REGISTRY";

fn registry_path() -> PathBuf {
    std::env::var_os(REGISTRY_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(ak_service::Registry::default_path)
}

/// The directory of the registry, the daemon's socket and its log.
pub fn state_dir() -> PathBuf {
    let registry = registry_path();
    registry
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn service() -> Service {
    Service::new(
        vec![Arc::new(NativeBackend::new(agent_path()))],
        registry_path(),
    )
}
