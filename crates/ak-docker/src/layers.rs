//! A named sandbox's root writable layer as the engine keeps it, for snapshots: frozen
//! with the engine's pause (the cgroup freezer), saved by a commit into an image, which
//! is immutable and named by its content id; new containers start from that image.
//!
//! Every saved layer is tagged `localhost/agentkernel/layer:<its id's hex>` (local only, on either engine), so that the engine never
//! sees it as dangling (`docker image prune` would take an untagged image that no
//! container uses: a stopped sandbox's layer has no container). Removing the tag lets the
//! engine delete the image once nothing else holds it; while a container or a layer saved
//! on top of it does, the engine keeps it.

use bollard::Docker;
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};

use crate::error::{DockerError, is_not_found};

/// The repository of saved layers' tags.
pub const LAYER_REPO: &str = "localhost/agentkernel/layer";

/// The tag that keeps layer `id` (`sha256:<hex>`, or the bare hex Podman may give).
pub fn layer_tag(id: &str) -> Result<String, DockerError> {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DockerError::Layer(format!(
            "{id:?} is not an image id (sha256:<64 hex digits>)"
        )));
    }
    Ok(format!("{LAYER_REPO}:{}", hex.to_ascii_lowercase()))
}

/// Pauses (`true`) or unpauses (`false`) `container`. Asking for the state it is in
/// already is fine: a thaw after a failed freeze must not fail for that reason.
pub async fn set_paused(client: &Docker, container: &str, paused: bool) -> Result<(), DockerError> {
    let asked = if paused {
        client.pause_container(container).await
    } else {
        client.unpause_container(container).await
    };
    let Err(error) = asked else {
        return Ok(());
    };
    // The engines answer "already paused" and "not paused" with different statuses and
    // words: the container's state says whether there was anything to do.
    let what = if paused { "pause" } else { "unpause" };
    let state = client
        .inspect_container(
            container,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .map_err(DockerError::engine(format!("{what} container {container}")))?
        .state
        .and_then(|state| state.paused);
    if state == Some(paused) {
        Ok(())
    } else {
        Err(DockerError::engine(format!("{what} container {container}"))(error))
    }
}

/// Commits `container`'s writable layer into an image and tags it as a saved layer;
/// returns the image's id. The caller has paused the container (the commit does not
/// pause or unpause it).
pub async fn save(client: &Docker, container: &str) -> Result<String, DockerError> {
    let options = CommitContainerOptionsBuilder::default()
        .container(container)
        .comment("agentkernel snapshot of a sandbox's root")
        .pause(false)
        .build();
    let committed = client
        .commit_container(options, bollard::models::ContainerConfig::default())
        .await
        .map_err(DockerError::engine(format!("commit container {container}")))?;
    let id = committed.id;
    let tag = layer_tag(&id)?;
    let (repo, tag) = tag.split_once(':').expect("layer tags have a ':'");
    let tagged = client
        .tag_image(
            &id,
            Some(
                TagImageOptionsBuilder::default()
                    .repo(repo)
                    .tag(tag)
                    .build(),
            ),
        )
        .await
        .map_err(DockerError::engine(format!("tag image {id}")));
    if let Err(error) = tagged {
        // Untagged, it would be dangling: give it back now rather than leave it.
        if let Err(e) = client
            .remove_image(
                &id,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await
        {
            tracing::warn!("removing the untagged commit {id}: {e}");
        }
        return Err(error);
    }
    Ok(id)
}

/// Removes the tag that keeps saved layer `id`; the engine deletes the image unless a
/// container or another image still uses it. A layer already gone is fine.
pub async fn remove(client: &Docker, id: &str) -> Result<(), DockerError> {
    let tag = layer_tag(id)?;
    let options = RemoveImageOptionsBuilder::default().noprune(false).build();
    match client.remove_image(&tag, Some(options), None).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(DockerError::engine(format!("remove image {tag}"))(e)),
    }
}

/// Checks saved layer `id` is still in the engine, before a container is made from it.
pub async fn check_present(client: &Docker, id: &str) -> Result<(), DockerError> {
    match client.inspect_image(id).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Err(DockerError::Layer(format!(
            "the snapshot's root layer, image {id}, is no longer in the engine (was it removed with `docker rmi`?)"
        ))),
        Err(e) => Err(DockerError::engine(format!("inspect image {id}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_tags_come_from_image_ids_only() {
        let hex = "5a93adfc3116069fe352335dad36125378839e6b4f5aa0d16b3bbb923ea081a3";
        assert_eq!(
            layer_tag(&format!("sha256:{hex}")).unwrap(),
            format!("localhost/agentkernel/layer:{hex}")
        );
        assert_eq!(
            layer_tag(hex).unwrap(),
            format!("localhost/agentkernel/layer:{hex}")
        );
        for bad in ["", "sha256:", "alpine:3.20", "sha256:../../x", &hex[1..]] {
            let error = layer_tag(bad).unwrap_err().to_string();
            assert!(error.contains("not an image id"), "{bad}: {error}");
        }
    }
}
