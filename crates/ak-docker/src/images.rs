//! Images: a local image is used as it is; a missing one is pulled, with progress
//! reported to the caller, and a clear error when no registry can be reached.

use std::collections::HashMap;

use bollard::Docker;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;

use crate::error::{DockerError, is_not_found};

/// Progress of a pull, per layer, as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullProgress {
    pub image: String,
    /// Bytes downloaded over all layers the engine has reported so far.
    pub current: u64,
    /// Bytes to download over those layers.
    pub total: u64,
    /// The engine's last status line (`Downloading`, `Pull complete`, …).
    pub status: String,
    pub done: bool,
}

/// Makes sure `image` is present, pulling it when it is not.
pub async fn ensure_present(
    client: &Docker,
    image: &str,
    progress: Option<&(dyn Fn(&PullProgress) + Send + Sync)>,
) -> Result<(), DockerError> {
    match client.inspect_image(image).await {
        Ok(_) => return Ok(()),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(DockerError::engine(format!("inspect image {image}"))(e)),
    }
    let options = CreateImageOptionsBuilder::default()
        .from_image(image)
        .build();
    let mut stream = client.create_image(Some(options), None, None);
    let mut layers: HashMap<String, (u64, u64)> = HashMap::new();
    let pull_error = |reason: String| DockerError::Pull {
        image: image.to_string(),
        reason,
    };
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| pull_error(e.to_string()))?;
        if let Some(error) = info.error {
            return Err(pull_error(error));
        }
        if let (Some(id), Some(detail)) = (&info.id, &info.progress_detail) {
            let entry = layers.entry(id.clone()).or_default();
            if let Some(current) = detail.current {
                entry.0 = u64::try_from(current).unwrap_or(0);
            }
            if let Some(total) = detail.total {
                entry.1 = u64::try_from(total).unwrap_or(0);
            }
        }
        if let Some(report) = progress {
            report(&PullProgress {
                image: image.to_string(),
                current: layers.values().map(|l| l.0).sum(),
                total: layers.values().map(|l| l.1).sum(),
                status: info.status.unwrap_or_default(),
                done: false,
            });
        }
    }
    // The stream can end without an error although nothing arrived: check.
    client
        .inspect_image(image)
        .await
        .map_err(|e| pull_error(format!("the image is still missing after the pull: {e}")))?;
    if let Some(report) = progress {
        let total = layers.values().map(|l| l.1).sum();
        report(&PullProgress {
            image: image.to_string(),
            current: total,
            total,
            status: "pulled".into(),
            done: true,
        });
    }
    Ok(())
}
