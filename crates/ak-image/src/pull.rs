//! Pulling: resolve the reference to this host's manifest, fetch the configuration, and
//! download each missing layer, streaming the blob into the unpacker (a pull) or into a
//! blob file (a fetch) while the client checks its digest. A layer or blob is renamed into
//! the store only once both finished cleanly; the image's record is written last.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use ak_core::{ImageConfig, StoredImage};
use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::manifest::{self, OciDescriptor, OciImageIndex, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde::Deserialize;

use crate::auth::auth_for;
use crate::error::ImageError;
use crate::layers::{LayerWork, TempTree};
use crate::lock::LockFile;
use crate::reference::normalize;
use crate::store::{Store, hex_of, read_layer_file};
use crate::unpack::{Compression, unpack};
use crate::{ImageInfo, LayerInfo, LayerOutcome, PullOptions, PullProgress, host_platform};

/// Manifests and configurations are small JSON documents; anything bigger is refused
/// before it is parsed.
const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// Layers downloaded and unpacked at once (skopeo's default is 6 blobs; unpacking is
/// CPU work, so fewer).
const LAYERS_AT_ONCE: usize = 4;
/// Blob chunks in flight between the download and the unpacker.
const CHUNKS_IN_FLIGHT: usize = 64;

const MANIFEST_TYPES: &[&str] = &[
    manifest::OCI_IMAGE_MEDIA_TYPE,
    manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
    manifest::IMAGE_MANIFEST_MEDIA_TYPE,
    manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// A registry client for one pull, with the scheme that worked.
struct Remote {
    client: Client,
    auth: RegistryAuth,
    registry: String,
}

/// What a pull does with a layer it downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayerMode {
    /// Unpack it while it downloads: the image can be used at once.
    Unpack,
    /// Keep the verified blob; the first use unpacks it.
    Fetch,
}

impl Store {
    /// Pulls `reference` from its registry and unpacks its layers while they download
    /// (layers already in the store are not downloaded again). A second pull of the same
    /// image, here or in another process, waits for the first and then finds its layers.
    pub async fn pull(
        &self,
        reference: &str,
        options: &PullOptions,
        progress: &dyn PullProgress,
    ) -> Result<StoredImage, ImageError> {
        let (name, _locks) = self.lock_image(reference).await?;
        let info = self
            .pull_locked(&name, options, LayerMode::Unpack, progress)
            .await?;
        Ok(self.stored(&info))
    }

    /// Fetches `reference` from its registry: the verified layer blobs and the image's
    /// record, without unpacking anything (the first [`Store::get`] of the image does).
    pub async fn fetch(
        &self,
        reference: &str,
        options: &PullOptions,
        progress: &dyn PullProgress,
    ) -> Result<ImageInfo, ImageError> {
        let (name, _locks) = self.lock_image(reference).await?;
        self.pull_locked(&name, options, LayerMode::Fetch, progress)
            .await
    }

    /// Pulls `reference` unless another puller brought it in while this one waited.
    pub(crate) async fn pull_missing(
        &self,
        reference: &str,
        options: &PullOptions,
        progress: &dyn PullProgress,
    ) -> Result<StoredImage, ImageError> {
        let (name, locks) = self.lock_image(reference).await?;
        if self.inspect(&name)?.is_some() {
            // Unpacking a fetched image may need the image's lock (to forget it when a
            // layer is hostile): not while this holds it.
            drop(locks);
            return self
                .get(&name)
                .await?
                .ok_or_else(|| ImageError::NotFound(name.clone()));
        }
        let info = self
            .pull_locked(&name, options, LayerMode::Unpack, progress)
            .await?;
        Ok(self.stored(&info))
    }

    async fn lock_image(&self, reference: &str) -> Result<(String, [LockFile; 2]), ImageError> {
        let name = normalize(reference)?;
        let gc = self.gc_lock_shared().await?;
        let image = LockFile::acquire(&self.lock_path("image", &name), true).await?;
        Ok((name, [gc, image]))
    }

    async fn pull_locked(
        &self,
        name: &str,
        options: &PullOptions,
        mode: LayerMode,
        progress: &dyn PullProgress,
    ) -> Result<ImageInfo, ImageError> {
        let reference: Reference =
            name.parse()
                .map_err(|e: oci_client::ParseError| ImageError::InvalidReference {
                    reference: name.to_string(),
                    why: e.to_string(),
                })?;
        let (remote, bytes, digest) = Remote::connect(&reference, options).await?;
        let (manifest_ref, manifest, digest, platform) =
            remote.resolve(&reference, bytes, digest).await?;
        let (config_bytes, config) = self.config(&remote, &manifest_ref, &manifest).await?;

        // Several layers at once: each is a download feeding its own unpacking (or
        // writing) thread. Collected first: a lazy `map` inside the stream makes the
        // future's `Send` depend on a closure's lifetimes, which callers that must be
        // `Send` (the MCP tools) cannot prove.
        let pending: Vec<_> = manifest
            .layers
            .iter()
            .map(|layer| self.layer(&remote, &manifest_ref, layer, mode, progress))
            .collect();
        let layers: Vec<LayerInfo> = futures_util::stream::iter(pending)
            .buffered(LAYERS_AT_ONCE)
            .try_collect()
            .await?;
        // The configuration is kept only with a complete image: a failed pull leaves none.
        let config_digest = manifest.config.digest.clone();
        let config_path = self.config_path(&config_digest);
        if !config_path.exists() {
            self.write_bytes(&config_path, &config_bytes)?;
        }
        let info = ImageInfo {
            reference: name.to_string(),
            digest,
            platform,
            config_digest,
            layers,
            config,
            pulled_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        self.write_json(&self.ref_path(name), &info)?;
        Ok(info)
    }

    /// The image configuration (its bytes, and what a sandbox uses of it): from the
    /// store when this digest was pulled before.
    async fn config(
        &self,
        remote: &Remote,
        reference: &Reference,
        manifest: &OciImageManifest,
    ) -> Result<(Vec<u8>, ImageConfig), ImageError> {
        let descriptor = &manifest.config;
        check_digest(&descriptor.digest)?;
        if u64::try_from(descriptor.size).unwrap_or(u64::MAX) > MAX_CONFIG_BYTES {
            return Err(ImageError::TooLarge {
                what: "image configuration",
                size: u64::try_from(descriptor.size).unwrap_or(u64::MAX),
                limit: MAX_CONFIG_BYTES,
            });
        }
        let path = self.config_path(&descriptor.digest);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = Vec::new();
                remote
                    .client
                    .pull_blob(reference, descriptor, &mut bytes)
                    .await
                    .map_err(|e| remote.error(reference, "image configuration", e))?;
                bytes
            }
            Err(e) => return Err(ImageError::io(&path, e)),
        };
        let config = parse_config(&bytes)?;
        Ok((bytes, config))
    }

    /// One layer in the store, unpacked or (`Fetch`) at least fetched: downloaded unless
    /// it is there already (a lock per layer makes concurrent pullers of it wait for the
    /// first).
    async fn layer(
        &self,
        remote: &Remote,
        reference: &Reference,
        descriptor: &OciDescriptor,
        mode: LayerMode,
        progress: &dyn PullProgress,
    ) -> Result<LayerInfo, ImageError> {
        let digest = descriptor.digest.clone();
        check_digest(&digest)?;
        let compression = Compression::for_media_type(&descriptor.media_type)?;
        let size = u64::try_from(descriptor.size).map_err(|_| ImageError::Malformed {
            what: "manifest",
            why: format!("layer {digest} has a negative size"),
        })?;
        progress.layer_started(&digest, size);
        let _lock = LockFile::acquire(&self.lock_path("layer", &digest), true).await?;
        let layer = self.layer_locked(remote, reference, descriptor, compression, mode, progress);
        let (mut layer, outcome) = layer.await?;
        layer.media_type = descriptor.media_type.clone();
        progress.layer_done(&digest, outcome);
        Ok(layer)
    }

    async fn layer_locked(
        &self,
        remote: &Remote,
        reference: &Reference,
        descriptor: &OciDescriptor,
        compression: Compression,
        mode: LayerMode,
        progress: &dyn PullProgress,
    ) -> Result<(LayerInfo, LayerOutcome), ImageError> {
        let digest = &descriptor.digest;
        let dir = self.layer_dir(digest);
        if dir.exists() {
            let file = read_layer_file(&dir)?;
            let layer = LayerInfo {
                digest: digest.clone(),
                compressed_size: file.compressed_size,
                size: file.size,
                media_type: String::new(),
                unpacked: true,
            };
            return Ok((layer, LayerOutcome::AlreadyPresent));
        }
        let blob = self.blob_path(digest);
        if let Ok(meta) = std::fs::metadata(&blob) {
            let layer = match mode {
                LayerMode::Unpack => self.unpack_blob(digest, compression).await?,
                LayerMode::Fetch => fetched(digest, meta.len()),
            };
            return Ok((layer, LayerOutcome::AlreadyPresent));
        }
        let layer = match mode {
            LayerMode::Unpack => {
                // Built under tmp/ and renamed into place whole; dropped (removed) on any
                // failure.
                let work = LayerWork::new(self, digest)?;
                let (root, ids, owned_digest) = (work.root.clone(), self.ids, digest.clone());
                let (done, unpacked) = remote
                    .download(reference, descriptor, progress, move |blob| {
                        unpack(blob, compression, &root, ids, &owned_digest)
                    })
                    .await?;
                work.install(digest, done, unpacked)?
            }
            LayerMode::Fetch => {
                let tmp = TempTree {
                    store: self,
                    path: self.temp_path(&format!("blob-{}", hex_of(digest))),
                };
                let path = tmp.path.clone();
                let (done, ()) = remote
                    .download(reference, descriptor, progress, move |mut blob| {
                        let mut file =
                            std::fs::File::create(&path).map_err(|e| ImageError::io(&path, e))?;
                        std::io::copy(&mut blob, &mut file)
                            .map_err(|e| ImageError::io(&path, e))?;
                        Ok(())
                    })
                    .await?;
                std::fs::rename(&tmp.path, &blob).map_err(|e| ImageError::io(&blob, e))?;
                std::mem::forget(tmp);
                fetched(digest, done)
            }
        };
        Ok((layer, LayerOutcome::Downloaded))
    }
}

/// A layer whose verified blob is in the store, not unpacked yet.
fn fetched(digest: &str, compressed_size: u64) -> LayerInfo {
    LayerInfo {
        digest: digest.to_string(),
        compressed_size,
        size: 0,
        media_type: String::new(),
        unpacked: false,
    }
}

/// The unpacker's view of the download: a blocking `Read` over the chunks it is sent.
pub(crate) struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    chunk: bytes::Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> ChannelReader {
        ChannelReader {
            rx,
            chunk: bytes::Bytes::new(),
        }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        bytes::Buf::advance(&mut self.chunk, n);
        Ok(n)
    }
}

impl Remote {
    /// Downloads a blob into `consume`, which reads it on a blocking thread (unpacking or
    /// writing it) while the client checks its digest; the blob's size and what `consume`
    /// made. The whole blob is read even when `consume` stops early (the end of a tar
    /// archive may come before the end of the blob): its digest is checked at the end.
    async fn download<T: Send + 'static>(
        &self,
        reference: &Reference,
        descriptor: &OciDescriptor,
        progress: &dyn PullProgress,
        consume: impl FnOnce(ChannelReader) -> Result<T, ImageError> + Send + 'static,
    ) -> Result<(u64, T), ImageError> {
        let digest = &descriptor.digest;
        let mut stream = self
            .client
            .pull_blob_stream(reference, descriptor)
            .await
            .map_err(|e| self.error(reference, "layer", e))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(CHUNKS_IN_FLIGHT);
        let consumer = tokio::task::spawn_blocking(move || consume(ChannelReader::new(rx)));
        let mut tx = Some(tx);
        let mut done = 0u64;
        let mut download: Result<(), ImageError> = Ok(());
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    done += chunk.len() as u64;
                    progress.layer_progress(digest, done);
                    if let Some(sender) = &tx
                        && sender.send(chunk).await.is_err()
                    {
                        tx = None;
                    }
                }
                Err(e) => {
                    download = Err(stream_error(&self.registry, digest, e));
                    break;
                }
            }
        }
        drop(tx);
        let consumed = consumer
            .await
            .map_err(|e| ImageError::io(digest.as_str(), std::io::Error::other(e)));
        // A failed download explains a failed consumer (a cut stream is not a bad tar).
        download?;
        Ok((done, consumed??))
    }

    /// A client for the reference's registry, and the reference's manifest through it:
    /// HTTPS with verified certificates, unless the registry is listed insecure
    /// (certificates not verified). Insecure and loopback registries fall back to plain
    /// HTTP when HTTPS cannot connect, as Docker's do.
    async fn connect(
        reference: &Reference,
        options: &PullOptions,
    ) -> Result<(Remote, bytes::Bytes, String), ImageError> {
        let registry = reference.resolve_registry().to_string();
        let auth = auth_for(reference.registry(), options)?;
        let insecure = options
            .insecure_registries
            .iter()
            .any(|r| r == reference.registry() || r == &registry);
        let mut extra_roots = Vec::new();
        for path in &options.ca_files {
            let data = std::fs::read(path).map_err(|e| ImageError::CaFile {
                path: path.clone(),
                why: e.to_string(),
            })?;
            extra_roots.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let remote = |protocol| Remote {
            client: Client::new(ClientConfig {
                protocol,
                accept_invalid_certificates: insecure,
                extra_root_certificates: extra_roots.clone(),
                platform_resolver: None,
                ..ClientConfig::default()
            }),
            auth: auth.clone(),
            registry: registry.clone(),
        };
        let https = remote(ClientProtocol::Https);
        let first = match https.manifest(reference).await {
            Ok((bytes, digest)) => return Ok((https, bytes, digest)),
            Err(e) => e,
        };
        let may_fall_back = insecure || is_loopback(&registry);
        if !may_fall_back || !matches!(first, ImageError::Unreachable { .. }) {
            return Err(first);
        }
        let http = remote(ClientProtocol::Http);
        match http.manifest(reference).await {
            Ok((bytes, digest)) => Ok((http, bytes, digest)),
            // A registry that answers plain HTTP properly (an unknown image, a refused
            // login) speaks HTTP; otherwise the HTTPS failure says more (a certificate not
            // trusted, say) than an HTTPS server's answer to plain HTTP.
            Err(e @ (ImageError::UnknownImage { .. } | ImageError::Unauthorized { .. })) => Err(e),
            Err(_) => Err(first),
        }
    }

    /// The manifest (or index) `reference` names, after a login when the registry wants
    /// one.
    async fn manifest(&self, reference: &Reference) -> Result<(bytes::Bytes, String), ImageError> {
        self.client
            .auth(reference, &self.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| self.error(reference, "registry", e))?;
        self.client
            .pull_manifest_raw(reference, &self.auth, MANIFEST_TYPES)
            .await
            .map_err(|e| self.error(reference, "manifest", e))
    }

    /// The manifest for this host's platform (through an index when the reference names
    /// one), its reference by digest, its digest and its platform.
    async fn resolve(
        &self,
        reference: &Reference,
        bytes: bytes::Bytes,
        digest: String,
    ) -> Result<(Reference, OciImageManifest, String, String), ImageError> {
        let (os, arch) = host_platform();
        let platform = format!("{os}/{arch}");
        let kind: MediaTypeOnly = parse_json("manifest", &bytes)?;
        let is_index = matches!(
            kind.media_type.as_deref(),
            Some(manifest::OCI_IMAGE_INDEX_MEDIA_TYPE | manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE)
        ) || (kind.media_type.is_none() && kind.manifests.is_some());
        if !is_index {
            let manifest: OciImageManifest = parse_json("manifest", &bytes)?;
            let by_digest = reference.clone_with_digest(digest.clone());
            return Ok((by_digest, manifest, digest, platform));
        }
        let index: OciImageIndex = parse_json("image index", &bytes)?;
        let entry = index
            .manifests
            .iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os.to_string() == os && p.architecture.to_string() == arch)
            })
            .ok_or_else(|| ImageError::NoPlatform {
                platform: platform.clone(),
                available: index
                    .manifests
                    .iter()
                    .filter_map(|m| m.platform.as_ref())
                    .map(|p| format!("{}/{}", p.os, p.architecture))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        check_digest(&entry.digest)?;
        let by_digest = reference.clone_with_digest(entry.digest.clone());
        // Pulled by digest: the client checks the body against it.
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(&by_digest, &self.auth, MANIFEST_TYPES)
            .await
            .map_err(|e| self.error(&by_digest, "manifest", e))?;
        let manifest: OciImageManifest = parse_json("manifest", &bytes)?;
        Ok((by_digest, manifest, digest, platform))
    }

    /// The typed error for a client failure.
    fn error(
        &self,
        reference: &Reference,
        what: &'static str,
        e: OciDistributionError,
    ) -> ImageError {
        let registry = self.registry.clone();
        let why = chain(&e);
        match e {
            OciDistributionError::RequestError(ref r)
                if r.is_connect() || r.is_timeout() || r.is_request() =>
            {
                ImageError::Unreachable { registry, why }
            }
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => ImageError::Unauthorized {
                registry,
                reference: reference.whole(),
                why,
            },
            OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => ImageError::Unauthorized {
                registry,
                reference: reference.whole(),
                why,
            },
            OciDistributionError::ImageManifestNotFoundError(_)
            | OciDistributionError::ServerError { code: 404, .. } => ImageError::UnknownImage {
                registry,
                reference: reference.whole(),
            },
            OciDistributionError::RegistryError { ref envelope, .. }
                if envelope.errors.iter().any(|e| {
                    matches!(
                        format!("{:?}", e.code).as_str(),
                        "ManifestUnknown" | "NameUnknown" | "BlobUnknown"
                    )
                }) =>
            {
                ImageError::UnknownImage {
                    registry,
                    reference: reference.whole(),
                }
            }
            OciDistributionError::RegistryError { ref envelope, .. }
                if envelope.errors.iter().any(|e| {
                    matches!(format!("{:?}", e.code).as_str(), "Unauthorized" | "Denied")
                }) =>
            {
                ImageError::Unauthorized {
                    registry,
                    reference: reference.whole(),
                    why,
                }
            }
            OciDistributionError::DigestError(DigestError::VerificationError {
                expected,
                actual,
            }) => ImageError::DigestMismatch {
                what,
                digest: expected,
                actual,
            },
            _ => ImageError::Registry { registry, why },
        }
    }
}

/// A blob stream's failure: the client's digest check, or the connection.
fn stream_error(registry: &str, digest: &str, e: std::io::Error) -> ImageError {
    if let Some(DigestError::VerificationError { expected, actual }) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<DigestError>())
    {
        return ImageError::DigestMismatch {
            what: "layer",
            digest: expected.clone(),
            actual: actual.clone(),
        };
    }
    ImageError::Unreachable {
        registry: registry.to_string(),
        why: format!("downloading {digest}: {}", chain(&e)),
    }
}

/// An error with its sources (reqwest's own message alone says only "error sending
/// request").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        // `[::1]:5000`, `127.0.0.1:5000`, `localhost:5000`
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Only sha256 digests, well formed: the store names files by them.
fn check_digest(digest: &str) -> Result<(), ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(())
        }
        _ => Err(ImageError::UnsupportedDigest {
            digest: digest.to_string(),
        }),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MediaTypeOnly {
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
}

fn parse_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::Malformed {
        what,
        why: e.to_string(),
    })
}

/// The parts of an image configuration a sandbox uses (`config` of the OCI image config).
fn parse_config(bytes: &[u8]) -> Result<ImageConfig, ImageError> {
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "PascalCase")]
    struct Runtime {
        env: Option<Vec<String>>,
        working_dir: Option<String>,
        user: Option<String>,
        entrypoint: Option<Vec<String>>,
        cmd: Option<Vec<String>>,
    }
    #[derive(Deserialize)]
    struct Config {
        config: Option<Runtime>,
    }
    let config: Config = parse_json("image configuration", bytes)?;
    let runtime = config.config.unwrap_or_default();
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Ok(ImageConfig {
        env: runtime.env.unwrap_or_default(),
        working_dir: non_empty(runtime.working_dir),
        user: non_empty(runtime.user),
        entrypoint: runtime.entrypoint.unwrap_or_default(),
        cmd: runtime.cmd.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognised() {
        for r in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "docker.io",
            "10.0.0.1:5000",
            "example.com:443",
            "localhost.example.com",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn digests_must_be_sha256() {
        assert!(check_digest(&format!("sha256:{}", "a".repeat(64))).is_ok());
        for bad in ["sha512:aa", "sha256:../../etc", "sha256:AB", ""] {
            assert!(check_digest(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_fields_are_taken() {
        let c = parse_config(
            br#"{"architecture":"amd64","config":{"Env":["A=1"],"WorkingDir":"/w","User":"1:2","Entrypoint":["/e"],"Cmd":["c"]}}"#,
        )
        .unwrap();
        assert_eq!(c.env, vec!["A=1"]);
        assert_eq!(c.working_dir.as_deref(), Some("/w"));
        assert_eq!(c.user.as_deref(), Some("1:2"));
        assert_eq!(
            (c.entrypoint, c.cmd),
            (vec!["/e".to_string()], vec!["c".to_string()])
        );
        assert_eq!(parse_config(b"{}").unwrap(), ImageConfig::default());
        assert!(parse_config(b"not json").is_err());
    }
}
