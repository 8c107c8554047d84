//! The full description of one sandbox, as every backend receives it.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::error::ConfigError;
use crate::image::ImageRef;
use crate::policy::SecurityPolicy;
use crate::resources::Resources;
use crate::secrets::{SecretRule, SecretValues};
use crate::source::GitSource;
use crate::volume::VolumeMount;

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
    /// Named volumes, made into mounts by the service when the sandbox is built.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// A repository the service clones into the workdir before the sandbox first starts.
    #[serde(default)]
    pub source: Option<GitSource>,
    /// Wall-clock limit of the whole sandbox run.
    pub timeout: Option<Duration>,
    pub hostname: String,
    /// A host directory that holds the root's writable state, given by the service to a
    /// named sandbox of a backend that snapshots ([`crate::backend::Capabilities::snapshots`]),
    /// so that the state outlives a stop and the host can copy it; `None`: the backend's
    /// own private writable layer (native: a tmpfs), gone with the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_dir: Option<PathBuf>,
    /// Secrets substituted on the wire by the egress helper: rules only (key, host, header,
    /// placeholder); the sandbox's `env` holds each key's placeholder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretRule>,
    /// Keys whose real values are written to files under
    /// [`crate::secrets::SECRET_FILES_DIR`] inside the sandbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_files: Vec<String>,
    /// The values of the keys above, filled in by the service just before a backend
    /// provisions the sandbox; never serialized (not into the registry, the audit log or
    /// `inspect`).
    #[serde(skip)]
    pub secret_values: SecretValues,
    /// A root writable layer that a backend keeping it itself
    /// ([`crate::backend::RootLayer::Backend`]) saved for a snapshot
    /// ([`crate::Backend::save_root_layer`]; docker: a committed image's id): the root
    /// starts from it, on top of the image, instead of from the image alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_layer: Option<String>,
}

/// A fresh, unique sandbox id (32 lowercase hex digits).
pub fn new_sandbox_id() -> String {
    crate::random::uuid_v4().simple().to_string()
}

/// The kernel's longest path (`PATH_MAX`, counting the terminating NUL): a longer path
/// could only fail later, inside the sandbox, with a less helpful error.
pub const MAX_PATH_BYTES: usize = 4096;

/// Parses `KEY=VALUE`. The key must be non-empty and hold no whitespace or control
/// characters (no shell or program could refer to it, and a space usually means a
/// mistyped flag); neither part may hold a NUL byte.
pub fn parse_env_entry(entry: &str) -> Result<(String, String), ConfigError> {
    let invalid = |reason| ConfigError::InvalidEnv {
        entry: entry.to_string(),
        reason,
    };
    let (key, value) = entry
        .split_once('=')
        .ok_or_else(|| invalid("expected KEY=VALUE"))?;
    if key.is_empty() {
        return Err(invalid("the name before '=' is empty"));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "the name must not contain whitespace or control characters",
        ));
    }
    if value.contains('\0') {
        return Err(invalid("the value contains a NUL byte"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Checks a path that names a place inside a sandbox: absolute, no `..`, no NUL, shorter
/// than `PATH_MAX`.
pub fn validate_sandbox_path(path: &str) -> Result<PathBuf, ConfigError> {
    let invalid = |reason| ConfigError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    if path.len() >= MAX_PATH_BYTES {
        return Err(invalid("longer than the kernel's limit of 4095 bytes"));
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

/// Host system directories a sandbox's workdir must not be or lie in. The workdir is made
/// writable for the sandbox's processes (landlock grants every right beneath it), so a
/// workdir of `/` or `/usr` would lift the read-only rule on the system itself.
const SYSTEM_DIRS: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin",
    "/sys", "/usr",
];

/// Checks a sandbox's workdir: a valid sandbox path (see [`validate_sandbox_path`]) that
/// is neither `/` nor a system directory or a place inside one.
pub fn validate_workdir(path: &str) -> Result<PathBuf, ConfigError> {
    let checked = validate_sandbox_path(path)?;
    let invalid = |reason| ConfigError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    if checked == Path::new("/") {
        return Err(invalid(
            "the workdir is writable, and '/' would make the whole file system writable",
        ));
    }
    if SYSTEM_DIRS.iter().any(|dir| checked.starts_with(dir)) {
        return Err(invalid(
            "the workdir is writable and must not be a system directory (/usr, /etc, /proc, ...) or lie inside one",
        ));
    }
    Ok(checked)
}

/// The longest sandbox name: a DNS label's limit, so a name can also serve as a hostname.
pub const MAX_NAME_LEN: usize = 63;

/// [`validate_name`]'s rule as a regular expression, for API documents (OpenAPI): the names
/// it accepts are exactly those that match (`name_pattern_matches_validation` checks).
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$";

/// Checks a sandbox name: 1 to 63 ASCII letters, digits, `-`, `_` or `.`, starting with a
/// letter or digit. Names end up in paths, hostnames, URLs and shell-adjacent output, so
/// anything that could be read as a path step, an option or a metacharacter is refused.
pub fn validate_name(name: &str) -> Result<(), ConfigError> {
    let invalid = |reason| ConfigError::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(invalid("must be at most 63 characters long"));
    }
    if name == "." || name == ".." {
        return Err(invalid("must not be '.' or '..'"));
    }
    for c in name.chars() {
        let reason = match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => continue,
            '\0' => "must not contain a NUL byte",
            '/' => "must not contain '/'",
            c if c.is_whitespace() => "must not contain whitespace",
            c if !c.is_ascii() => "must contain only ASCII characters",
            _ => "may contain only ASCII letters, digits, '-', '_' and '.'",
        };
        return Err(invalid(reason));
    }
    // A leading '-' reads as an option to tools, a leading '.' as a hidden or relative path.
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(invalid("must start with a letter or digit"));
    }
    Ok(())
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
        for bad in [
            "", "=x", "NOEQUALS", "A\0=x", "A=x\0", "MY VAR=1", " A=1", "A =1", "A\tB=1", "A\nB=1",
        ] {
            assert!(parse_env_entry(bad).is_err(), "{bad:?}");
        }
        let message = parse_env_entry("MY VAR=1").unwrap_err().to_string();
        assert!(message.contains("'MY VAR=1'"), "{message}");
        assert!(message.contains("whitespace"), "{message}");
        let message = parse_env_entry("NOEQUALS").unwrap_err().to_string();
        assert!(message.contains("expected KEY=VALUE"), "{message}");
    }

    #[test]
    fn over_long_paths_are_refused() {
        let longest = format!("/{}", "a".repeat(MAX_PATH_BYTES - 2));
        assert!(validate_sandbox_path(&longest).is_ok());
        let too_long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        let message = validate_sandbox_path(&too_long).unwrap_err().to_string();
        assert!(message.contains("4095 bytes"), "{message}");
        // The message quotes the start of the path, not all of it.
        assert!(message.len() < 300, "{message}");
    }

    #[test]
    fn workdirs_that_would_open_up_the_system_are_refused() {
        for bad in [
            "/",
            "//",
            "/.",
            "/usr",
            "/usr/",
            "/usr/local/src",
            "/etc",
            "/proc/self",
            "/sys",
            "/dev",
            "/bin",
            "/lib64",
        ] {
            assert!(validate_workdir(bad).is_err(), "{bad:?} was accepted");
        }
        let message = validate_workdir("/").unwrap_err().to_string();
        assert!(message.contains("invalid path '/'"), "{message}");
        for good in [
            "/workspace",
            "/tmp/w",
            "/home/u/project",
            "/srv/app",
            "/usrx",
        ] {
            assert!(validate_workdir(good).is_ok(), "{good:?} was refused");
        }
        assert!(validate_workdir("relative").is_err());
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

    #[test]
    fn sandbox_names_refused() {
        let long = "a".repeat(200);
        for bad in [
            "../x",
            "",
            long.as_str(),
            "a;rm -rf /",
            "$(id)",
            "a b",
            "-x",
            ".hidden",
            ".",
            "..",
            "naïve",
            "名前",
            "a\0b",
            "a\nb",
            "a|b",
            "`id`",
            "a*",
            "~root",
        ] {
            match validate_name(bad) {
                Err(ConfigError::InvalidName { name, reason }) => {
                    assert_eq!(name, bad);
                    assert!(!reason.is_empty(), "{bad:?}");
                }
                other => panic!("{bad:?} was not refused: {other:?}"),
            }
        }
    }

    #[test]
    fn sandbox_names_accepted() {
        let longest = "a".repeat(MAX_NAME_LEN);
        for good in ["my-box_1.2", "a", "7", "A.b-C_d", longest.as_str()] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
        assert!(validate_name(&"a".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn sandbox_name_errors_read_well() {
        let message = validate_name("a b").unwrap_err().to_string();
        assert_eq!(
            message,
            "invalid sandbox name 'a b': must not contain whitespace"
        );
        let message = validate_name(&"x".repeat(200)).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("invalid sandbox name '{}…'", "x".repeat(64))),
            "{message}"
        );
        // Control characters never reach the terminal raw.
        let message = validate_name("a\u{1b}[2J").unwrap_err().to_string();
        assert!(!message.contains('\u{1b}'), "{message}");
        assert!(message.contains("\\u{1b}"), "{message}");
    }

    #[test]
    fn name_pattern_matches_validation() {
        assert_eq!(
            NAME_PATTERN,
            format!("^[A-Za-z0-9][A-Za-z0-9._-]{{0,{}}}$", MAX_NAME_LEN - 1)
        );
        // Every ASCII character, first and later in a name, as the pattern's classes say.
        for byte in 0u8..128 {
            let c = char::from(byte);
            let first = c.is_ascii_alphanumeric();
            let later = first || matches!(c, '.' | '_' | '-');
            assert_eq!(validate_name(&c.to_string()).is_ok(), first, "{c:?} first");
            assert_eq!(
                validate_name(&format!("a{c}")).is_ok(),
                later,
                "{c:?} later"
            );
        }
        assert!(validate_name("é").is_err());
    }
}
