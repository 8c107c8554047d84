//! Named volumes as a sandbox asks for them: `NAME:/path[:ro|:rw|:shared]`. The volume's
//! directory on the host is the service's business; a spec only names it.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::spec::{validate_name, validate_sandbox_path};

/// Checks a volume's name: a sandbox name's rules (it names a directory on the host).
pub fn validate_volume_name(name: &str) -> Result<(), ConfigError> {
    validate_name(name).map_err(|error| match error {
        ConfigError::InvalidName { reason, .. } => ConfigError::InvalidVolume {
            entry: name.to_string(),
            reason: format!("the name {reason}"),
        },
        other => other,
    })
}

/// How a sandbox uses a volume, and so which other sandboxes may use it at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeAccess {
    /// Writable, and no other sandbox may use the volume meanwhile (the default: two
    /// writers that do not know of each other corrupt what they share).
    Exclusive,
    /// Read-only; any number of read-only and shared users at once.
    ReadOnly,
    /// Writable alongside other shared and read-only users: the user said they coordinate.
    Shared,
}

impl VolumeAccess {
    pub fn writable(self) -> bool {
        self != VolumeAccess::ReadOnly
    }

    /// Whether a sandbox using the volume this way may run alongside one using it `other`.
    pub fn compatible_with(self, other: VolumeAccess) -> bool {
        self != VolumeAccess::Exclusive && other != VolumeAccess::Exclusive
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VolumeAccess::Exclusive => "rw",
            VolumeAccess::ReadOnly => "ro",
            VolumeAccess::Shared => "shared",
        }
    }
}

/// One volume mounted into a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// The volume's name (a sandbox name's rules: it names a directory on the host).
    pub name: String,
    /// Absolute path inside the sandbox.
    pub target: PathBuf,
    pub access: VolumeAccess,
}

impl VolumeMount {
    /// Parses `NAME:/path`, `NAME:/path:ro`, `NAME:/path:rw` or `NAME:/path:shared` (the
    /// SDKs' `slug:/path[:ro]` plus `shared`).
    pub fn parse(entry: &str) -> Result<VolumeMount, ConfigError> {
        let invalid = |reason: String| ConfigError::InvalidVolume {
            entry: entry.to_string(),
            reason,
        };
        let (name, rest) = entry
            .split_once(':')
            .ok_or_else(|| invalid("expected NAME:/path[:ro|:rw|:shared]".into()))?;
        validate_volume_name(name).map_err(|e| match e {
            ConfigError::InvalidVolume { reason, .. } => invalid(reason),
            other => other,
        })?;
        let (path, access) = match rest.rsplit_once(':') {
            Some((path, "ro")) => (path, VolumeAccess::ReadOnly),
            Some((path, "rw")) => (path, VolumeAccess::Exclusive),
            Some((path, "shared")) => (path, VolumeAccess::Shared),
            Some((_, other)) => {
                return Err(invalid(format!(
                    "unknown access '{other}' (expected ro, rw or shared)"
                )));
            }
            None => (rest, VolumeAccess::Exclusive),
        };
        let target = validate_sandbox_path(path).map_err(|e| invalid(e.to_string()))?;
        if target == std::path::Path::new("/") {
            return Err(invalid("a volume cannot be mounted over '/'".into()));
        }
        Ok(VolumeMount {
            name: name.to_string(),
            target,
            access,
        })
    }

    /// Checks a list: no two volumes at one place.
    pub fn parse_all(entries: &[String]) -> Result<Vec<VolumeMount>, ConfigError> {
        let mut volumes: Vec<VolumeMount> = Vec::with_capacity(entries.len());
        for entry in entries {
            let volume = VolumeMount::parse(entry)?;
            if volumes.iter().any(|v| v.target == volume.target) {
                return Err(ConfigError::InvalidVolume {
                    entry: entry.clone(),
                    reason: format!("two volumes at {}", volume.target.display()),
                });
            }
            volumes.push(volume);
        }
        Ok(volumes)
    }
}

impl fmt::Display for VolumeMount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.name,
            self.target.display(),
            self.access.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_access() {
        let v = VolumeMount::parse("cache:/root/.cache").unwrap();
        assert_eq!(v.name, "cache");
        assert_eq!(v.target, PathBuf::from("/root/.cache"));
        assert_eq!(v.access, VolumeAccess::Exclusive);
        assert_eq!(
            VolumeMount::parse("d:/data:ro").unwrap().access,
            VolumeAccess::ReadOnly
        );
        assert_eq!(
            VolumeMount::parse("d:/data:shared").unwrap().access,
            VolumeAccess::Shared
        );
        assert_eq!(
            VolumeMount::parse("d:/data:rw").unwrap().to_string(),
            "d:/data:rw"
        );
    }

    #[test]
    fn refuses_bad_entries() {
        for bad in [
            "",
            "noslash",
            "../x:/data",
            "a/b:/data",
            "d:relative",
            "d:/a/../b",
            "d:/",
            "d:/data:rx",
            ":/data",
            "-x:/data",
        ] {
            assert!(VolumeMount::parse(bad).is_err(), "{bad:?}");
        }
        let two = ["a:/d".to_string(), "b:/d:ro".to_string()];
        assert!(VolumeMount::parse_all(&two).is_err());
    }

    #[test]
    fn exclusive_excludes_everyone() {
        use VolumeAccess::*;
        assert!(!Exclusive.compatible_with(ReadOnly));
        assert!(!ReadOnly.compatible_with(Exclusive));
        assert!(ReadOnly.compatible_with(Shared));
        assert!(Shared.compatible_with(Shared));
    }
}
