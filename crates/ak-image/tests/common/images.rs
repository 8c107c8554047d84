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

/// Parts of the standard library a python image's `python3 -c` never needs (tests, IDEs,
/// GUI toolkits, installers, byte code caches), left out to keep the layer small.
const PYTHON_SKIPPED: &[&str] = &[
    "__pycache__",
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
    "distutils",
    "unittest",
    "site-packages",
    "dist-packages",
];

/// Appends the host's `src` (a file, a symbolic link or a directory tree, minus
/// [`PYTHON_SKIPPED`]) at `name` in the archive.
fn append_host_tree(builder: &mut tar::Builder<Vec<u8>>, src: &std::path::Path, name: &str) {
    let meta = std::fs::symlink_metadata(src).unwrap();
    builder.append_path_with_name(src, name).unwrap();
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(src)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        entries.sort();
        for entry in entries {
            let entry = entry.to_str().unwrap();
            if PYTHON_SKIPPED.contains(&entry) || entry.starts_with("config-") {
                continue;
            }
            append_host_tree(builder, &src.join(entry), &format!("{name}/{entry}"));
        }
    }
}

/// The shared libraries `binary` loads, as the host's `ldd` lists them (absolute paths).
fn linked_libraries(binary: &str) -> Vec<String> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .unwrap();
    assert!(out.status.success(), "ldd {binary} failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find(|word| word.starts_with('/'))
                .map(str::to_string)
        })
        .collect()
}

/// A python-like image, as the SDKs' `python:3.12-slim` examples expect one: the busybox
/// layer below, and above it a layer with the host's Debian python3 (`/usr/bin/python3.11`,
/// the libraries it links, its standard library without [`PYTHON_SKIPPED`]), with `PATH`
/// and `Cmd` as python images set them.
pub fn python_like() -> Image {
    const PYTHON: &str = "/usr/bin/python3.11";
    const STDLIB: &str = "/usr/lib/python3.11";
    assert!(
        std::path::Path::new(PYTHON).exists() && std::path::Path::new(STDLIB).is_dir(),
        "{PYTHON} is missing: install Debian's python3 (apt-get install -y python3; .ci/run does)"
    );
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Deterministic);
    append_host_tree(
        &mut builder,
        std::path::Path::new(PYTHON),
        "usr/bin/python3.11",
    );
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_600_000_000);
        header.set_size(size);
        header
    };
    let mut link = header(tar::EntryType::Symlink, 0o777, 0);
    builder
        .append_link(&mut link, "usr/bin/python3", "python3.11")
        .unwrap();
    // Each library at the path the loader asks for, with the real file's bytes (the host's
    // merged /usr and its symbolic links stay out of it).
    for library in linked_libraries(PYTHON) {
        let bytes = std::fs::read(&library).unwrap();
        builder
            .append_data(
                &mut header(tar::EntryType::Regular, 0o755, bytes.len() as u64),
                library.trim_start_matches('/'),
                bytes.as_slice(),
            )
            .unwrap();
    }
    append_host_tree(
        &mut builder,
        std::path::Path::new(STDLIB),
        "usr/lib/python3.11",
    );
    let python = builder.into_inner().unwrap();
    let base = busybox();
    Image::new(
        "amd64",
        vec![base.layers[0].clone(), gzip_layer(&python)],
        serde_json::json!({
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "PYTHON_VERSION=3.11"],
            "Cmd": ["python3"],
        }),
    )
}
