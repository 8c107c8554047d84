//! Image references: what a sandbox's root filesystem is made of.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The root filesystem of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageRef {
    /// The host's own root filesystem, read-only, with sensitive places hidden.
    Host,
    /// A directory holding a root filesystem (absolute, canonical).
    Directory(PathBuf),
    /// A named OCI image (`python:3.12-alpine`), for container and VM backends.
    Oci(String),
}

impl ImageRef {
    /// Parses an image argument. `host` is the host image; anything that looks like a path
    /// (starts with `/`, `./` or `../`, or is `.`) must be an existing directory; anything
    /// else must be a plausible OCI reference.
    pub fn parse(input: &str, cwd: &Path) -> Result<ImageRef, ConfigError> {
        if input == "host" {
            return Ok(ImageRef::Host);
        }
        if input.starts_with('/')
            || input.starts_with("./")
            || input.starts_with("../")
            || input == "."
        {
            let path = cwd.join(input);
            let canonical = path
                .canonicalize()
                .map_err(|_| ConfigError::MissingImageDir(path.clone()))?;
            if !canonical.is_dir() {
                return Err(ConfigError::MissingImageDir(path));
            }
            // The host's root as a directory image would skip the hiding of its secrets.
            if canonical == Path::new("/") {
                return Ok(ImageRef::Host);
            }
            return Ok(ImageRef::Directory(canonical));
        }
        validate_oci_reference(input)?;
        Ok(ImageRef::Oci(input.to_string()))
    }
}

/// Accepts the characters OCI references use and nothing that could be read as a flag.
fn validate_oci_reference(input: &str) -> Result<(), ConfigError> {
    let invalid = |why| Err(ConfigError::InvalidImage(input.to_string(), why));
    if input.is_empty() || input.len() > 255 {
        return invalid("must be 1 to 255 characters");
    }
    if input.starts_with('-') {
        return invalid("must not start with '-'");
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-/:@".contains(c);
    if !input.chars().all(allowed) {
        return invalid("only letters, digits and . _ - / : @ are allowed");
    }
    if !input
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return invalid("must start with a letter or digit");
    }
    Ok(())
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Host => f.write_str("host"),
            ImageRef::Directory(path) => write!(f, "{}", path.display()),
            ImageRef::Oci(name) => f.write_str(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind() {
        let cwd = std::env::temp_dir();
        assert_eq!(ImageRef::parse("host", &cwd).unwrap(), ImageRef::Host);
        // The host's root given as a directory is the host image, secrets hidden.
        assert_eq!(ImageRef::parse("/", &cwd).unwrap(), ImageRef::Host);
        assert!(matches!(
            ImageRef::parse("/usr", &cwd).unwrap(),
            ImageRef::Directory(_)
        ));
        assert_eq!(
            ImageRef::parse("python:3.12-alpine", &cwd).unwrap(),
            ImageRef::Oci("python:3.12-alpine".into())
        );
    }

    #[test]
    fn rejects_bad_images() {
        let cwd = std::env::temp_dir();
        assert!(matches!(
            ImageRef::parse("/nonexistent/image/dir", &cwd),
            Err(ConfigError::MissingImageDir(_))
        ));
        for bad in ["--privileged", "", "a b", "x;rm -rf /", "$(id)", "_x"] {
            assert!(ImageRef::parse(bad, &cwd).is_err(), "{bad:?}");
        }
    }
}
