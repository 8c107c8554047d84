//! Image store operations (`agentkernel image …`, and the pulls sandboxes need): the one
//! place that decides who may do what with the store, and what a sandbox still uses.
//!
//! Remote callers (API, MCP) may list, inspect and pull; removing and pruning change what
//! the local user's sandboxes can run, so they are the local user's. Answers are
//! [`ImageInfo`]s: digests and configuration, never host paths or credentials.

use std::path::{Path, PathBuf};

use ak_core::image_options::ImageOptions;
use ak_core::{BackendKind, ConfigError, ImageRef, StoredImage};
use ak_image::{
    IdShift, ImageError, ImageInfo, Pruned, PullOptions, PullPolicy, PullProgress,
    RegistryCredential, Store, StoreSize,
};

use crate::{Caller, Service, ServiceError};

/// Where the image store lives and how it reaches registries. The binary decides: the id
/// shift is the user mapping of the backends that stack the layers.
#[derive(Debug, Clone)]
pub struct ImageSetup {
    pub dir: PathBuf,
    pub ids: IdShift,
    /// From [`pull_options`]; a bad `[images]` table fails the operations that reach a
    /// registry (with its message), not every command.
    pub options: Result<PullOptions, String>,
}

/// The store's pull options from `[images]` (checked) and, when it says so, Docker's
/// `config.json` under `home`.
pub fn pull_options(
    images: &ImageOptions,
    home: Option<&Path>,
) -> Result<PullOptions, ConfigError> {
    let images = images.checked()?;
    let mut credentials = Vec::new();
    for (registry, login) in &images.credentials {
        credentials.push(RegistryCredential {
            registry: registry.clone(),
            username: login.username.clone(),
            password: login.password(registry)?,
        });
    }
    Ok(PullOptions {
        insecure_registries: images.insecure_registries.clone(),
        credentials,
        docker_config: images
            .use_docker_config()
            .then(|| home.map(|h| h.join(".docker/config.json")))
            .flatten(),
        ca_files: images.ca_files.clone(),
    })
}

impl Service {
    /// The stored image `reference` names, if the store has it (never pulls; unpacks the
    /// layers only fetched so far).
    pub(crate) async fn stored_image(
        &self,
        reference: &str,
    ) -> Result<Option<StoredImage>, ServiceError> {
        Ok(self.image_store()?.get(reference).await?)
    }

    /// The image store, opened on first use.
    pub fn image_store(&self) -> Result<&Store, ServiceError> {
        let setup = self
            .images
            .as_ref()
            .ok_or_else(|| ServiceError::Unavailable("this service has no image store".into()))?;
        self.image_store
            .get_or_init(|| Store::open(&setup.dir, setup.ids).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| ServiceError::State(e.clone()))
    }

    fn pull_options(&self) -> Result<&PullOptions, ServiceError> {
        let setup = self
            .images
            .as_ref()
            .ok_or_else(|| ServiceError::Unavailable("this service has no image store".into()))?;
        setup
            .options
            .as_ref()
            .map_err(|e| ServiceError::InvalidInput(e.clone()))
    }

    /// Pulls `reference` into the store (layers it has are not downloaded again): its
    /// verified blobs, unpacked by the first sandbox that uses them, or with `unpack`
    /// unpacked while they download.
    pub async fn image_pull(
        &self,
        caller: Caller,
        reference: &str,
        unpack: bool,
        progress: &dyn PullProgress,
    ) -> Result<ImageInfo, ServiceError> {
        let result = async {
            let store = self.image_store()?;
            let options = self.pull_options()?;
            let reference = if unpack {
                store.pull(reference, options, progress).await?.reference
            } else {
                store.fetch(reference, options, progress).await?.reference
            };
            store
                .inspect(&reference)?
                .ok_or_else(|| ServiceError::NoSuch(format!("image {reference}")))
        }
        .await;
        self.audited(
            caller,
            "image pull",
            None,
            Some(reference.to_string()),
            result,
        )
    }

    /// The image for a sandbox, pulled when `policy` says so: what the backends that
    /// stack layers are handed.
    pub async fn ensure_image(
        &self,
        reference: &str,
        policy: PullPolicy,
        progress: &dyn PullProgress,
    ) -> Result<StoredImage, ServiceError> {
        let store = self.image_store()?;
        Ok(store
            .ensure(reference, policy, self.pull_options()?, progress)
            .await?)
    }

    /// Every image in the store.
    pub fn image_list(&self, _caller: Caller) -> Result<Vec<ImageInfo>, ServiceError> {
        Ok(self.image_store()?.list()?)
    }

    /// One image of the store.
    pub fn image_inspect(
        &self,
        _caller: Caller,
        reference: &str,
    ) -> Result<ImageInfo, ServiceError> {
        let store = self.image_store()?;
        store
            .inspect(reference)?
            .ok_or_else(|| ImageError::NotFound(reference.to_string()).into())
    }

    /// Removes an image from the store, refused while a sandbox in the registry uses it
    /// (its layers stay until [`Service::image_prune`]).
    pub async fn image_remove(
        &self,
        caller: Caller,
        reference: &str,
    ) -> Result<ImageInfo, ServiceError> {
        let result = async {
            local_only(caller, "removing images")?;
            let store = self.image_store()?;
            let info = store
                .inspect(reference)?
                .ok_or_else(|| ImageError::NotFound(reference.to_string()))?;
            let users = self.sandboxes_using(&info)?;
            if !users.is_empty() {
                return Err(ImageError::InUse {
                    reference: info.reference.clone(),
                    users: format!("sandbox {}", users.join(", ")),
                }
                .into());
            }
            Ok(store.remove(reference).await?)
        }
        .await;
        self.audited(
            caller,
            "image remove",
            None,
            Some(reference.to_string()),
            result,
        )
    }

    /// Removes the layers no image references, keeping those of sandboxes in the
    /// registry.
    pub async fn image_prune(&self, caller: Caller) -> Result<Pruned, ServiceError> {
        let result = async {
            local_only(caller, "pruning images")?;
            let store = self.image_store()?;
            let mut keep = Vec::new();
            for record in self.registry()?.list()? {
                if let ImageRef::Stored(image) = &record.spec.image {
                    keep.extend(image.layers.iter().cloned());
                }
            }
            Ok(store.prune(&keep).await?)
        }
        .await;
        self.audited(caller, "image prune", None, None, result)
    }

    /// The store's image count and size, for `status`.
    pub fn image_store_size(&self) -> Result<StoreSize, ServiceError> {
        Ok(self.image_store()?.size()?)
    }

    /// Names of the registry's sandboxes whose image is `info`: stacked from the store,
    /// or named by reference on a backend that takes its images from the store.
    fn sandboxes_using(&self, info: &ImageInfo) -> Result<Vec<String>, ServiceError> {
        let mut users = Vec::new();
        for record in self.registry()?.list()? {
            let uses = match &record.spec.image {
                ImageRef::Stored(image) => image.digest == info.digest,
                ImageRef::Oci(name) => {
                    !matches!(record.backend, BackendKind::Docker | BackendKind::Podman)
                        && ak_image::normalize(name).is_ok_and(|n| n == info.reference)
                }
                _ => false,
            };
            if uses {
                users.push(record.name);
            }
        }
        Ok(users)
    }
}

fn local_only(caller: Caller, what: &str) -> Result<(), ServiceError> {
    if caller.is_remote() {
        return Err(ServiceError::Forbidden(format!(
            "{what} is for the local user only"
        )));
    }
    Ok(())
}
