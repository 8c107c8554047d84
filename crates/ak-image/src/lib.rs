//! ak-image: the local OCI image store: pull, verify, unpack, list, remove.
//!
//! Images are pulled from any OCI / Docker v2 registry (`oci-client`), every blob checked
//! against its digest, and each layer unpacked once into its own read-only directory,
//! named by the layer's digest and shared by every image that has it. The backends that
//! assemble their own root (native, gVisor) stack those directories as overlay lower
//! layers; they get them as an [`ak_core::StoredImage`].
//!
//! Two ways in: [`Store::pull`] unpacks each layer while it downloads (what a sandbox that
//! needs the image now wants), [`Store::fetch`] only stores the verified compressed blobs
//! (as `skopeo copy` or containerd's content fetch do) and the first [`Store::get`] that
//! needs a layer unpacks it, once. Unpacking is most of a pull's CPU (inflating and
//! writing every file); a fetch moves it to the first use.
//!
//! Layout under the store directory (`<state_dir>/images`):
//!
//! ```text
//! store.json                      format version and the id shift the layers were made with
//! layers/sha256/<hex>/root/       an unpacked layer (named by its compressed blob's digest)
//! layers/sha256/<hex>/layer.json  its sizes
//! blobs/sha256/<hex>              a layer fetched and verified but not unpacked yet
//! configs/sha256/<hex>.json       image configurations, as pulled (verified)
//! refs/<sha256 of name>.json      one per pulled reference: manifest digest, layers, config
//! locks/                          lock files that coalesce concurrent pulls (flock)
//! tmp/                            work in progress, renamed into place only when complete
//! ```
//!
//! The library never prints: progress goes through [`PullProgress`].

mod auth;
mod error;
mod layers;
mod lock;
mod pull;
mod reference;
mod store;
mod unpack;

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use error::ImageError;
pub use reference::normalize;
pub use store::Store;

/// How image uids/gids are written on disk: image id N is stored as `base + N`, so that a
/// user namespace mapping 0 → `base` (range `range`) shows files with their image owners.
///
/// A range of 1 is the mapping of an unprivileged user (its own uid only): every owner
/// collapses to `base`. With a larger range an id at or beyond it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdShift {
    pub base: u32,
    pub range: u32,
}

impl IdShift {
    /// The host id for image id `id`, or `None` when it is outside the range.
    pub fn map(&self, id: u64) -> Option<u32> {
        if self.range == 1 {
            return Some(self.base);
        }
        let id = u32::try_from(id).ok()?;
        if id >= self.range {
            return None;
        }
        self.base.checked_add(id)
    }
}

/// When [`Store::ensure`] goes to the registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Never: an image not in the store is an error.
    Never,
    /// Only when the store does not have the reference.
    #[default]
    Missing,
    /// Always ask the registry (layers already in the store are not downloaded again).
    Always,
}

impl FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "never" => Ok(PullPolicy::Never),
            "missing" => Ok(PullPolicy::Missing),
            "always" => Ok(PullPolicy::Always),
            other => Err(format!(
                "unknown pull policy {other:?} (never, missing or always)"
            )),
        }
    }
}

impl std::fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PullPolicy::Never => "never",
            PullPolicy::Missing => "missing",
            PullPolicy::Always => "always",
        })
    }
}

/// A registry login from the user's configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredential {
    /// `host[:port]`, as in image references (`docker.io` for Docker Hub).
    pub registry: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredential {
    // Never the password: errors and logs print options.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registries (`host[:port]`) whose TLS certificate is not verified and that may speak
    /// plain HTTP. Registries on loopback may always fall back to plain HTTP, as Docker's.
    pub insecure_registries: Vec<String>,
    /// Logins, before those of `docker_config`.
    pub credentials: Vec<RegistryCredential>,
    /// Docker's `config.json` (its `auths`), when it should be read.
    pub docker_config: Option<PathBuf>,
    /// PEM files of extra certificate authorities to trust.
    pub ca_files: Vec<PathBuf>,
}

/// Whether a layer came from the registry or was already in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerOutcome {
    Downloaded,
    AlreadyPresent,
}

/// Per-layer progress of a pull. Called from the pulling task; keep it quick.
pub trait PullProgress: Send + Sync {
    /// A layer starts: its digest and compressed size.
    fn layer_started(&self, _digest: &str, _size: u64) {}
    /// `done` of its compressed bytes arrived.
    fn layer_progress(&self, _digest: &str, _done: u64) {}
    /// The layer is in the store.
    fn layer_done(&self, _digest: &str, _outcome: LayerOutcome) {}
}

/// Progress nobody watches.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;
impl PullProgress for NoProgress {}

/// One layer of a stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// The compressed blob's digest (what the manifest names).
    pub digest: String,
    /// The compressed size, as pulled.
    pub compressed_size: u64,
    /// Bytes of file data unpacked (0 while the layer is only fetched).
    pub size: u64,
    /// The blob's media type (it says how the blob is compressed). Records written before
    /// fetching existed have none: their layers were all unpacked.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    /// Whether the layer is unpacked in the store; a fetched layer is unpacked by the
    /// first [`Store::get`] that needs it.
    #[serde(default = "unpacked_by_default")]
    pub unpacked: bool,
}

/// Records written before fetching existed describe unpacked layers only.
fn unpacked_by_default() -> bool {
    true
}

/// What the store knows about one pulled reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The reference, fully qualified (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// The manifest's digest for this host's platform.
    pub digest: String,
    /// `os/architecture` of that manifest.
    pub platform: String,
    /// The configuration blob's digest.
    pub config_digest: String,
    /// Lowest first.
    pub layers: Vec<LayerInfo>,
    pub config: ak_core::ImageConfig,
    /// When it was pulled, seconds since the Unix epoch.
    pub pulled_at: u64,
}

impl ImageInfo {
    /// Unpacked bytes of its layers unpacked so far (shared layers counted in each image).
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// What [`Store::prune`] freed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pruned {
    pub layers: Vec<String>,
    pub bytes: u64,
}

/// The store's totals, for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSize {
    pub images: usize,
    /// Unpacked layers.
    pub layers: usize,
    /// Unpacked bytes of all layers, each counted once.
    pub bytes: u64,
    /// Layers fetched but not unpacked yet, and their compressed bytes.
    #[serde(default)]
    pub fetched_layers: usize,
    #[serde(default)]
    pub fetched_bytes: u64,
}

/// The platform this host runs, as OCI names it (`linux/amd64`).
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    ("linux", arch)
}
