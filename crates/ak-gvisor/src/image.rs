//! The root of a gVisor sandbox of a stored OCI image: an overlay, mounted on the host in
//! the sandbox's bundle directory, of the image's layers (read-only, shared with every
//! sandbox and image that has them) under an upper directory of the sandbox's own. runsc
//! takes the merged directory as the container's root, so the image's writes (`pip
//! install` into `/usr/local`) go to the sandbox's upper directory on disk, removed with
//! the sandbox; the store's layers are never written.
//!
//! The layers' owners are the store's shifted ids (image id N on disk as `id_base + N`),
//! so these sandboxes get a user namespace that maps root and the ids above it onto them
//! ([`id_mapping`]): inside, the image's files have their own owners.

use std::path::{Path, PathBuf};

use ak_core::backend::SANDBOX_ID_COUNT;
use ak_core::image::{MOUNT_DATA_MAX, overlay_mount_data};
use ak_core::{ImageRef, SandboxSpec, StoredImage};
use rustix::mount::{MountFlags, UnmountFlags};

use crate::error::GvisorError;

/// The merged root, the upper and the overlay's work directory, in the bundle directory.
const MERGED: &str = "image-root";
const UPPER: &str = "image-upper";
const WORK: &str = "image-work";

/// The stored image of `spec`, if its root is one.
pub fn stored(spec: &SandboxSpec) -> Option<&StoredImage> {
    match &spec.image {
        ImageRef::Stored(image) => Some(image),
        _ => None,
    }
}

/// The host id that is root in sandboxes of `spec`, and how many ids are mapped from it:
/// `Some` for a stored image whose layers the store shifted (never for the host image or a
/// directory, whose files keep the host's owners).
pub fn id_mapping(spec: &SandboxSpec) -> Option<(u32, u32)> {
    let image = stored(spec)?;
    if image.id_base == 0 {
        return None;
    }
    // The store maps a range from root; an unprivileged user's store has only its own id.
    let count = if rustix::process::geteuid().is_root() {
        SANDBOX_ID_COUNT
    } else {
        1
    };
    Some((image.id_base, count))
}

/// Mounts `image`'s root for the sandbox whose bundle is `bundle_dir` and returns it.
/// `root_owner`: the host ids of the sandbox's root, who owns the new root directory.
pub fn mount(
    bundle_dir: &Path,
    image: &StoredImage,
    root_owner: Option<(u32, u32)>,
) -> Result<PathBuf, GvisorError> {
    if image.layers.is_empty() {
        return Err(GvisorError::Unsupported(format!(
            "image {} has no layers",
            image.reference
        )));
    }
    let (merged, upper, work) = (
        bundle_dir.join(MERGED),
        bundle_dir.join(UPPER),
        bundle_dir.join(WORK),
    );
    for dir in [&merged, &upper, &work] {
        std::fs::create_dir(dir).map_err(GvisorError::io(format!("make {}", dir.display())))?;
    }
    // The merged root takes its owner and mode from the upper directory: the sandbox's
    // root owns its `/`, as in the image.
    if let Some((uid, gid)) = root_owner {
        rustix::fs::chown(
            &upper,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .map_err(|e| GvisorError::io(format!("chown {}", upper.display()))(e.into()))?;
    }
    let lowers: Vec<&Path> = image.layers.iter().rev().map(PathBuf::as_path).collect();
    let data = overlay_mount_data(&lowers, &upper, &work, "");
    if data.len() > MOUNT_DATA_MAX {
        return Err(GvisorError::Unsupported(format!(
            "image {} has too many layers ({}) to stack in one overlay mount",
            image.reference,
            image.layers.len()
        )));
    }
    let data = std::ffi::CString::new(data)
        .map_err(|_| GvisorError::Bundle("a layer path holds a NUL byte".into()))?;
    rustix::mount::mount(
        "overlay",
        &merged,
        "overlay",
        MountFlags::NOSUID | MountFlags::NODEV,
        data.as_c_str(),
    )
    .map_err(|e| {
        GvisorError::io(format!("mount the overlay of image {}", image.reference))(e.into())
    })?;
    Ok(merged)
}

/// Unmounts the merged root of the sandbox whose bundle is `bundle_dir`, if mounted: before
/// the bundle directory is removed, so that removing it never reaches into the layers.
pub fn unmount(bundle_dir: &Path) -> Result<(), GvisorError> {
    let merged = bundle_dir.join(MERGED);
    match rustix::mount::unmount(&merged, UnmountFlags::DETACH) {
        // Not mounted (or never made): nothing to do.
        Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(GvisorError::io(format!("unmount {}", merged.display()))(
            e.into(),
        )),
    }
}
