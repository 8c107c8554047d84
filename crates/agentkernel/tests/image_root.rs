//! Native sandboxes whose root is a stored OCI image: layers built here by hand as the
//! image store unpacks them (busybox from Debian's `busybox-static`, a whiteout, an opaque
//! directory, owners shifted to the sandbox's uid range), mounted as an overlay with a
//! writable layer of the sandbox's own. Includes the escape checks that an image root
//! adds to the host-image battery. Root only, like the CLI tests.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions panic on failure by design"
)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ak_core::backend::Lifetime;
use ak_core::config::{NetworkSetting, SandboxOptions, resolve};
use ak_core::spec::new_sandbox_id;
use ak_core::{
    Backend, ExecSpec, ExitStatus, ImageConfig, ImageRef, Sandbox, SandboxSpec, StoredImage,
};
use ak_native::{NativeBackend, ROOT_MAPPED_BASE};
use ak_protocol::handshake::software;
use ak_protocol::{AgentClient, ExecEvent};

const BUSYBOX: &str = "/bin/busybox";

fn require_root_and_busybox() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the image root tests must run as root (CI does): they map uids and mount overlays"
    );
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: install Debian's busybox-static (.ci/run does)"
    );
}

fn backend() -> NativeBackend {
    NativeBackend::new(PathBuf::from(env!("CARGO_BIN_EXE_ak-agent")))
}

/// `chown -h` to image uid/gid `id`, shifted as the store shifts it for root-run sandboxes.
fn shift(path: &Path, id: u32) {
    std::os::unix::fs::lchown(
        path,
        Some(ROOT_MAPPED_BASE + id),
        Some(ROOT_MAPPED_BASE + id),
    )
    .unwrap();
}

fn shift_tree(dir: &Path, id: u32) {
    shift(dir, id);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.symlink_metadata().unwrap().is_dir() {
            shift_tree(&path, id);
        } else {
            shift(&path, id);
        }
    }
}

fn mkdirs(root: &Path, dirs: &[&str]) {
    for dir in dirs {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
}

/// A whiteout of `name` in `dir`: a 0/0 character device, as overlayfs writes them.
fn whiteout(dir: &Path, name: &str) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join(name),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0),
        0,
    )
    .unwrap();
}

fn opaque(dir: &Path) {
    for name in ["trusted.overlay.opaque", "user.overlay.opaque"] {
        rustix::fs::lsetxattr(dir, name, b"y", rustix::fs::XattrFlags::empty()).unwrap();
    }
}

/// A store-like directory of layers: `busybox` (a shell, `/etc/passwd`, files to hide),
/// then `changes` (a whiteout, an opaque directory, a setuid-root copy of busybox).
struct Layers {
    _dir: tempfile::TempDir,
    layers: Vec<PathBuf>,
}

impl Layers {
    fn build() -> Layers {
        let dir = tempfile::tempdir().unwrap();
        // Private, as the store's directory is: the sandbox's root (no one on the host)
        // cannot walk it, and need not.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let base = dir.path().join("busybox");
        mkdirs(
            &base,
            &[
                "bin",
                "etc",
                "tmp",
                "root",
                "home/user",
                "opt/keep",
                "opt/gone",
                "data",
            ],
        );
        std::fs::set_permissions(base.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        std::fs::copy(BUSYBOX, base.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "ls", "cat", "echo", "id", "wc", "touch", "rm", "mkdir", "test", "stat",
        ] {
            std::os::unix::fs::symlink("busybox", base.join("bin").join(applet)).unwrap();
        }
        std::fs::write(
            base.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(base.join("etc/removed"), "from the first layer\n").unwrap();
        std::fs::write(base.join("opt/gone/old"), "hidden by an opaque dir\n").unwrap();
        std::fs::write(base.join("data/file"), "layer data\n").unwrap();
        shift_tree(&base, 0);
        shift_tree(&base.join("home/user"), 1000);

        let changes = dir.path().join("changes");
        mkdirs(&changes, &["etc", "opt/gone", "bin"]);
        whiteout(&changes.join("etc"), "removed");
        opaque(&changes.join("opt/gone"));
        std::fs::write(changes.join("opt/gone/new"), "from the second layer\n").unwrap();
        std::fs::copy(BUSYBOX, changes.join("bin/busybox-suid")).unwrap();
        shift_tree(&changes, 0);
        // Setuid root of the image: must give nothing on the host, nor root in the sandbox.
        std::fs::set_permissions(
            changes.join("bin/busybox-suid"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        Layers {
            layers: vec![base, changes],
            _dir: dir,
        }
    }

    fn image(&self) -> ImageRef {
        ImageRef::Stored(StoredImage {
            reference: "test/busybox:layers".into(),
            digest: "sha256:0".into(),
            layers: self.layers.clone(),
            config: ImageConfig::default(),
            id_base: ROOT_MAPPED_BASE,
        })
    }
}

fn spec(image: ImageRef) -> SandboxSpec {
    let options = SandboxOptions {
        network: Some(NetworkSetting::Enabled(false)),
        ..SandboxOptions::default()
    };
    let mut spec = resolve(options, Path::new("/"), new_sandbox_id()).unwrap();
    spec.image = image;
    spec
}

async fn client(sandbox: &mut Box<dyn Sandbox>) -> AgentClient {
    let transport = sandbox.connect().await.unwrap();
    AgentClient::connect(transport, software("image-root-test"))
        .await
        .unwrap()
}

/// Runs `script` with `sh -c` as `user`; returns its exit status, stdout and stderr.
async fn exec_as(
    client: &AgentClient,
    user: Option<&str>,
    script: &str,
) -> (ExitStatus, String, String) {
    let mut handle = client
        .exec(ExecSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            user: user.map(str::to_string),
            ..ExecSpec::default()
        })
        .await
        .unwrap();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    loop {
        match handle.next_event().await.unwrap() {
            Some(ExecEvent::Stdout(data)) => stdout.extend(data),
            Some(ExecEvent::Stderr(data)) => stderr.extend(data),
            Some(ExecEvent::Exited { status, .. }) => {
                return (
                    status,
                    String::from_utf8_lossy(&stdout).into_owned(),
                    String::from_utf8_lossy(&stderr).into_owned(),
                );
            }
            Some(_) => {}
            None => panic!("the command's events ended without an exit"),
        }
    }
}

async fn exec(client: &AgentClient, script: &str) -> (ExitStatus, String) {
    let (status, stdout, stderr) = exec_as(client, None, script).await;
    assert!(
        status == ExitStatus::Code(0) || !stderr.is_empty() || !stdout.is_empty(),
        "{script}: {status:?} with no output"
    );
    (status, stdout)
}

/// Every file under `dir` with its size, mode and mtime: what a sandbox must not change.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, u32, i64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = path.symlink_metadata().unwrap();
        out.push((path.clone(), meta.len(), meta.mode(), meta.mtime()));
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn the_layers_are_the_root_with_whiteouts_and_opaque_dirs_honoured() {
    require_root_and_busybox();
    let layers = Layers::build();
    let mut sandbox = backend()
        .create(&spec(layers.image()), Lifetime::Ephemeral)
        .await
        .unwrap();
    let agent = client(&mut sandbox).await;
    assert_eq!(
        exec(&agent, "cat /data/file; ls /opt/gone; ls /opt").await,
        (ExitStatus::Code(0), "layer data\nnew\ngone\nkeep\n".into())
    );
    // The whiteout hides the first layer's file; the host is nowhere to be seen.
    assert_eq!(
        exec(
            &agent,
            "test -e /etc/removed || echo whited-out; test -e /usr/bin || echo no-host"
        )
        .await,
        (ExitStatus::Code(0), "whited-out\nno-host\n".into())
    );
    // The image's owners are the sandbox's: root's files are root's, the user's the user's.
    assert_eq!(
        exec(&agent, "stat -c '%u %U' /bin/busybox /home/user").await,
        (ExitStatus::Code(0), "0 root\n1000 user\n".into())
    );
    // The kernel's interfaces and the workdir are there as with a host image.
    assert_eq!(
        exec(
            &agent,
            "test -e /proc/self/stat && test -c /dev/null && test -d /workspace && echo ok"
        )
        .await,
        (ExitStatus::Code(0), "ok\n".into())
    );
}

#[tokio::test]
async fn writes_go_to_the_sandboxs_own_layer_never_to_the_shared_ones() {
    require_root_and_busybox();
    let layers = Layers::build();
    let before: Vec<_> = layers.layers.iter().map(|l| snapshot(l)).collect();

    let mut first = backend()
        .create(&spec(layers.image()), Lifetime::Ephemeral)
        .await
        .unwrap();
    let agent = client(&mut first).await;
    // The image's files can be changed, removed and added to, as in a container.
    assert_eq!(
        exec(
            &agent,
            "echo changed > /data/file && rm /opt/keep -r && echo new > /etc/added && \
             echo x >> /etc/passwd && chmod 4755 /bin/busybox && mkdir -p /app && cat /data/file"
        )
        .await,
        (ExitStatus::Code(0), "changed\n".into())
    );
    // A second sandbox of the same image sees the image, not the first one's writes.
    let mut second = backend()
        .create(&spec(layers.image()), Lifetime::Ephemeral)
        .await
        .unwrap();
    let other = client(&mut second).await;
    assert_eq!(
        exec(
            &other,
            "cat /data/file; test -d /opt/keep && echo kept; test -e /etc/added || echo none; test -d /app || echo no-app"
        )
        .await,
        (
            ExitStatus::Code(0),
            "layer data\nkept\nnone\nno-app\n".into()
        )
    );
    drop((agent, other));
    first.destroy().await.unwrap();
    second.destroy().await.unwrap();
    let after: Vec<_> = layers.layers.iter().map(|l| snapshot(l)).collect();
    assert_eq!(before, after, "a sandbox changed the shared layers");
}

#[tokio::test]
async fn setuid_files_of_the_image_give_no_privilege() {
    require_root_and_busybox();
    let layers = Layers::build();
    let mut sandbox = backend()
        .create(&spec(layers.image()), Lifetime::Ephemeral)
        .await
        .unwrap();
    let agent = client(&mut sandbox).await;
    let (status, stdout, stderr) = exec_as(
        &agent,
        Some("user"),
        "stat -c %a /bin/busybox-suid; /bin/busybox-suid id -u; /bin/busybox-suid touch /root/x || echo refused",
    )
    .await;
    assert_eq!(status, ExitStatus::Code(0), "{stderr}");
    assert_eq!(stdout, "4755\n1000\nrefused\n", "{stderr}");
}

#[tokio::test]
async fn an_image_symlink_on_the_plans_way_is_refused_before_anything_happens() {
    require_root_and_busybox();
    let layers = Layers::build();
    // A hostile layer: the workdir's place is a symlink to a host directory.
    let hostile = layers.layers[0].parent().unwrap().join("hostile");
    let target = tempfile::tempdir().unwrap();
    std::fs::create_dir(&hostile).unwrap();
    std::os::unix::fs::symlink(target.path(), hostile.join("workspace")).unwrap();
    shift(&hostile, 0);
    let mut stack = layers.layers.clone();
    stack.push(hostile);
    let image = ImageRef::Stored(StoredImage {
        reference: "test/hostile".into(),
        digest: "sha256:1".into(),
        layers: stack,
        config: ImageConfig::default(),
        id_base: ROOT_MAPPED_BASE,
    });
    let error = match backend().create(&spec(image), Lifetime::Ephemeral).await {
        Ok(_) => panic!("a symlinked workdir was accepted"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("/workspace is a symlink"),
        "unclear error: {error}"
    );
    assert_eq!(
        std::fs::read_dir(target.path()).unwrap().count(),
        0,
        "something was made through the symlink"
    );
}

#[tokio::test]
async fn more_layers_than_one_mount_string_holds_are_all_mounted() {
    require_root_and_busybox();
    let layers = Layers::build();
    let parent = layers.layers[0].parent().unwrap().to_path_buf();
    let mut stack = layers.layers.clone();
    // 150 layers of ~60-byte paths: well past the page `mount(2)` takes its options in.
    for i in 0..150 {
        let layer = parent.join(format!("layer-with-a-long-name-to-fill-the-page-{i:03}"));
        std::fs::create_dir_all(layer.join("many")).unwrap();
        std::fs::write(layer.join("many").join(i.to_string()), "").unwrap();
        shift_tree(&layer, 0);
        stack.push(layer);
    }
    let image = ImageRef::Stored(StoredImage {
        reference: "test/many".into(),
        digest: "sha256:2".into(),
        layers: stack,
        config: ImageConfig::default(),
        id_base: ROOT_MAPPED_BASE,
    });
    let mut sandbox = backend()
        .create(&spec(image), Lifetime::Ephemeral)
        .await
        .unwrap();
    let agent = client(&mut sandbox).await;
    assert_eq!(
        exec(&agent, "ls /many | wc -l; cat /data/file").await,
        (ExitStatus::Code(0), "150\nlayer data\n".into())
    );
}

#[tokio::test]
async fn a_restrictive_sandbox_cannot_write_the_image_outside_its_scratch_places() {
    require_root_and_busybox();
    let layers = Layers::build();
    let options = SandboxOptions {
        network: Some(NetworkSetting::Enabled(false)),
        profile: Some("restrictive".into()),
        ..SandboxOptions::default()
    };
    let mut spec = resolve(options, Path::new("/"), new_sandbox_id()).unwrap();
    spec.image = layers.image();
    let mut sandbox = backend().create(&spec, Lifetime::Ephemeral).await.unwrap();
    let agent = client(&mut sandbox).await;
    assert_eq!(
        exec(
            &agent,
            "echo x > /data/file 2>/dev/null || echo refused; echo y > /tmp/ok && echo y > /workspace/ok && echo scratch"
        )
        .await,
        (ExitStatus::Code(0), "refused\nscratch\n".into())
    );
}
