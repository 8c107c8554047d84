//! Layers in the store: one is unpacked under `tmp/` and renamed into `layers/` whole, from
//! a download (`pull.rs`) or from a blob fetched earlier (here). A fetched blob is unpacked
//! by the first [`Store::get`] that needs it; a blob that turns out hostile is removed with
//! the image that named it, so nothing that can never be used stays behind.

use std::path::PathBuf;

use ak_core::StoredImage;

use crate::error::ImageError;
use crate::lock::LockFile;
use crate::store::{LayerFile, Store, hex_of, uuid_like};
use crate::unpack::{Compression, Unpacked, unpack};
use crate::{ImageInfo, LayerInfo};

/// Read buffer of a fetched blob being unpacked (the gzip and tar readers read small).
const BLOB_READ_BUFFER: usize = 256 << 10;

/// A layer being unpacked into `root` under `tmp/`: [`LayerWork::install`] renames it into
/// the store, and dropping it unfinished removes it.
pub(crate) struct LayerWork<'a> {
    tree: TempTree<'a>,
    pub(crate) root: PathBuf,
}

impl<'a> LayerWork<'a> {
    pub(crate) fn new(store: &'a Store, digest: &str) -> Result<LayerWork<'a>, ImageError> {
        let tree = store.temp_path(&format!("layer-{}", hex_of(digest)));
        let tree = TempTree { store, path: tree };
        let root = tree.path.join("root");
        std::fs::create_dir_all(&root).map_err(|e| ImageError::io(&root, e))?;
        Ok(LayerWork { tree, root })
    }

    /// Puts the finished layer into the store under its digest (the caller holds the
    /// layer's lock).
    pub(crate) fn install(
        self,
        digest: &str,
        compressed_size: u64,
        unpacked: Unpacked,
    ) -> Result<LayerInfo, ImageError> {
        let store = self.tree.store;
        let file = LayerFile {
            compressed_size,
            size: unpacked.size,
        };
        store.write_json(&self.tree.path.join("layer.json"), &file)?;
        let dir = store.layer_dir(digest);
        std::fs::rename(&self.tree.path, &dir).map_err(|e| ImageError::io(&dir, e))?;
        std::mem::forget(self.tree);
        Ok(LayerInfo {
            digest: digest.to_string(),
            compressed_size,
            size: unpacked.size,
            media_type: String::new(),
            unpacked: true,
        })
    }
}

/// A path under `tmp/` (a directory or a file) removed when dropped: work of a pull that
/// failed or was cancelled.
pub(crate) struct TempTree<'a> {
    pub(crate) store: &'a Store,
    pub(crate) path: PathBuf,
}

impl Drop for TempTree<'_> {
    fn drop(&mut self) {
        if self.path.symlink_metadata().is_err() {
            return;
        }
        if let Err(e) = self.store.remove_tree(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove unfinished work");
        }
    }
}

impl Store {
    /// A fresh path under `tmp/` for work named `what`.
    pub(crate) fn temp_path(&self, what: &str) -> PathBuf {
        self.dir.join("tmp").join(format!("{what}-{}", uuid_like()))
    }

    /// Unpacks the fetched layers of `info` (each once, whoever asks first), so that every
    /// layer of the image it returns is a directory. A layer whose blob cannot be unpacked
    /// (not a tar, hostile) costs the image its record: it could never run.
    pub(crate) async fn unpacked(&self, info: &ImageInfo) -> Result<StoredImage, ImageError> {
        if info.layers.iter().any(|l| !l.unpacked) {
            let _gc = self.gc_lock_shared().await?;
            for layer in info.layers.iter().filter(|l| !l.unpacked) {
                if let Err(e) = self.unpack_fetched(info, layer).await {
                    if matches!(
                        e,
                        ImageError::HostileLayer { .. } | ImageError::NotATar { .. }
                    ) {
                        self.forget_broken(info).await?;
                    }
                    return Err(e);
                }
            }
        }
        Ok(self.stored(info))
    }

    /// One fetched layer unpacked into the store, unless another process did it first.
    async fn unpack_fetched(&self, info: &ImageInfo, layer: &LayerInfo) -> Result<(), ImageError> {
        let _lock = LockFile::acquire(&self.lock_path("layer", &layer.digest), true).await?;
        if self.layer_dir(&layer.digest).exists() {
            return Ok(());
        }
        if !self.blob_path(&layer.digest).exists() {
            return Err(ImageError::LayerMissing {
                reference: info.reference.clone(),
                digest: layer.digest.clone(),
            });
        }
        let compression = Compression::for_media_type(&layer.media_type)?;
        self.unpack_blob(&layer.digest, compression).await?;
        Ok(())
    }

    /// Unpacks the fetched blob of `digest` into the store and removes the blob (the caller
    /// holds the layer's lock). A blob that fails to unpack is removed too: its digest was
    /// right, so fetching it again would give the same bytes.
    pub(crate) async fn unpack_blob(
        &self,
        digest: &str,
        compression: Compression,
    ) -> Result<LayerInfo, ImageError> {
        let blob = self.blob_path(digest);
        let work = LayerWork::new(self, digest)?;
        let unpacked = {
            let (path, root, ids, digest) = (
                blob.clone(),
                work.root.clone(),
                self.ids,
                digest.to_string(),
            );
            tokio::task::spawn_blocking(move || {
                let file = std::fs::File::open(&path).map_err(|e| ImageError::io(&path, e))?;
                let compressed_size = file.metadata().map_err(|e| ImageError::io(&path, e))?;
                let reader = std::io::BufReader::with_capacity(BLOB_READ_BUFFER, file);
                Ok::<_, ImageError>((
                    compressed_size.len(),
                    unpack(reader, compression, &root, ids, &digest)?,
                ))
            })
            .await
            .map_err(|e| ImageError::io(&blob, std::io::Error::other(e)))?
        };
        let (compressed_size, unpacked) = match unpacked {
            Ok(done) => done,
            Err(e) => {
                if matches!(
                    e,
                    ImageError::HostileLayer { .. } | ImageError::NotATar { .. }
                ) {
                    std::fs::remove_file(&blob).map_err(|e| ImageError::io(&blob, e))?;
                }
                return Err(e);
            }
        };
        let layer = work.install(digest, compressed_size, unpacked)?;
        std::fs::remove_file(&blob).map_err(|e| ImageError::io(&blob, e))?;
        Ok(layer)
    }

    /// Removes the record of an image one of whose layers can never be unpacked, unless
    /// it was pulled again meanwhile (under the image's lock, as pulls are).
    async fn forget_broken(&self, info: &ImageInfo) -> Result<(), ImageError> {
        let _image = LockFile::acquire(&self.lock_path("image", &info.reference), true).await?;
        if self
            .inspect(&info.reference)?
            .is_some_and(|now| now.digest == info.digest && now.layers.iter().any(|l| !l.unpacked))
        {
            let path = self.ref_path(&info.reference);
            std::fs::remove_file(&path).map_err(|e| ImageError::io(&path, e))?;
        }
        Ok(())
    }

    /// Where a fetched, not yet unpacked, layer blob is kept.
    pub(crate) fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(hex_of(digest))
    }
}
