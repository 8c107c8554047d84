//! Where a native sandbox's image keeps its system roots, for the bundle of a sandbox
//! with secrets (written by `ak_egress::provision`, in the runtime directory on the host's
//! runtime tmpfs, bound read-only at `/run/agentkernel`; the bundle also over the image's
//! [`SYSTEM_BUNDLE`]).

use std::path::{Path, PathBuf};

use ak_core::secrets::SYSTEM_BUNDLE;

/// Where the image keeps its system bundle on the host: the tree's own file, or the top
/// layer's that has one.
pub fn image_bundle(image_root: Option<&Path>, layers: &[PathBuf]) -> Option<PathBuf> {
    let relative = SYSTEM_BUNDLE.trim_start_matches('/');
    match image_root {
        Some(root) => Some(root.join(relative)),
        None => layers
            .iter()
            .rev()
            .map(|layer| layer.join(relative))
            .find(|p| p.is_file()),
    }
    .filter(|path| path.is_file())
}
