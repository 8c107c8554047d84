//! The store on disk: opening it, the records of pulled references, and what lists,
//! inspects, removes and prunes them. Pulling is in `pull.rs`, unpacking in `unpack.rs`.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ak_core::StoredImage;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ImageError;
use crate::lock::LockFile;
use crate::reference::normalize;
use crate::{IdShift, ImageInfo, Pruned, PullOptions, PullPolicy, PullProgress, StoreSize};

/// The layout version written in `store.json`.
const FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    format: u32,
    ids: IdShift,
}

/// Sizes of an unpacked layer (`layer.json`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LayerFile {
    pub(crate) compressed_size: u64,
    pub(crate) size: u64,
}

/// The local OCI image store.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) dir: PathBuf,
    pub(crate) ids: IdShift,
}

impl Store {
    /// Opens (making it when missing) the store in `dir`. Its layers are written with
    /// `ids`; a store made with another shift is refused rather than handed out with
    /// owners that would be wrong in the sandbox.
    pub fn open(dir: &Path, ids: IdShift) -> Result<Store, ImageError> {
        for sub in [
            "layers/sha256",
            "blobs/sha256",
            "configs/sha256",
            "refs",
            "locks",
            "tmp",
        ] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|e| ImageError::io(&path, e))?;
        }
        // Layers hold setuid files of images: nobody else walks in.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| ImageError::io(dir, e))?;
        let file = dir.join("store.json");
        let wanted = StoreFile {
            format: FORMAT,
            ids,
        };
        match std::fs::read(&file) {
            Ok(bytes) => {
                let found: StoreFile =
                    serde_json::from_slice(&bytes).map_err(|e| ImageError::Malformed {
                        what: "store.json",
                        why: e.to_string(),
                    })?;
                if found.format != FORMAT {
                    return Err(ImageError::Malformed {
                        what: "store.json",
                        why: format!("format {} (this build reads {FORMAT})", found.format),
                    });
                }
                if found.ids != ids {
                    return Err(ImageError::IdShiftMismatch {
                        dir: dir.to_path_buf(),
                        stored_base: found.ids.base,
                        stored_range: found.ids.range,
                        base: ids.base,
                        range: ids.range,
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let store = Store {
                    dir: dir.to_path_buf(),
                    ids,
                };
                store.write_json(&file, &wanted)?;
            }
            Err(e) => return Err(ImageError::io(&file, e)),
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            ids,
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The image `reference` names, when it was pulled or fetched: its layers fetched
    /// but not unpacked yet are unpacked first.
    pub async fn get(&self, reference: &str) -> Result<Option<StoredImage>, ImageError> {
        match self.inspect(reference)? {
            Some(info) => Ok(Some(self.unpacked(&info).await?)),
            None => Ok(None),
        }
    }

    /// Everything the store records about `reference`, when it was pulled.
    pub fn inspect(&self, reference: &str) -> Result<Option<ImageInfo>, ImageError> {
        let name = normalize(reference)?;
        let path = self.ref_path(&name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(self.current(parse_record(&path, &bytes)?)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::io(&path, e)),
        }
    }

    /// A record with its fetched layers' state as it is now: the first use of an image
    /// unpacks them without rewriting the records that name them.
    fn current(&self, mut info: ImageInfo) -> Result<ImageInfo, ImageError> {
        for layer in info.layers.iter_mut().filter(|l| !l.unpacked) {
            let dir = self.layer_dir(&layer.digest);
            if dir.exists() {
                layer.size = read_layer_file(&dir)?.size;
                layer.unpacked = true;
            }
        }
        Ok(info)
    }

    /// Every pulled reference, sorted by name.
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let dir = self.dir.join("refs");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| ImageError::io(&dir, e))? {
            let path = entry.map_err(|e| ImageError::io(&dir, e))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let bytes = std::fs::read(&path).map_err(|e| ImageError::io(&path, e))?;
                out.push(self.current(parse_record(&path, &bytes)?)?);
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// The image, pulled when `policy` says so.
    pub async fn ensure(
        &self,
        reference: &str,
        policy: PullPolicy,
        options: &PullOptions,
        progress: &dyn PullProgress,
    ) -> Result<StoredImage, ImageError> {
        match policy {
            PullPolicy::Always => self.pull(reference, options, progress).await,
            PullPolicy::Never => self
                .get(reference)
                .await?
                .ok_or_else(|| ImageError::NotFound(normalize(reference).unwrap_or_default())),
            PullPolicy::Missing => match self.get(reference).await? {
                Some(image) => Ok(image),
                None => self.pull_missing(reference, options, progress).await,
            },
        }
    }

    /// Forgets `reference`. Its layers stay until [`Store::prune`] (another image, or a
    /// running sandbox, may still stack them). Which sandboxes use an image is the
    /// service's knowledge: it refuses the removal of an image in use before calling this.
    pub async fn remove(&self, reference: &str) -> Result<ImageInfo, ImageError> {
        let name = normalize(reference)?;
        let _gc = self.gc_lock().await?;
        let path = self.ref_path(&name);
        let info = self
            .inspect(&name)?
            .ok_or_else(|| ImageError::NotFound(name.clone()))?;
        std::fs::remove_file(&path).map_err(|e| ImageError::io(&path, e))?;
        Ok(info)
    }

    /// Removes the layers, fetched blobs and configurations no image references, except the layer
    /// directories in `keep` (those of running sandboxes whose image was removed or
    /// re-tagged). Also clears work left in `tmp/` by a process that died mid-pull.
    pub async fn prune(&self, keep: &[PathBuf]) -> Result<Pruned, ImageError> {
        let _gc = self.gc_lock().await?;
        let images = self.list()?;
        let mut used_layers: HashSet<String> = HashSet::new();
        let mut used_configs: HashSet<String> = HashSet::new();
        for image in &images {
            used_configs.insert(hex_of(&image.config_digest).to_string());
            for layer in &image.layers {
                used_layers.insert(hex_of(&layer.digest).to_string());
            }
        }
        let mut pruned = Pruned::default();
        let layers = self.dir.join("layers/sha256");
        for entry in std::fs::read_dir(&layers).map_err(|e| ImageError::io(&layers, e))? {
            let entry = entry.map_err(|e| ImageError::io(&layers, e))?;
            let hex = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if used_layers.contains(&hex) || keep.iter().any(|k| k.starts_with(&path)) {
                continue;
            }
            let size = read_layer_file(&path).map(|l| l.size).unwrap_or(0);
            self.remove_tree(&path)?;
            pruned.layers.push(format!("sha256:{hex}"));
            pruned.bytes += size;
        }
        let blobs = self.dir.join("blobs/sha256");
        for entry in std::fs::read_dir(&blobs).map_err(|e| ImageError::io(&blobs, e))? {
            let entry = entry.map_err(|e| ImageError::io(&blobs, e))?;
            let hex = entry.file_name().to_string_lossy().into_owned();
            // A blob beside its unpacked layer is left from a process that died between
            // the two steps: the layer has it all.
            if used_layers.contains(&hex) && !layers.join(&hex).exists() {
                continue;
            }
            let path = entry.path();
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(&path).map_err(|e| ImageError::io(&path, e))?;
            pruned.layers.push(format!("sha256:{hex}"));
            pruned.bytes += size;
        }
        let configs = self.dir.join("configs/sha256");
        for entry in std::fs::read_dir(&configs).map_err(|e| ImageError::io(&configs, e))? {
            let path = entry.map_err(|e| ImageError::io(&configs, e))?.path();
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            if stem.is_some_and(|s| !used_configs.contains(&s)) {
                std::fs::remove_file(&path).map_err(|e| ImageError::io(&path, e))?;
            }
        }
        // No pull runs while the gc lock is held exclusively: everything in tmp/ is left
        // over from a process that died.
        let tmp = self.dir.join("tmp");
        for entry in std::fs::read_dir(&tmp).map_err(|e| ImageError::io(&tmp, e))? {
            let path = entry.map_err(|e| ImageError::io(&tmp, e))?.path();
            self.remove_tree(&path)?;
        }
        pruned.layers.sort();
        Ok(pruned)
    }

    /// Image count, the unpacked bytes of all layers (each counted once) and the fetched
    /// blobs waiting to be unpacked.
    pub fn size(&self) -> Result<StoreSize, ImageError> {
        let images = self.list()?.len();
        let layers_dir = self.dir.join("layers/sha256");
        let mut size = StoreSize {
            images,
            ..StoreSize::default()
        };
        for entry in std::fs::read_dir(&layers_dir).map_err(|e| ImageError::io(&layers_dir, e))? {
            let path = entry.map_err(|e| ImageError::io(&layers_dir, e))?.path();
            size.layers += 1;
            size.bytes += read_layer_file(&path)?.size;
        }
        let blobs = self.dir.join("blobs/sha256");
        for entry in std::fs::read_dir(&blobs).map_err(|e| ImageError::io(&blobs, e))? {
            let entry = entry.map_err(|e| ImageError::io(&blobs, e))?;
            size.fetched_layers += 1;
            size.fetched_bytes += entry
                .metadata()
                .map_err(|e| ImageError::io(entry.path(), e))?
                .len();
        }
        Ok(size)
    }

    /// The [`StoredImage`] the backends get for a record whose layers are all unpacked.
    pub(crate) fn stored(&self, info: &ImageInfo) -> StoredImage {
        StoredImage {
            reference: info.reference.clone(),
            digest: info.digest.clone(),
            layers: info
                .layers
                .iter()
                .map(|l| self.layer_dir(&l.digest).join("root"))
                .collect(),
            config: info.config.clone(),
            id_base: self.ids.base,
        }
    }

    pub(crate) fn ref_path(&self, name: &str) -> PathBuf {
        let hash = Sha256::digest(name.as_bytes());
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join("refs").join(format!("{hex}.json"))
    }

    pub(crate) fn layer_dir(&self, digest: &str) -> PathBuf {
        self.dir.join("layers/sha256").join(hex_of(digest))
    }

    pub(crate) fn config_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("configs/sha256")
            .join(format!("{}.json", hex_of(digest)))
    }

    pub(crate) fn lock_path(&self, kind: &str, key: &str) -> PathBuf {
        let hash = Sha256::digest(key.as_bytes());
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join("locks").join(format!("{kind}-{hex}.lock"))
    }

    /// Pulls hold it shared, removal and prune exclusively: a layer a pull is about to
    /// reference is never pruned under it.
    pub(crate) async fn gc_lock(&self) -> Result<LockFile, ImageError> {
        LockFile::acquire(&self.dir.join("locks/gc.lock"), true).await
    }

    pub(crate) async fn gc_lock_shared(&self) -> Result<LockFile, ImageError> {
        LockFile::acquire(&self.dir.join("locks/gc.lock"), false).await
    }

    /// Writes `value` as JSON to `path` atomically (a temp file in `tmp/`, then rename).
    pub(crate) fn write_json<T: Serialize>(
        &self,
        path: &Path,
        value: &T,
    ) -> Result<(), ImageError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| ImageError::Malformed {
            what: "record",
            why: e.to_string(),
        })?;
        self.write_bytes(path, &bytes)
    }

    /// Writes `bytes` to `path` atomically (a temp file in `tmp/`, then rename).
    pub(crate) fn write_bytes(&self, path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
        let tmp = tempfile::NamedTempFile::new_in(self.dir.join("tmp"))
            .map_err(|e| ImageError::io(self.dir.join("tmp"), e))?;
        std::fs::write(tmp.path(), bytes).map_err(|e| ImageError::io(tmp.path(), e))?;
        tmp.persist(path)
            .map_err(|e| ImageError::io(path, e.error))?;
        Ok(())
    }

    /// Removes a directory tree the store made: moved out of sight first (one rename), so
    /// nobody sees it half gone. Layer directories may be read-only (an image's mode
    /// bits): made writable for their owner when removal needs it.
    pub(crate) fn remove_tree(&self, path: &Path) -> Result<(), ImageError> {
        let doomed = if path.starts_with(self.dir.join("tmp")) {
            path.to_path_buf()
        } else {
            let doomed = self.dir.join("tmp").join(format!("doomed-{}", uuid_like()));
            std::fs::rename(path, &doomed).map_err(|e| ImageError::io(path, e))?;
            doomed
        };
        let meta = std::fs::symlink_metadata(&doomed).map_err(|e| ImageError::io(&doomed, e))?;
        if !meta.is_dir() {
            return std::fs::remove_file(&doomed).map_err(|e| ImageError::io(&doomed, e));
        }
        match std::fs::remove_dir_all(&doomed) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                make_dirs_writable(&doomed)?;
                std::fs::remove_dir_all(&doomed).map_err(|e| ImageError::io(&doomed, e))
            }
            Err(e) => Err(ImageError::io(&doomed, e)),
        }
    }
}

/// A name for a temp entry, unique across processes and threads.
pub(crate) fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Adds owner write and search permission to every directory under `dir` (never through
/// a symlink).
fn make_dirs_writable(dir: &Path) -> Result<(), ImageError> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| ImageError::io(dir, e))?;
    if !meta.is_dir() {
        return Ok(());
    }
    let mode = meta.permissions().mode() | 0o700;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ImageError::io(dir, e))?;
    for entry in std::fs::read_dir(dir).map_err(|e| ImageError::io(dir, e))? {
        let path = entry.map_err(|e| ImageError::io(dir, e))?.path();
        make_dirs_writable(&path)?;
    }
    Ok(())
}

pub(crate) fn read_layer_file(layer_dir: &Path) -> Result<LayerFile, ImageError> {
    let path = layer_dir.join("layer.json");
    let bytes = std::fs::read(&path).map_err(|e| ImageError::io(&path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| ImageError::Malformed {
        what: "layer.json",
        why: format!("{}: {e}", path.display()),
    })
}

fn parse_record(path: &Path, bytes: &[u8]) -> Result<ImageInfo, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::Malformed {
        what: "image record",
        why: format!("{}: {e}", path.display()),
    })
}

/// The hex part of a `sha256:…` digest (already validated where it came in).
pub(crate) fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}
