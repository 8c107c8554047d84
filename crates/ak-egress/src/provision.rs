//! What a sandbox with secrets gets from the host, whatever its backend: one place for
//! every backend, so that they cannot drift apart.
//!
//! - [`secret_policy`]: a CA for the sandbox's secret hosts (a new one at every start) and
//!   the secret part of the egress helper's policy (each rule with its value, the CA's
//!   key), which goes into the host-only policy file;
//! - [`write_files`]: the directory the sandbox sees read-only at [`RUN_DIR`]: the CA's
//!   certificate (never its key), a bundle of the image's system roots and that CA, and
//!   the `secret_files` with their real values (0400).
//!
//! How the directory reaches the sandbox (a bind mount, a 9p share) and how the bundle
//! replaces the image's system bundle is each backend's.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ak_core::secrets::{CA_BUNDLE, CA_FILE, RUN_DIR, SECRET_FILES_DIR};
use ak_core::{NetworkMode, SandboxSpec};

use crate::error::EgressError;
use crate::secrets::{SecretPolicy, WireSecret};
use crate::settings::Egress;

/// Whether `spec` has anything for [`write_files`] to write.
pub fn has_secrets(spec: &SandboxSpec) -> bool {
    !spec.secrets.is_empty() || !spec.secret_files.is_empty()
}

/// The secret part of `spec`'s egress policy, with a new CA for its secret hosts; `None`
/// when it has no secret rules.
pub fn secret_policy(
    egress: &Egress,
    spec: &SandboxSpec,
) -> Result<Option<SecretPolicy>, EgressError> {
    if spec.secrets.is_empty() {
        return Ok(None);
    }
    if spec.policy.network != NetworkMode::Allowlist {
        return Err(EgressError::Secrets(
            "secrets need the allowlist network (their egress helper substitutes them)".into(),
        ));
    }
    let mut hosts: Vec<ak_core::egress::HostPattern> = Vec::new();
    for rule in &spec.secrets {
        if !hosts.contains(&rule.host) {
            hosts.push(rule.host.clone());
        }
    }
    let ca = crate::ca::generate(&spec.id, &hosts)?;
    let rules = spec
        .secrets
        .iter()
        .map(|rule| {
            Ok(WireSecret {
                key: rule.key.clone(),
                host: rule.host.to_string(),
                header: rule.header.clone(),
                placeholder: rule.placeholder.clone(),
                value: value_of(spec, &rule.key)?.to_string(),
            })
        })
        .collect::<Result<Vec<_>, EgressError>>()?;
    Ok(Some(SecretPolicy {
        rules,
        on_leak: egress.on_leak,
        ca,
        upstream_ca: egress.upstream_ca.clone(),
    }))
}

fn value_of<'a>(spec: &'a SandboxSpec, key: &str) -> Result<&'a str, EgressError> {
    spec.secret_values
        .get(key)
        .map(|value| value.expose())
        .ok_or_else(|| {
            EgressError::Secrets(format!(
                "secret {key} has no value (the service gives each its value)"
            ))
        })
}

/// This process's user and group: the owner of the files for a sandbox whose root reaches
/// them as whoever serves them (a VM's 9p server, gVisor's file server without id
/// mapping), which runs as this process does.
pub fn this_process_ids() -> (u32, u32) {
    (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    )
}

/// The host side of [`RUN_DIR`], as [`write_files`] left it.
#[derive(Debug, Clone)]
pub struct SecretFiles {
    /// Shown at [`RUN_DIR`] (read-only).
    pub dir: PathBuf,
    /// The CA bundle inside it, which also replaces the image's system bundle.
    pub bundle: PathBuf,
}

/// The bundle of a sandbox: `system_roots` (the image's own bundle, empty when it has
/// none) followed by the sandbox CA's certificate.
pub fn bundle(system_roots: &[u8], ca: Option<&str>) -> Vec<u8> {
    let mut text = system_roots.to_vec();
    if let Some(ca) = ca {
        if !text.is_empty() && !text.ends_with(b"\n") {
            text.push(b'\n');
        }
        text.extend_from_slice(ca.as_bytes());
    }
    text
}

/// Makes `dir` (0700, which must not exist) and writes [`RUN_DIR`]'s files for `spec`
/// into it: the CA of `secrets` when it has secret rules, the bundle of the image's roots
/// (the file `system_roots`, read only here: a sandbox without secrets never pays for its
/// some 200 KB) and that CA, and the secret files. Everything is owned by `owner` (the host uid and
/// gid of the sandbox's root), which the sandbox sees through a read-only view, so it
/// cannot change them. `None` when the sandbox has no secrets.
pub fn write_files(
    dir: &Path,
    spec: &SandboxSpec,
    secrets: Option<&SecretPolicy>,
    system_roots: Option<&Path>,
    owner: (u32, u32),
) -> Result<Option<SecretFiles>, EgressError> {
    if !has_secrets(spec) {
        return Ok(None);
    }
    let system_roots = match system_roots {
        Some(path) => {
            std::fs::read(path).map_err(EgressError::io(format!("read {}", path.display())))?
        }
        None => Vec::new(),
    };
    make_dir(dir)?;
    let inside = |path: &str| {
        dir.join(
            path.strip_prefix(RUN_DIR)
                .unwrap_or(path)
                .trim_start_matches('/'),
        )
    };
    let ca = secrets.map(|policy| policy.ca.cert.as_str());
    if let Some(ca) = ca {
        write_file(&inside(CA_FILE), ca.as_bytes(), 0o444, owner)?;
    }
    let bundle_path = inside(CA_BUNDLE);
    write_file(&bundle_path, &bundle(&system_roots, ca), 0o444, owner)?;
    if !spec.secret_files.is_empty() {
        let files = inside(SECRET_FILES_DIR);
        make_dir(&files)?;
        for key in &spec.secret_files {
            let value = value_of(spec, key)?;
            write_file(&files.join(key), value.as_bytes(), 0o400, owner)?;
        }
        chown(&files, owner)?;
    }
    chown(dir, owner)?;
    Ok(Some(SecretFiles {
        dir: dir.to_path_buf(),
        bundle: bundle_path,
    }))
}

/// Replaces the bundle in a directory [`write_files`] made (a backend that learns the
/// image's roots only once the sandbox exists); the sandbox does not run yet.
pub fn replace_bundle(
    files: &SecretFiles,
    system_roots: &[u8],
    secrets: Option<&SecretPolicy>,
    owner: (u32, u32),
) -> Result<Vec<u8>, EgressError> {
    let text = bundle(system_roots, secrets.map(|policy| policy.ca.cert.as_str()));
    let staged = files.bundle.with_extension("new");
    let _ = std::fs::remove_file(&staged);
    write_file(&staged, &text, 0o444, owner)?;
    std::fs::rename(&staged, &files.bundle)
        .map_err(EgressError::io(format!("rename {}", staged.display())))?;
    Ok(text)
}

fn make_dir(dir: &Path) -> Result<(), EgressError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(EgressError::io(format!("create {}", dir.display())))
}

fn chown(path: &Path, owner: (u32, u32)) -> Result<(), EgressError> {
    std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1))
        .map_err(EgressError::io(format!("chown {}", path.display())))
}

fn write_file(path: &Path, bytes: &[u8], mode: u32, owner: (u32, u32)) -> Result<(), EgressError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(bytes))
        .map_err(EgressError::io(format!("write {}", path.display())))?;
    chown(path, owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_is_the_system_roots_then_the_ca() {
        assert_eq!(bundle(b"A", Some("CA\n")), b"A\nCA\n");
        assert_eq!(bundle(b"A\n", Some("CA\n")), b"A\nCA\n");
        assert_eq!(bundle(b"", Some("CA\n")), b"CA\n");
        assert_eq!(bundle(b"A\n", None), b"A\n");
    }
}
