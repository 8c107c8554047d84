//! Secrets for containers: what `ak_egress::provision` writes for every backend, here in a
//! host directory beside the container's runtime directory, `<id>.secrets`, bound
//! read-only at `/run/agentkernel`. The image's own system roots are read through the
//! engine once the container exists (before it starts), so that the bundle holds them
//! and the sandbox CA; where the image has its system bundle as a regular file, the
//! bundle is uploaded over it.
//!
//! The files are owned by host root, which is the container's root only when the engine
//! does not remap user ids: under remapping (rootless engines, `userns-remap`) the
//! container's root could not read them, so secrets are refused there.

use std::io::Read;
use std::path::{Path, PathBuf};

use ak_core::SandboxSpec;
use ak_core::secrets::SYSTEM_BUNDLE;
use ak_egress::provision::{SecretFiles, has_secrets, replace_bundle, secret_policy, write_files};
use ak_egress::secrets::SecretPolicy;
use bollard::Docker;
use bollard::query_parameters::{DownloadFromContainerOptionsBuilder, UploadToContainerOptions};
use futures_util::StreamExt;

use crate::error::DockerError;

/// The owner of the files: host root, the container's root without remapping.
const OWNER: (u32, u32) = (0, 0);
/// How many symbolic links are followed to the image's system bundle.
const MAX_LINKS: usize = 8;
/// The largest system bundle read (Debian's is about 200 KiB).
const MAX_BUNDLE: u64 = 16 << 20;

/// The secrets directory of the sandbox whose runtime directory is `run_dir`.
pub fn dir_of(run_dir: &Path) -> PathBuf {
    run_dir.with_extension("secrets")
}

/// What a container with secrets has on the host before it is made.
#[derive(Debug)]
pub struct Prepared {
    /// The secret part of the egress policy (none with secret files only).
    pub policy: Option<SecretPolicy>,
    pub files: SecretFiles,
}

/// Before the container is made: refuses an engine that remaps user ids, and writes the
/// CA, a bundle of it alone (the image's roots join it in [`install_bundle`]) and the
/// secret files. `None` when `spec` has no secrets.
pub async fn prepare(
    client: &Docker,
    egress: &ak_egress::Egress,
    run_dir: &Path,
    spec: &SandboxSpec,
) -> Result<Option<Prepared>, DockerError> {
    if !has_secrets(spec) {
        return Ok(None);
    }
    if crate::engine::engine_info(client).await?.user_namespaces {
        return Err(DockerError::Unsupported(
            "secrets need an engine that does not remap user ids: its containers' root is \
             an unprivileged host user that could not read the secret files and CA bundle \
             (owned by root); use a rootful engine without userns-remap, or --backend native"
                .into(),
        ));
    }
    let policy = secret_policy(egress, spec).map_err(secrets_error)?;
    let files = write_files(&dir_of(run_dir), spec, policy.as_ref(), None, OWNER)
        .map_err(secrets_error)?
        .ok_or_else(|| DockerError::Agent("has secrets but no secret files were written".into()))?;
    Ok(Some(Prepared { policy, files }))
}

fn secrets_error(error: ak_egress::EgressError) -> DockerError {
    match error {
        ak_egress::EgressError::Secrets(reason) => DockerError::Unsupported(reason),
        other => DockerError::Egress(other),
    }
}

/// Once container `container` exists and before it starts: puts the image's system roots
/// into the bundle, and the bundle over the image's system bundle where that is a regular
/// file (a read-only root cannot be written: there only the variables name the bundle).
pub async fn install_bundle(
    client: &Docker,
    container: &str,
    prepared: &Prepared,
    read_only_root: bool,
) -> Result<(), DockerError> {
    let Some((roots, regular)) = system_roots(client, container).await? else {
        return Ok(());
    };
    let bundle = replace_bundle(&prepared.files, &roots, prepared.policy.as_ref(), OWNER)
        .map_err(secrets_error)?;
    if !regular || read_only_root {
        return Ok(());
    }
    let archive = single_file_tar(SYSTEM_BUNDLE, &bundle)?;
    let options = UploadToContainerOptions {
        path: "/".into(),
        ..Default::default()
    };
    client
        .upload_to_container(container, Some(options), bollard::body_full(archive.into()))
        .await
        .map_err(DockerError::engine(format!(
            "put the CA bundle at {SYSTEM_BUNDLE} in container {container}"
        )))
}

/// The image's system bundle and whether it is a regular file at [`SYSTEM_BUNDLE`] (else
/// it was reached through symbolic links); `None` when the image has none.
async fn system_roots(
    client: &Docker,
    container: &str,
) -> Result<Option<(Vec<u8>, bool)>, DockerError> {
    let mut path = PathBuf::from(SYSTEM_BUNDLE);
    for hop in 0..MAX_LINKS {
        let Some(archive) = download(client, container, &path).await? else {
            return Ok(None);
        };
        match first_entry(&archive)? {
            Entry::File(bytes) => return Ok(Some((bytes, hop == 0))),
            Entry::Link(target) => {
                path = match path.parent() {
                    Some(parent) => parent.join(target),
                    None => target,
                };
            }
            Entry::Other => return Ok(None),
        }
    }
    Ok(None)
}

/// The engine's archive of `path` in `container`; `None` when there is no such path.
async fn download(
    client: &Docker,
    container: &str,
    path: &Path,
) -> Result<Option<Vec<u8>>, DockerError> {
    let options = DownloadFromContainerOptionsBuilder::default()
        .path(&path.to_string_lossy())
        .build();
    let mut stream = client.download_from_container(container, Some(options));
    let mut archive = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => archive.extend_from_slice(&bytes),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => {
                return Err(DockerError::engine(format!(
                    "read {} from container {container}",
                    path.display()
                ))(e));
            }
        }
        if archive.len() as u64 > MAX_BUNDLE + 64 * 1024 {
            return Err(DockerError::Agent(format!(
                "has a system CA bundle {} larger than {MAX_BUNDLE} bytes",
                path.display()
            )));
        }
    }
    Ok(Some(archive))
}

enum Entry {
    File(Vec<u8>),
    Link(PathBuf),
    Other,
}

fn first_entry(archive: &[u8]) -> Result<Entry, DockerError> {
    let bad = DockerError::io("read the engine's archive of the system CA bundle");
    let mut tar = tar::Archive::new(archive);
    let mut entries = tar.entries().map_err(bad)?;
    let Some(entry) = entries.next() else {
        return Ok(Entry::Other);
    };
    let mut entry = entry.map_err(DockerError::io("read the archive's entry"))?;
    let kind = entry.header().entry_type();
    if kind.is_file() {
        let mut bytes = Vec::new();
        (&mut entry)
            .take(MAX_BUNDLE)
            .read_to_end(&mut bytes)
            .map_err(DockerError::io("read the system CA bundle"))?;
        return Ok(Entry::File(bytes));
    }
    if kind.is_symlink() {
        return Ok(entry
            .link_name()
            .map_err(DockerError::io("read the archive's link"))?
            .map_or(Entry::Other, |target| Entry::Link(target.into_owned())));
    }
    Ok(Entry::Other)
}

/// A tar archive of one file at `path` (0444, root's), to upload at `/`.
fn single_file_tar(path: &str, bytes: &[u8]) -> Result<Vec<u8>, DockerError> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o444);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, path.trim_start_matches('/'), bytes)
        .and_then(|()| builder.into_inner())
        .map_err(DockerError::io("make the CA bundle's archive"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uploaded_archive_holds_the_bundle_at_its_path() {
        let archive = single_file_tar(SYSTEM_BUNDLE, b"PEM\n").unwrap();
        let mut tar = tar::Archive::new(archive.as_slice());
        let mut entry = tar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(
            entry.path().unwrap().to_str().unwrap(),
            "etc/ssl/certs/ca-certificates.crt"
        );
        assert_eq!(entry.header().mode().unwrap(), 0o444);
        let mut text = String::new();
        entry.read_to_string(&mut text).unwrap();
        assert_eq!(text, "PEM\n");
        match first_entry(&single_file_tar("a", b"x").unwrap()).unwrap() {
            Entry::File(bytes) => assert_eq!(bytes, b"x"),
            _ => panic!("not read back as a file"),
        }
    }
}
