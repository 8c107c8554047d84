//! Error types shared across crates.

use std::path::PathBuf;

/// Invalid user input: flags, config files, environment.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown network mode '{0}' (expected none, allowlist or open)")]
    UnknownNetworkMode(String),
    #[error("bad allowlist entry '{entry}': {reason}")]
    InvalidAllowlist { entry: String, reason: String },
    #[error("network mode allowlist needs at least one allowed host or CIDR")]
    EmptyAllowlist,
    #[error(
        "allowed hosts, CIDRs or ports were given but the network mode is {0}; use --network allowlist"
    )]
    AllowlistWithoutMode(&'static str),
    #[error(
        "the allowlist network is not enforced on the {0} backend yet (use --backend native, docker or podman, or --network none)"
    )]
    AllowlistUnsupported(&'static str),
    #[error(
        "[api] allow_hosts, allow_cidrs and allow_ports bound remote callers' allowlists, but network = \"open\" there lets them have any destination; set network = \"allowlist\" (or \"none\") under [api]"
    )]
    ApiAllowlistWithOpenNetwork,
    #[error("unknown profile '{0}' (expected permissive, moderate or restrictive)")]
    UnknownProfile(String),
    #[error("unknown backend '{0}' (expected native, gvisor, docker, podman, microvm or apple)")]
    UnknownBackend(String),
    #[error(
        "invalid memory size '{0}' (expected a number with an optional unit: 512M, 2G, 1048576)"
    )]
    InvalidMemory(String),
    #[error("invalid memory size '{value}': {reason}")]
    MemoryOutOfRange { value: String, reason: &'static str },
    #[error("invalid duration '{0}' (expected e.g. 30s, 5m, 1h30m)")]
    InvalidDuration(String),
    #[error("invalid CPU count '{0}' (expected a number from 0.001 to 1024)")]
    InvalidCpus(String),
    #[error(
        "invalid pids limit '{0}' (expected a whole number from 1 to 4194304, the kernel's limit)"
    )]
    InvalidPids(String),
    #[error("invalid environment entry '{}': {reason}", shown_name(.entry))]
    InvalidEnv { entry: String, reason: &'static str },
    #[error("invalid path '{}': {reason}", shown_name(.path))]
    InvalidPath { path: String, reason: &'static str },
    #[error("image directory {0} does not exist or is not a directory")]
    MissingImageDir(PathBuf),
    #[error("invalid image '{0}': {1}")]
    InvalidImage(String, &'static str),
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot use the current directory: {0}")]
    CurrentDir(std::io::Error),
    #[error("invalid API key: {0}")]
    InvalidApiKey(&'static str),
    #[error("no command given")]
    EmptyCommand,
    #[error("invalid command: {0}")]
    InvalidCommand(&'static str),
    #[error("invalid sandbox name '{}': {reason}", shown_name(.name))]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid volume '{}': {reason}", shown_name(.entry))]
    InvalidVolume { entry: String, reason: String },
    #[error("invalid secret '{}': {reason}", shown_name(.entry))]
    InvalidSecret { entry: String, reason: &'static str },
    #[error(
        "secrets need the allowlist network (the egress proxy substitutes them); the network mode is {0}"
    )]
    SecretsWithoutAllowlist(&'static str),
    #[error("invalid git source '{}': {reason}", shown_name(.input))]
    InvalidSource { input: String, reason: String },
}

/// The longest part of a refused name an error message repeats.
const SHOWN_NAME_CHARS: usize = 64;

/// A refused name as an error message shows it: cut to a readable length, and with
/// control characters escaped, since the message goes to a terminal and a name is
/// untrusted input (an escape sequence in it could rewrite the screen).
fn shown_name(name: &str) -> String {
    let mut shown = String::new();
    for c in name.chars().take(SHOWN_NAME_CHARS) {
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    if name.chars().nth(SHOWN_NAME_CHARS).is_some() {
        shown.push('…');
    }
    shown
}

/// A backend failed to provide, reach or release a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend {backend} is not usable here: {reason}")]
    Unavailable { backend: String, reason: String },
    #[error("the {backend} backend cannot run this sandbox: {reason}")]
    Unsupported { backend: String, reason: String },
    /// The user's settings for the backend are wrong (e.g. a bad `[microvm]` section).
    #[error(transparent)]
    Misconfigured(#[from] ConfigError),
    #[error("sandbox set-up failed: {0}")]
    Setup(String),
    #[error("cannot reach the sandbox's agent: {0}")]
    Connect(String),
    #[error("sandbox {0} is no longer running")]
    Gone(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
