//! Images built by the tests: tar layers (hostile ones too, written byte by byte),
//! configurations, manifests and indexes, pushed to a [`super::Registry`] with oci-client.

use std::io::Write;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use super::{PASSWORD, Registry, USER};

pub fn sha256(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    format!(
        "sha256:{}",
        hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// A tar archive written entry by entry, with whatever names the test wants.
#[derive(Default)]
pub struct Tar {
    buf: Vec<u8>,
}

impl Tar {
    pub fn new() -> Tar {
        Tar::default()
    }

    /// One entry with a raw name (no checks: `../x`, `/etc/x` are written as given).
    #[allow(clippy::too_many_arguments)]
    pub fn raw(
        mut self,
        name: &str,
        kind: tar::EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        link: Option<&str>,
        data: &[u8],
    ) -> Tar {
        let mut header = tar::Header::new_gnu();
        {
            let old = header.as_old_mut();
            assert!(name.len() < old.name.len(), "test names stay short");
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
        }
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(1_600_000_000);
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.buf.extend_from_slice(header.as_bytes());
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn dir(self, name: &str) -> Tar {
        self.raw(name, tar::EntryType::Directory, 0o755, 0, 0, None, b"")
    }

    pub fn file(self, name: &str, data: &[u8]) -> Tar {
        self.raw(name, tar::EntryType::Regular, 0o644, 0, 0, None, data)
    }

    pub fn symlink(self, name: &str, target: &str) -> Tar {
        self.raw(
            name,
            tar::EntryType::Symlink,
            0o777,
            0,
            0,
            Some(target),
            b"",
        )
    }

    pub fn hardlink(self, name: &str, target: &str) -> Tar {
        self.raw(name, tar::EntryType::Link, 0o644, 0, 0, Some(target), b"")
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend(std::iter::repeat_n(0u8, 1024));
        self.buf
    }
}

/// A blob and the media type it is pushed under.
#[derive(Clone)]
pub struct Blob {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub digest: String,
    /// For a layer, the digest of its uncompressed tar (the config's `diff_ids`, which
    /// Docker checks); the blob's own digest otherwise.
    pub diff_id: String,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        let digest = sha256(&bytes);
        Blob {
            media_type: media_type.into(),
            diff_id: digest.clone(),
            digest,
            bytes,
        }
    }

    fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({"mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len()})
    }
}

pub const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A gzip-compressed layer from a tar archive.
pub fn gzip_layer(tar: &[u8]) -> Blob {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(tar).unwrap();
    Blob {
        diff_id: sha256(tar),
        ..Blob::new(GZIP_LAYER, encoder.finish().unwrap())
    }
}

/// An image: its layers (lowest first) and configuration.
pub struct Image {
    pub layers: Vec<Blob>,
    pub config: Blob,
    pub manifest: Blob,
}

impl Image {
    pub fn new(arch: &str, layers: Vec<Blob>, runtime: serde_json::Value) -> Image {
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": runtime,
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        });
        let config = Blob::new(
            "application/vnd.oci.image.config.v1+json",
            serde_json::to_vec(&config).unwrap(),
        );
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        let manifest = Blob::new(
            "application/vnd.oci.image.manifest.v1+json",
            serde_json::to_vec(&manifest).unwrap(),
        );
        Image {
            layers,
            config,
            manifest,
        }
    }
}

/// The busybox image: Debian's static busybox, a few of its applets as symlinks, a setuid
/// file and a file owned by a non-root image user.
pub fn busybox() -> Image {
    let busybox = std::fs::read("/bin/busybox").unwrap_or_else(|e| {
        panic!("/bin/busybox: {e}: install Debian's busybox-static (.ci/run does)")
    });
    let tar = Tar::new()
        .dir("bin/")
        .raw(
            "bin/busybox",
            tar::EntryType::Regular,
            0o755,
            0,
            0,
            None,
            &busybox,
        )
        .symlink("bin/sh", "busybox")
        .symlink("bin/ls", "/bin/busybox")
        .dir("etc/")
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
        )
        .raw(
            "bin/su-like",
            tar::EntryType::Regular,
            0o4755,
            0,
            0,
            None,
            b"#!/bin/sh\n",
        )
        .raw(
            "home/user/",
            tar::EntryType::Directory,
            0o700,
            1000,
            1000,
            None,
            b"",
        )
        .raw(
            "home/user/notes",
            tar::EntryType::Regular,
            0o600,
            1000,
            1000,
            None,
            b"mine",
        )
        .finish();
    Image::new(
        "amd64",
        vec![gzip_layer(&tar)],
        serde_json::json!({"Env": ["PATH=/bin", "IMAGE=busybox"], "Cmd": ["/bin/sh"], "WorkingDir": "/home/user"}),
    )
}

/// A client that pushes to `registry` (its CA trusted and its login used, when it has
/// them).
pub fn pusher(registry: &Registry) -> (Client, RegistryAuth) {
    let mut config = ClientConfig {
        protocol: if registry.ca.is_some() {
            ClientProtocol::Https
        } else {
            ClientProtocol::Http
        },
        ..ClientConfig::default()
    };
    if let Some(ca) = &registry.ca {
        config.extra_root_certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data: std::fs::read(ca).unwrap(),
        });
    }
    let auth = if registry.auth {
        RegistryAuth::Basic(USER.into(), PASSWORD.into())
    } else {
        RegistryAuth::Anonymous
    };
    (Client::new(config), auth)
}

async fn push_blob(client: &Client, auth: &RegistryAuth, reference: &Reference, blob: &Blob) {
    client
        .auth(reference, auth, oci_client::RegistryOperation::Push)
        .await
        .unwrap();
    client
        .push_blob(reference, blob.bytes.clone(), &blob.digest)
        .await
        .unwrap_or_else(|e| panic!("push {}: {e}", blob.digest));
}

async fn push_manifest(client: &Client, reference: &Reference, manifest: &Blob) {
    client
        .push_manifest_raw(
            reference,
            manifest.bytes.clone(),
            http::HeaderValue::from_str(&manifest.media_type).unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("push manifest {reference}: {e}"));
}

/// Pushes `image` as `name` (`repo:tag`); returns the reference to pull.
pub async fn push(registry: &Registry, name: &str, image: &Image) -> String {
    let (client, auth) = pusher(registry);
    let reference: Reference = registry.reference(name).parse().unwrap();
    for blob in image.layers.iter().chain([&image.config]) {
        push_blob(&client, &auth, &reference, blob).await;
    }
    push_manifest(&client, &reference, &image.manifest).await;
    reference.whole()
}

/// Pushes the images of an index (each by digest) and the index as `name`.
pub async fn push_index(registry: &Registry, name: &str, images: &[(&str, &Image)]) -> String {
    let (client, auth) = pusher(registry);
    let reference: Reference = registry.reference(name).parse().unwrap();
    let mut entries = Vec::new();
    for (arch, image) in images {
        for blob in image.layers.iter().chain([&image.config]) {
            push_blob(&client, &auth, &reference, blob).await;
        }
        let by_digest = reference.clone_with_digest(image.manifest.digest.clone());
        push_manifest(&client, &by_digest, &image.manifest).await;
        let mut entry = image.manifest.descriptor();
        entry["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        entries.push(entry);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let index = Blob::new(
        "application/vnd.oci.image.index.v1+json",
        serde_json::to_vec(&index).unwrap(),
    );
    push_manifest(&client, &reference, &index).await;
    reference.whole()
}
