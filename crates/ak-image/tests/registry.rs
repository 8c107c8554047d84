//! The image store against a real registry on loopback (Debian's `docker-registry`),
//! holding images these tests build and push themselves. Needs root (layers are written
//! with shifted owners) and the packages `.ci/run` installs.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use ak_image::{IdShift, ImageError, NoProgress, PullOptions, PullPolicy, Store};
use common::images::{self, Image, Tar, busybox, gzip_layer, push};
use common::{PASSWORD, Registry, USER};

const SHIFT: IdShift = IdShift {
    base: 100_000,
    range: 65536,
};

fn store() -> (tempfile::TempDir, Store) {
    assert!(
        rustix::process::geteuid().is_root(),
        "the image store tests need root (layers are written with shifted owners)"
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("images"), SHIFT).unwrap();
    (dir, store)
}

/// Nothing but the empty skeleton: no layer, no config, no record, no work left.
fn assert_empty(store: &Store) {
    for sub in [
        "layers/sha256",
        "blobs/sha256",
        "configs/sha256",
        "refs",
        "tmp",
    ] {
        let dir = store.dir().join(sub);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{} holds {left:?}", dir.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_what_was_pushed_over_plain_http() {
    let registry = Registry::plain();
    let image = busybox();
    let reference = push(&registry, "busybox:1", &image).await;
    let (_dir, store) = store();

    let stored = store
        .pull(&reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(stored.digest, image.manifest.digest);
    assert_eq!(stored.layers.len(), 1);
    let root = &stored.layers[0];
    assert_eq!(
        std::fs::read(root.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    // Symlinks are data: kept as written, absolute targets included.
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        std::fs::read_link(root.join("bin/ls")).unwrap(),
        Path::new("/bin/busybox")
    );
    // Owners shifted, modes (setuid included) and mtimes kept.
    let su = std::fs::symlink_metadata(root.join("bin/su-like")).unwrap();
    assert_eq!((su.uid(), su.gid()), (100_000, 100_000));
    assert_eq!(su.mode() & 0o7777, 0o4755);
    assert_eq!(su.mtime(), 1_600_000_000);
    let notes = std::fs::symlink_metadata(root.join("home/user/notes")).unwrap();
    assert_eq!((notes.uid(), notes.gid()), (101_000, 101_000));
    let home = std::fs::symlink_metadata(root.join("home/user")).unwrap();
    assert_eq!((home.mode() & 0o7777, home.mtime()), (0o700, 1_600_000_000));
    assert_eq!(std::fs::symlink_metadata(root).unwrap().uid(), 100_000);
    // The configuration the backends apply.
    assert_eq!(stored.config.env, vec!["PATH=/bin", "IMAGE=busybox"]);
    assert_eq!(stored.config.cmd, vec!["/bin/sh"]);
    assert_eq!(stored.config.working_dir.as_deref(), Some("/home/user"));

    // The store answers for it afterwards, by any spelling of the name.
    assert_eq!(store.get(&reference).await.unwrap().unwrap(), stored);
    let list = store.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].reference, reference);
    let size = store.size().unwrap();
    assert_eq!((size.images, size.layers), (1, 1));
    assert!(size.bytes > std::fs::metadata("/bin/busybox").unwrap().len());
    assert_eq!(
        store
            .ensure(
                &reference,
                PullPolicy::Never,
                &PullOptions::default(),
                &NoProgress
            )
            .await
            .unwrap(),
        stored
    );

    // Removal forgets the reference; prune then frees its layer.
    store.remove(&reference).await.unwrap();
    assert!(store.get(&reference).await.unwrap().is_none());
    let pruned = store.prune(&[]).await.unwrap();
    assert_eq!(pruned.layers, vec![image.layers[0].digest.clone()]);
    assert_empty(&store);
    assert!(matches!(
        store
            .ensure(
                &reference,
                PullPolicy::Never,
                &PullOptions::default(),
                &NoProgress
            )
            .await,
        Err(ImageError::NotFound(_))
    ));
}

/// A fetch keeps the verified blobs only; the first `get` unpacks them (once) and the
/// blobs go; prune frees blobs no image names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_stores_blobs_and_the_first_use_unpacks_them() {
    let registry = Registry::plain();
    let image = busybox();
    let reference = push(&registry, "fetched:1", &image).await;
    let (_dir, store) = store();
    let digest = &image.layers[0].digest;
    let hex = digest.strip_prefix("sha256:").unwrap();

    let info = store
        .fetch(&reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(info.digest, image.manifest.digest);
    assert!(!info.layers[0].unpacked && info.layers[0].size == 0);
    let blob = store.dir().join("blobs/sha256").join(hex);
    assert!(blob.is_file());
    assert!(!store.dir().join("layers/sha256").join(hex).exists());
    let size = store.size().unwrap();
    assert_eq!((size.images, size.layers, size.fetched_layers), (1, 0, 1));
    assert_eq!(size.fetched_bytes, std::fs::metadata(&blob).unwrap().len());
    // Fetching again downloads nothing.
    store
        .fetch(&reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(registry.blob_gets(digest), 1);

    // Two first uses at once unpack it once; the blob is gone after.
    let other = Store::open(store.dir(), SHIFT).unwrap();
    let (a, b) = tokio::join!(store.get(&reference), other.get(&reference));
    let stored = a.unwrap().unwrap();
    assert_eq!(stored, b.unwrap().unwrap());
    assert_eq!(
        std::fs::read(stored.layers[0].join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    assert!(!blob.exists());
    let inspected = store.inspect(&reference).unwrap().unwrap();
    assert!(inspected.layers[0].unpacked && inspected.layers[0].size > 0);
    let size = store.size().unwrap();
    assert_eq!((size.layers, size.fetched_layers), (1, 0));
    // An eager pull of a fetched image unpacks from the blob, not the registry.
    store.remove(&reference).await.unwrap();
    store.prune(&[]).await.unwrap();
    store
        .fetch(&reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(registry.blob_gets(digest), 2);
    let pulled = store
        .pull(&reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(registry.blob_gets(digest), 2);
    assert!(pulled.layers[0].join("bin/busybox").is_file() && !blob.exists());

    // A fetched blob no image names is pruned.
    store.remove(&reference).await.unwrap();
    store.prune(&[]).await.unwrap();
    store
        .fetch(&reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    store.remove(&reference).await.unwrap();
    let pruned = store.prune(&[]).await.unwrap();
    assert_eq!(pruned.layers, vec![digest.clone()]);
    assert_empty(&store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_layers_are_stored_once_and_concurrent_pulls_download_once() {
    let registry = Registry::plain();
    let base = gzip_layer(&Tar::new().file("base", b"shared").finish());
    let one = Image::new(
        "amd64",
        vec![
            base.clone(),
            gzip_layer(&Tar::new().file("one", b"1").finish()),
        ],
        serde_json::json!({}),
    );
    let two = Image::new(
        "amd64",
        vec![
            base.clone(),
            gzip_layer(&Tar::new().file("two", b"2").finish()),
        ],
        serde_json::json!({}),
    );
    let one_ref = push(&registry, "one:1", &one).await;
    let two_ref = push(&registry, "two:1", &two).await;
    let (_dir, store) = store();

    // Two pulls of one image at once, then one of another sharing its base layer.
    let options = PullOptions::default();
    let (a, b) = tokio::join!(
        store.pull(&one_ref, &options, &NoProgress),
        store.pull(&one_ref, &options, &NoProgress)
    );
    assert_eq!(a.unwrap(), b.unwrap());
    let two_stored = store.pull(&two_ref, &options, &NoProgress).await.unwrap();
    for blob in one.layers.iter().chain([&one.config]) {
        assert_eq!(
            registry.blob_gets(&blob.digest),
            1,
            "{} fetched once",
            blob.digest
        );
    }
    assert_eq!(registry.blob_gets(&two.layers[1].digest), 1);
    let size = store.size().unwrap();
    assert_eq!((size.images, size.layers), (2, 3));
    assert_eq!(
        store.get(&one_ref).await.unwrap().unwrap().layers[0],
        two_stored.layers[0],
        "the shared layer is one directory"
    );

    // Two stores on one directory (as two processes would be) coalesce too.
    let other = Store::open(store.dir(), SHIFT).unwrap();
    store.remove(&one_ref).await.unwrap();
    store.remove(&two_ref).await.unwrap();
    store.prune(&[]).await.unwrap();
    assert_empty(&store);
    let (a, b) = tokio::join!(
        store.ensure(&one_ref, PullPolicy::Missing, &options, &NoProgress),
        other.ensure(&one_ref, PullPolicy::Missing, &options, &NoProgress)
    );
    assert_eq!(a.unwrap(), b.unwrap());
    for blob in one.layers.iter() {
        assert_eq!(
            registry.blob_gets(&blob.digest),
            2,
            "{} fetched once more",
            blob.digest
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_arch_index_resolves_to_this_host() {
    let registry = Registry::plain();
    let amd64 = busybox();
    let arm64 = Image::new(
        "arm64",
        vec![gzip_layer(
            &Tar::new().file("arm64-only", b"not for this host").finish(),
        )],
        serde_json::json!({}),
    );
    let reference = images::push_index(
        &registry,
        "multi:1",
        &[("arm64", &arm64), ("amd64", &amd64)],
    )
    .await;
    let (_dir, store) = store();
    let stored = store
        .pull(&reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(stored.digest, amd64.manifest.digest);
    assert!(stored.layers[0].join("bin/busybox").is_file());
    assert_eq!(registry.blob_gets(&arm64.layers[0].digest), 0);
    assert_eq!(
        store.inspect(&reference).unwrap().unwrap().platform,
        "linux/amd64"
    );

    // An index without this host's platform says which ones it has.
    let only_arm = images::push_index(&registry, "arm:1", &[("arm64", &arm64)]).await;
    let err = store
        .pull(&only_arm, &PullOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ImageError::NoPlatform { available, .. } if available == "linux/arm64"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whiteouts_and_opaque_directories_become_overlayfs_ones() {
    let registry = Registry::plain();
    let lower = Tar::new()
        .dir("a/")
        .file("a/gone", b"x")
        .file("a/kept", b"k")
        .dir("b/")
        .file("b/hidden", b"h")
        .finish();
    let upper = Tar::new()
        .file("a/.wh.gone", b"")
        .file("b/.wh..wh..opq", b"")
        .file("b/new", b"n")
        .finish();
    let image = Image::new(
        "amd64",
        vec![gzip_layer(&lower), gzip_layer(&upper)],
        serde_json::json!({}),
    );
    let reference = push(&registry, "layers:1", &image).await;
    let (dir, store) = store();
    let stored = store
        .pull(&reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    let top = &stored.layers[1];
    let whiteout = std::fs::symlink_metadata(top.join("a/gone")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    for name in ["user.overlay.opaque", "trusted.overlay.opaque"] {
        let mut value = [0u8; 4];
        let n = rustix::fs::getxattr(top.join("b"), name, &mut value).unwrap();
        assert_eq!(&value[..n], b"y", "{name}");
    }

    // And overlayfs reads them so: the merged tree is what the image means.
    let merged = dir.path().join("merged");
    let work = dir.path().join("work");
    let upperdir = dir.path().join("upper");
    for d in [&merged, &work, &upperdir] {
        std::fs::create_dir(d).unwrap();
    }
    let options = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        stored.layers[1].display(),
        stored.layers[0].display(),
        upperdir.display(),
        work.display()
    );
    let options = std::ffi::CString::new(options).unwrap();
    rustix::mount::mount(
        "overlay",
        &merged,
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(options.as_c_str()),
    )
    .unwrap();
    let names = |d: &str| {
        let mut v: Vec<String> = std::fs::read_dir(merged.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let seen = (names("a"), names("b"));
    rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::empty()).unwrap();
    assert_eq!(seen, (vec!["kept".to_string()], vec!["new".to_string()]));
}

/// Each hostile layer is refused with its typed error, and the store is left empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layers_are_refused_and_leave_nothing() {
    use tar::EntryType::{Block, Char, Fifo, Regular};
    let registry = Registry::plain();
    let (_dir, store) = store();
    let hostile: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            Tar::new().file("../escape", b"x").finish(),
            "'..'",
        ),
        (
            "deepdotdot",
            Tar::new().dir("a/").file("a/../../escape", b"x").finish(),
            "'..'",
        ),
        (
            "absolute",
            Tar::new().file("/etc/escape", b"x").finish(),
            "absolute",
        ),
        (
            "through-symlink",
            Tar::new()
                .symlink("etc", "/etc")
                .file("etc/escape", b"x")
                .finish(),
            "symlink",
        ),
        (
            "through-dotdot-symlink",
            Tar::new()
                .symlink("up", "..")
                .file("up/escape", b"x")
                .finish(),
            "symlink",
        ),
        (
            "hardlink-outside",
            Tar::new()
                .hardlink("passwd", "../../../../etc/passwd")
                .finish(),
            "out of the layer",
        ),
        (
            "hardlink-absolute",
            Tar::new().hardlink("passwd", "/etc/passwd").finish(),
            "out of the layer",
        ),
        (
            "hardlink-not-yet",
            Tar::new()
                .hardlink("early", "later")
                .file("later", b"x")
                .finish(),
            "not unpacked yet",
        ),
        (
            "hardlink-through-symlink",
            Tar::new()
                .symlink("etc", "/etc")
                .hardlink("passwd", "etc/passwd")
                .finish(),
            "symlink",
        ),
        (
            "uid-out-of-range",
            Tar::new()
                .raw("x", Regular, 0o644, 70_000, 0, None, b"x")
                .finish(),
            "outside the id range",
        ),
    ];
    for (name, tar, why) in hostile {
        let image = Image::new("amd64", vec![gzip_layer(&tar)], serde_json::json!({}));
        let reference = push(&registry, &format!("{name}:1"), &image).await;
        let err = store
            .pull(&reference, &PullOptions::default(), &NoProgress)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ImageError::HostileLayer { .. }) && err.to_string().contains(why),
            "{name}: {err}"
        );
        assert_empty(&store);
    }
    assert!(!Path::new("/escape").exists() && !Path::new("/etc/escape").exists());

    // Fetched without unpacking, a hostile layer is refused at its first use, which
    // forgets the image and its blob.
    let tar = Tar::new().file("../escape", b"x").finish();
    let image = Image::new("amd64", vec![gzip_layer(&tar)], serde_json::json!({}));
    let reference = push(&registry, "fetched-dotdot:1", &image).await;
    store
        .fetch(&reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    let err = store.get(&reference).await.unwrap_err();
    assert!(
        matches!(&err, ImageError::HostileLayer { .. }) && err.to_string().contains("'..'"),
        "{err}"
    );
    assert!(store.inspect(&reference).unwrap().is_none());
    store.prune(&[]).await.unwrap();
    assert_empty(&store);
    assert!(!Path::new("/escape").exists());

    // Not a tar at all.
    let garbage = gzip_layer(&b"this is not a tar archive, just text. ".repeat(40));
    let image = Image::new("amd64", vec![garbage], serde_json::json!({}));
    let reference = push(&registry, "garbage:1", &image).await;
    let err = store
        .pull(&reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotATar { .. }), "{err}");
    assert_empty(&store);

    // A blob the registry serves with other bytes than its digest: tampered in storage
    // after the push (same length, last byte changed).
    let good = Tar::new().file("ok", b"fine").finish();
    let image = Image::new("amd64", vec![gzip_layer(&good)], serde_json::json!({}));
    let reference = push(&registry, "tampered:1", &image).await;
    let blob = registry.blob_file(&image.layers[0].digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let err = store
        .pull(&reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert_empty(&store);
    let err = store
        .fetch(&reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert_empty(&store);

    // Device nodes and fifos are skipped, the rest of the layer kept.
    let devices = Tar::new()
        .raw("dev-null", Char, 0o666, 0, 0, None, b"")
        .raw("disk", Block, 0o660, 0, 0, None, b"")
        .raw("pipe", Fifo, 0o644, 0, 0, None, b"")
        .file("ok", b"fine")
        .finish();
    let image = Image::new("amd64", vec![gzip_layer(&devices)], serde_json::json!({}));
    let reference = push(&registry, "devices:1", &image).await;
    let stored = store
        .pull(&reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    let root = &stored.layers[0];
    assert!(root.join("ok").is_file());
    for skipped in ["dev-null", "disk", "pipe"] {
        assert!(
            std::fs::symlink_metadata(root.join(skipped)).is_err(),
            "{skipped}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_basic_auth() {
    let registry = Registry::tls_with_auth();
    let image = busybox();
    let reference = push(&registry, "private:1", &image).await;
    let (dir, store) = store();
    let ca = registry.ca.clone().unwrap();
    let login = ak_image::RegistryCredential {
        registry: registry.addr.clone(),
        username: USER.into(),
        password: PASSWORD.into(),
    };

    // Without the CA: the certificate is not trusted (no plain-HTTP fallback helps).
    let err = store
        .pull(
            &reference,
            &PullOptions {
                credentials: vec![login.clone()],
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ImageError::Unreachable { why, .. } if why.contains("certificate")),
        "{err}"
    );
    // With the CA but no login.
    let err = store
        .pull(
            &reference,
            &PullOptions {
                ca_files: vec![ca.clone()],
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    // A wrong password.
    let mut wrong = login.clone();
    wrong.password = "nope".into();
    let err = store
        .pull(
            &reference,
            &PullOptions {
                ca_files: vec![ca.clone()],
                credentials: vec![wrong],
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    assert_empty(&store);

    // The CA and the login from the config: accepted.
    let stored = store
        .pull(
            &reference,
            &PullOptions {
                ca_files: vec![ca.clone()],
                credentials: vec![login.clone()],
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(stored.digest, image.manifest.digest);
    store.remove(&reference).await.unwrap();

    // The login from Docker's config.json, and the registry listed insecure instead of
    // the CA: certificates are not checked for it.
    let docker_config = dir.path().join("config.json");
    std::fs::write(
        &docker_config,
        serde_json::json!({"auths": {registry.addr.clone(): {"username": USER, "password": PASSWORD}}})
            .to_string(),
    )
    .unwrap();
    let stored = store
        .pull(
            &reference,
            &PullOptions {
                insecure_registries: vec![registry.addr.clone()],
                docker_config: Some(docker_config),
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(stored.digest, image.manifest.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_images_and_unreachable_registries_are_clear_errors() {
    let registry = Registry::plain();
    let (_dir, store) = store();
    let err = store
        .pull(
            &registry.reference("nothing:here"),
            &PullOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::UnknownImage { .. }), "{err}");
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = store
        .pull(
            &format!("127.0.0.1:{port}/x:1"),
            &PullOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unreachable { .. }), "{err}");
    let err = store
        .pull("Not A Reference", &PullOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::InvalidReference { .. }), "{err}");
    assert_empty(&store);
    // A store made with another id shift is refused, not reused with wrong owners.
    let err = Store::open(store.dir(), IdShift { base: 5, range: 1 }).unwrap_err();
    assert!(matches!(err, ImageError::IdShiftMismatch { .. }), "{err}");
}
