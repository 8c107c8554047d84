//! An image's root file system written out as a directory tree, for backends that boot
//! images themselves (the microvm backend packs it into a disk): a stopped container is
//! created from the image, exported through the Engine API, unpacked and removed.

use std::io::Write;
use std::path::Path;

use bollard::query_parameters::CreateContainerOptionsBuilder;
use futures_util::StreamExt;

use crate::DockerBackend;
use crate::container::{LABEL_CREATOR, LABEL_LIFETIME, LABEL_SANDBOX};
use crate::error::DockerError;
use crate::images;

impl DockerBackend {
    /// `image`'s content id (pulled first when missing): what its export is cached by.
    pub async fn image_id(&self, image: &str) -> Result<String, DockerError> {
        let client = self.client().await?;
        images::ensure_present(client, image, self.progress.as_deref()).await?;
        let inspected = client
            .inspect_image(image)
            .await
            .map_err(DockerError::engine(format!("inspect image {image}")))?;
        inspected
            .id
            .ok_or_else(|| DockerError::Agent(format!("the engine gave image {image} no id")))
    }

    /// Writes `image`'s root file system into `dir` (an empty directory).
    pub async fn export_root(&self, image: &str, dir: &Path) -> Result<(), DockerError> {
        let client = self.client().await?;
        images::ensure_present(client, image, self.progress.as_deref()).await?;
        let marker = format!("export-{}", std::process::id());
        let creator = ak_core::process::identity(std::process::id()).unwrap_or_default();
        // Labelled like a one-shot sandbox, so that the sweep removes it should this
        // process die before it does.
        let labels = std::collections::HashMap::from([
            (LABEL_SANDBOX.to_string(), marker.clone()),
            (LABEL_LIFETIME.to_string(), "ephemeral".to_string()),
            (LABEL_CREATOR.to_string(), creator),
        ]);
        let body = bollard::models::ContainerCreateBody {
            image: Some(image.to_string()),
            // Never run: a command is only needed for images that have none.
            cmd: Some(vec!["/nonexistent".to_string()]),
            labels: Some(labels),
            network_disabled: Some(true),
            ..Default::default()
        };
        // Unique: two exports of one process never share a name.
        let name = format!(
            "agentkernel-{marker}-{}",
            &ak_core::spec::new_sandbox_id()[..8]
        );
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let container = client
            .create_container(Some(options), body)
            .await
            .map_err(DockerError::engine(format!(
                "create a container from {image}"
            )))?
            .id;
        let exported = self.unpack_export(&container, dir).await;
        let removed = crate::sandbox::remove(client, &container, &dir.join(".none")).await;
        exported.and(removed)
    }

    async fn unpack_export(&self, container: &str, dir: &Path) -> Result<(), DockerError> {
        let client = self.client().await?;
        // The archive goes through a temporary file: unpacking is blocking work.
        let mut archive =
            tempfile::tempfile().map_err(DockerError::io("create a temporary file"))?;
        let mut stream = client.export_container(container);
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(DockerError::engine(format!("export container {container}")))?;
            archive
                .write_all(&chunk)
                .map_err(DockerError::io("write the exported archive"))?;
        }
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            use std::io::Seek;
            archive
                .seek(std::io::SeekFrom::Start(0))
                .map_err(DockerError::io("read the exported archive"))?;
            let mut tar = tar::Archive::new(archive);
            tar.set_preserve_permissions(true);
            tar.set_preserve_ownerships(rustix::process::geteuid().is_root());
            tar.set_unpack_xattrs(false);
            // `unpack` refuses entries that would land outside `dir`.
            tar.unpack(&dir).map_err(DockerError::io(format!(
                "unpack the image into {}",
                dir.display()
            )))
        })
        .await
        .map_err(|e| DockerError::Agent(format!("unpacking the image failed: {e}")))?
    }
}
