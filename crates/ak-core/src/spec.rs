//! The full description of one sandbox, as every backend receives it.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::error::ConfigError;
use crate::image::ImageRef;
use crate::policy::SecurityPolicy;
use crate::resources::Resources;

/// Default working directory inside a sandbox (a private, writable tmpfs).
pub const DEFAULT_WORKDIR: &str = "/workspace";

/// A host directory made visible inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute, canonical host path.
    pub host: PathBuf,
    /// Absolute path inside the sandbox.
    pub target: PathBuf,
    pub writable: bool,
}

/// Everything a backend needs to provide one sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Unique id, also used to name host resources (cgroups, runtime directories).
    pub id: String,
    pub backend: BackendKind,
    pub image: ImageRef,
    pub resources: Resources,
    pub policy: SecurityPolicy,
    /// Environment every command starts with (commands may add to it).
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    pub workdir: PathBuf,
    pub mounts: Vec<Mount>,
    /// Wall-clock limit of the whole sandbox run.
    pub timeout: Option<Duration>,
    pub hostname: String,
}

/// A fresh, unique sandbox id (32 lowercase hex digits).
pub fn new_sandbox_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Parses `KEY=VALUE`. The key must be non-empty and neither part may hold a NUL byte.
pub fn parse_env_entry(entry: &str) -> Result<(String, String), ConfigError> {
    let invalid = || ConfigError::InvalidEnv(entry.to_string());
    let (key, value) = entry.split_once('=').ok_or_else(invalid)?;
    if key.is_empty() || key.contains('\0') || value.contains('\0') {
        return Err(invalid());
    }
    Ok((key.to_string(), value.to_string()))
}

/// Checks a path that names a place inside a sandbox: absolute, no `..`, no NUL.
pub fn validate_sandbox_path(path: &str) -> Result<PathBuf, ConfigError> {
    let invalid = |reason| ConfigError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let parsed = Path::new(path);
    if !parsed.is_absolute() {
        return Err(invalid("must be absolute"));
    }
    if parsed.components().any(|c| c == Component::ParentDir) {
        return Err(invalid("must not contain '..'"));
    }
    Ok(parsed.components().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_entries() {
        assert_eq!(
            parse_env_entry("A=b=c").unwrap(),
            ("A".into(), "b=c".into())
        );
        assert_eq!(
            parse_env_entry("EMPTY=").unwrap(),
            ("EMPTY".into(), "".into())
        );
        for bad in ["", "=x", "NOEQUALS", "A\0=x"] {
            assert!(parse_env_entry(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sandbox_paths() {
        assert_eq!(
            validate_sandbox_path("/a//b/./c").unwrap(),
            PathBuf::from("/a/b/c")
        );
        for bad in ["relative", "/a/../b", "/x\0"] {
            assert!(validate_sandbox_path(bad).is_err(), "{bad:?}");
        }
    }
}
