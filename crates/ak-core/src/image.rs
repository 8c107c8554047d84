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
    /// No image named, on a backend that runs OCI images: chosen once the command is known
    /// ([`ImageRef::settle`]) from the command, then the project's files.
    Auto,
    /// An OCI image already pulled into the local image store and unpacked there: what the
    /// backends that assemble their own root (native, gVisor, microvm) are handed instead
    /// of [`ImageRef::Oci`]. Container engines keep getting the name.
    Stored(StoredImage),
}

/// An OCI image unpacked in the local image store (`ak-image`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredImage {
    /// The reference as the user named it (`python:3.12-alpine`).
    pub reference: String,
    /// The digest of the image's manifest for this host's platform (`sha256:…`).
    pub digest: String,
    /// The unpacked layer directories, lowest first. Read-only: shared by every sandbox
    /// and every image that has the same layer.
    pub layers: Vec<PathBuf>,
    /// What the image's configuration says about how its processes run.
    pub config: ImageConfig,
    /// How the layers' owners are stored: image uid/gid N as `id_base + N` (so that a user
    /// namespace mapping 0 to `id_base` shows the image's owners). A backend without such
    /// a namespace (a VM's disk) takes it off again.
    pub id_base: u32,
}

/// The parts of an OCI image configuration that decide how a command runs in it, applied
/// as Docker applies them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Env`: `KEY=value` entries, before the sandbox's own environment.
    pub env: Vec<String>,
    /// `WorkingDir`, when the image names one.
    pub working_dir: Option<String>,
    /// `User` (`name`, `uid`, `uid:gid`, `name:group`), when the image names one.
    pub user: Option<String>,
    /// `Entrypoint`: prepended to the command.
    pub entrypoint: Vec<String>,
    /// `Cmd`: the command when none is given.
    pub cmd: Vec<String>,
}

/// Commands and the image that has them (the table of the original agentkernel README).
const IMAGE_BY_COMMAND: &[(&[&str], &str)] = &[
    (
        &["python", "pip", "pytest", "uv", "poetry"],
        "python:3.12-alpine",
    ),
    (&["node", "npm", "npx", "yarn", "pnpm"], "node:22-alpine"),
    (&["bun", "bunx"], "oven/bun:1-alpine"),
    (&["deno"], "denoland/deno:alpine"),
    (&["go", "gofmt"], "golang:1.23-alpine"),
    (&["cargo", "rustc", "rustup"], "rust:1-alpine"),
    (&["ruby", "gem", "bundle", "irb"], "ruby:3.3-alpine"),
    (
        &["java", "javac", "mvn", "gradle"],
        "eclipse-temurin:21-jdk-alpine",
    ),
    (&["php", "composer"], "php:8.3-cli-alpine"),
];

/// Project files and the image for the project they mark, most specific first.
const IMAGE_BY_PROJECT_FILE: &[(&str, &str)] = &[
    ("Cargo.toml", "rust:1-alpine"),
    ("go.mod", "golang:1.23-alpine"),
    ("package.json", "node:22-alpine"),
    ("bun.lockb", "oven/bun:1-alpine"),
    ("deno.json", "denoland/deno:alpine"),
    ("pyproject.toml", "python:3.12-alpine"),
    ("requirements.txt", "python:3.12-alpine"),
    ("setup.py", "python:3.12-alpine"),
    ("Gemfile", "ruby:3.3-alpine"),
    ("pom.xml", "eclipse-temurin:21-jdk-alpine"),
    ("build.gradle", "eclipse-temurin:21-jdk-alpine"),
    ("composer.json", "php:8.3-cli-alpine"),
];

/// The image when neither the command nor the project says: small, with a shell.
pub const DEFAULT_CONTAINER_IMAGE: &str = "alpine:3.20";

/// The microvm backend's default image: Debian's minimal root, built by `agentkernel
/// setup` (VMs boot their own root file system; container images are not converted).
pub const MICROVM_BASE_IMAGE: &str = "debian-minbase";

impl ImageRef {
    /// Parses an image argument. `host` is the host image; anything that looks like a path
    /// (starts with `/`, `./` or `../`, or is `.`) must be an existing directory; anything
    /// else must be a plausible OCI reference.
    pub fn parse(input: &str, cwd: &Path) -> Result<ImageRef, ConfigError> {
        if input == "host" {
            return Ok(ImageRef::Host);
        }
        // Chosen by the command (then the project's files) on every backend.
        if input == "auto" {
            return Ok(ImageRef::Auto);
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

impl ImageRef {
    /// The concrete image [`ImageRef::Auto`] stands for: by the command's program name,
    /// else by the files in `project` (the directory the sandbox works in, when it is the
    /// host's), else [`DEFAULT_CONTAINER_IMAGE`]. Any other image is kept as it is.
    pub fn settle(&self, command: Option<&str>, project: Option<&Path>) -> ImageRef {
        if *self != ImageRef::Auto {
            return self.clone();
        }
        // `/usr/bin/python3.12` → `python`.
        let program = command
            .map(|c| c.rsplit('/').next().unwrap_or(c))
            .map(|p| p.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.'));
        let by_command = program.and_then(|program| {
            IMAGE_BY_COMMAND
                .iter()
                .find(|(names, _)| names.contains(&program))
                .map(|(_, image)| *image)
        });
        let by_project = || {
            let project = project?;
            IMAGE_BY_PROJECT_FILE
                .iter()
                .find(|(file, _)| project.join(file).is_file())
                .map(|(_, image)| *image)
        };
        let image = by_command
            .or_else(by_project)
            .unwrap_or(DEFAULT_CONTAINER_IMAGE);
        ImageRef::Oci(image.to_string())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Host => f.write_str("host"),
            ImageRef::Directory(path) => write!(f, "{}", path.display()),
            ImageRef::Oci(name) => f.write_str(name),
            ImageRef::Auto => f.write_str("auto"),
            ImageRef::Stored(image) => f.write_str(&image.reference),
        }
    }
}

/// The longest `mount(2)` data string: the kernel copies one page of it.
pub const MOUNT_DATA_MAX: usize = 4095;

/// The `mount(2)` data of an overlay: `lowers` top first, each path's `:`, `,` and `\`
/// escaped as overlayfs reads them, then `extra` options (`userxattr`, …) if any. One
/// place for the backends that stack a stored image's layers on the host.
pub fn overlay_mount_data(lowers: &[&Path], upper: &Path, work: &Path, extra: &str) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let escape = |out: &mut Vec<u8>, path: &Path| {
        for &b in path.as_os_str().as_bytes() {
            if matches!(b, b':' | b',' | b'\\') {
                out.push(b'\\');
            }
            out.push(b);
        }
    };
    let mut data = b"lowerdir=".to_vec();
    for (i, layer) in lowers.iter().enumerate() {
        if i > 0 {
            data.push(b':');
        }
        escape(&mut data, layer);
    }
    data.extend(b",upperdir=");
    escape(&mut data, upper);
    data.extend(b",workdir=");
    escape(&mut data, work);
    if !extra.is_empty() {
        data.push(b',');
        data.extend(extra.as_bytes());
    }
    data
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
    fn auto_images_follow_the_command_then_the_project() {
        let project = tempfile::tempdir().unwrap();
        let auto = ImageRef::Auto;
        let oci = |s: &str| ImageRef::Oci(s.into());
        assert_eq!(
            auto.settle(Some("python3"), None),
            oci("python:3.12-alpine")
        );
        assert_eq!(
            auto.settle(Some("/usr/bin/python3.12"), None),
            oci("python:3.12-alpine")
        );
        assert_eq!(auto.settle(Some("npm"), None), oci("node:22-alpine"));
        assert_eq!(auto.settle(Some("sh"), None), oci(DEFAULT_CONTAINER_IMAGE));
        assert_eq!(
            auto.settle(None, Some(project.path())),
            oci(DEFAULT_CONTAINER_IMAGE)
        );
        std::fs::write(project.path().join("Cargo.toml"), "").unwrap();
        assert_eq!(
            auto.settle(Some("sh"), Some(project.path())),
            oci("rust:1-alpine")
        );
        // The command wins over the project.
        assert_eq!(
            auto.settle(Some("node"), Some(project.path())),
            oci("node:22-alpine")
        );
        // A named image is never replaced.
        assert_eq!(oci("x:1").settle(Some("python3"), None), oci("x:1"));
        assert_eq!(ImageRef::Host.settle(Some("python3"), None), ImageRef::Host);
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
