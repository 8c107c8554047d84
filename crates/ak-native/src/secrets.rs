//! What a sandbox with secrets gets from the host, in its runtime directory (on the host's
//! runtime tmpfs), bound read-only at [`RUN_DIR`] inside: the sandbox CA's certificate
//! (never its key, which stays in the host-only policy file), a bundle of the image's roots
//! and that CA, and the `secret_files` with their real values (0400, owned by the
//! sandbox's root).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ak_core::SandboxSpec;
use ak_core::secrets::{CA_BUNDLE, CA_FILE, RUN_DIR, SECRET_FILES_DIR, SYSTEM_BUNDLE};

use crate::error::NativeError;

/// The host side of [`RUN_DIR`].
#[derive(Debug)]
pub(crate) struct SecretFiles {
    /// Bound at [`RUN_DIR`].
    pub dir: PathBuf,
    /// The CA bundle, also bound over the image's [`SYSTEM_BUNDLE`].
    pub bundle: PathBuf,
}

/// Where the image keeps its system bundle on the host: the tree's own file, or the top
/// layer's that has one.
pub(crate) fn image_bundle(image_root: Option<&Path>, layers: &[PathBuf]) -> Option<PathBuf> {
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

/// Writes [`RUN_DIR`]'s files for `spec` under `rundir`; `None` when the sandbox has no
/// secrets. `ca` is the sandbox CA's certificate (PEM) when it has secret rules; `owner`
/// the host uid and gid of the sandbox's root.
pub(crate) fn prepare(
    rundir: &Path,
    spec: &SandboxSpec,
    ca: Option<&str>,
    image_bundle: Option<&Path>,
    owner: (u32, u32),
) -> Result<Option<SecretFiles>, NativeError> {
    if spec.secrets.is_empty() && spec.secret_files.is_empty() {
        return Ok(None);
    }
    let dir = rundir.join("agentkernel");
    make_dir(&dir)?;
    let inside = |path: &str| {
        dir.join(
            path.strip_prefix(RUN_DIR)
                .unwrap_or(path)
                .trim_start_matches('/'),
        )
    };
    let mut bundle_text = match image_bundle {
        Some(path) => {
            std::fs::read(path).map_err(NativeError::io(format!("read {}", path.display())))?
        }
        None => Vec::new(),
    };
    if let Some(ca) = ca {
        write_file(&inside(CA_FILE), ca.as_bytes(), 0o444, owner)?;
        if !bundle_text.is_empty() && !bundle_text.ends_with(b"\n") {
            bundle_text.push(b'\n');
        }
        bundle_text.extend_from_slice(ca.as_bytes());
    }
    let bundle = inside(CA_BUNDLE);
    write_file(&bundle, &bundle_text, 0o444, owner)?;
    if !spec.secret_files.is_empty() {
        let files = inside(SECRET_FILES_DIR);
        make_dir(&files)?;
        for key in &spec.secret_files {
            let value = spec.secret_values.get(key).ok_or_else(|| {
                NativeError::InvalidSpec(format!(
                    "secret file {key} has no value (the service gives each its value)"
                ))
            })?;
            write_file(&files.join(key), value.expose().as_bytes(), 0o400, owner)?;
        }
        finish_dir(&files, owner)?;
    }
    finish_dir(&dir, owner)?;
    Ok(Some(SecretFiles { dir, bundle }))
}

fn make_dir(dir: &Path) -> Result<(), NativeError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(NativeError::io(format!("create {}", dir.display())))
}

/// Hands a finished directory (0700) to the sandbox's root; the sandbox sees it through a
/// read-only bind, so it cannot change it.
fn finish_dir(dir: &Path, owner: (u32, u32)) -> Result<(), NativeError> {
    std::os::unix::fs::chown(dir, Some(owner.0), Some(owner.1))
        .map_err(NativeError::io(format!("chown {}", dir.display())))
}

fn write_file(path: &Path, bytes: &[u8], mode: u32, owner: (u32, u32)) -> Result<(), NativeError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(bytes))
        .map_err(NativeError::io(format!("write {}", path.display())))?;
    std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1))
        .map_err(NativeError::io(format!("chown {}", path.display())))
}
