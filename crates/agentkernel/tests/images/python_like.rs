//! `run --image <loopback registry>/python-like:1 -- python3 -c …`, as the SDKs' python
//! examples do: on native and microvm with no container engine reachable (the CLI is
//! pointed at a Docker and a Podman socket that do not exist, so any use of an engine
//! fails), and on docker, whose engine pulls the image from the same registry.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use super::registry::Registry;
use super::registry::images::{Image, busybox, gzip_layer, push};
use super::stderr;

const SCRIPT: &str =
    "import json, sys; print(json.dumps({'major': sys.version_info[0], 'exe': sys.executable}))";
const EXPECTED: &str = "{\"major\": 3, \"exe\": \"/usr/bin/python3\"}\n";

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

/// A python-like image in a loopback registry, and a CLI state of its own.
struct Fixture {
    _registry: Registry,
    reference: String,
    state: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        assert!(
            rustix::process::geteuid().is_root(),
            "these tests need root"
        );
        let registry = Registry::plain();
        let reference = push(&registry, "python-like:1", &python_like()).await;
        let state = tempfile::tempdir().unwrap();
        std::fs::write(state.path().join("config.toml"), "").unwrap();
        Fixture {
            _registry: registry,
            reference,
            state,
        }
    }

    /// The CLI with this state; `engine: false`: pointed at a Docker and a Podman socket
    /// that do not exist, so that any use of an engine fails.
    fn cli(&self, engine: bool) -> Command {
        let state = self.state.path();
        let mut command = Command::new(env!("CARGO_BIN_EXE_agentkernel"));
        command
            .env("AGENTKERNEL_REGISTRY", state.join("registry.db"))
            .env("AGENTKERNEL_CONFIG", state.join("config.toml"))
            .env("HOME", state);
        if !engine {
            let missing = format!("unix://{}", state.join("no-engine.sock").display());
            command
                .env("DOCKER_HOST", &missing)
                .env("CONTAINER_HOST", &missing);
        }
        command
    }

    /// `run --backend BACKEND FLAGS… --image <the image> -- python3 -c SCRIPT`.
    fn run_script(&self, engine: bool, backend: &str, flags: &[&str]) -> Output {
        self.cli(engine)
            .args(["run", "--backend", backend])
            .args(flags)
            .args(["--image", &self.reference, "--", "python3", "-c", SCRIPT])
            .output()
            .unwrap()
    }
}

fn assert_python_ran(out: &Output) {
    assert!(out.status.success(), "{}", stderr(out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        EXPECTED,
        "{}",
        stderr(out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_image_runs_on_native_with_no_engine() {
    let fixture = Fixture::new().await;
    // The engine really is out of reach for this CLI.
    let docker = fixture
        .cli(false)
        .args(["run", "--backend", "docker", "--", "true"])
        .output()
        .unwrap();
    assert!(!docker.status.success(), "docker ran without an engine");
    assert_python_ran(&fixture.run_script(false, "native", &["--no-network"]));

    // The image's Cmd when no command is given: python3 reading the script from stdin.
    let mut child = fixture
        .cli(false)
        .args([
            "run",
            "--backend",
            "native",
            "--no-network",
            "--image",
            &fixture.reference,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(SCRIPT.as_bytes())
        .unwrap();
    assert_python_ran(&child.wait_with_output().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_image_boots_on_microvm_with_no_engine() {
    let fixture = Fixture::new().await;
    // The default pull policy (when missing): the store pulls it, the disk is built from
    // its layers; no `--pull always` needed.
    assert_python_ran(&fixture.run_script(false, "microvm", &[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_image_runs_on_docker_from_the_registry() {
    let fixture = Fixture::new().await;
    let engine = Command::new("docker").arg("version").output();
    assert!(
        engine.as_ref().is_ok_and(|o| o.status.success()),
        "the docker tests need a running Docker engine (.ci/run starts dockerd)"
    );
    let out = fixture.run_script(true, "docker", &[]);
    // The engine keeps what it pulled; remove it so reruns pull again.
    let _ = Command::new("docker")
        .args(["rmi", "-f", &fixture.reference])
        .output();
    assert_python_ran(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_image_runs_on_gvisor_with_no_engine() {
    let fixture = Fixture::new().await;
    assert_python_ran(&fixture.run_script(false, "gvisor", &[]));
    // The image's owners inside (root, and the busybox layer's user 1000), a writable root
    // whose writes stay in the sandbox: the next sandbox sees the image as pulled.
    let sh = |script: &str| {
        fixture
            .cli(false)
            .args([
                "run",
                "--backend",
                "gvisor",
                "--image",
                &fixture.reference,
                "--",
            ])
            .args(["sh", "-c", script])
            .output()
            .unwrap()
    };
    let out = sh(
        "stat -c %u:%g /usr/bin/python3.11 /home/user/notes; id -u; \
                  mkdir -p /usr/local/lib && echo mine > /usr/local/lib/x && cat /usr/local/lib/x",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0:0\n1000:1000\n0\nmine\n"
    );
    let again = sh("test -e /usr/local/lib/x && echo kept || echo fresh");
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        "fresh\n",
        "{}",
        stderr(&again)
    );
}
