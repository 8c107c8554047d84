//! Named volumes and git sources through the CLI: volumes persist across sandboxes, are
//! shared only as asked, are never removed while used; sources are cloned on the host at
//! the ref asked for, without running hooks, and refused clearly when bad. The same checks
//! run on the gVisor backend (this file is part of its suite), and on the docker and
//! microvm backends (`docker_volumes_and_sources`, `microvm_volumes_and_sources`).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::{
    Mode, agentkernel, ak, ak_with_state, assert_code, modes, shared_host, stderr, stdout,
};

fn name(test: &str, mode: Mode) -> String {
    format!("v-{test}-{mode:?}-{}", std::process::id()).to_lowercase()
}

/// `run FLAGS… -- sh -c SCRIPT` on the backend `backend` names (its flags).
fn sh(mode: Mode, backend: &[&str], flags: &[&str], script: &str) -> Output {
    let mut args = vec!["run", "--no-network"];
    args.extend_from_slice(backend);
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    ak(mode, &args)
}

/// A git repository the tests clone from: on `main` "two" (tagged `v1` at "one"), on
/// `feature` "three", plus a hook and a global config that would run one if git let them.
pub(crate) fn test_repo() -> &'static PathBuf {
    static REPO: OnceLock<PathBuf> = OnceLock::new();
    REPO.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("agentkernel-test-repo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let git = |args: &[&str]| {
            let output = Command::new("git")
                .arg("-C")
                .arg(&dir)
                .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
                .args(args)
                .output()
                .expect("the source tests need git (apt install git)");
            assert!(output.status.success(), "git {args:?}: {}", stderr(&output));
        };
        git(&["init", "-q", "-b", "main"]);
        std::fs::write(dir.join("a.txt"), "one\n").unwrap();
        git(&["add", "a.txt"]);
        git(&["commit", "-qm", "one"]);
        git(&["tag", "v1"]);
        std::fs::write(dir.join("a.txt"), "two\n").unwrap();
        git(&["commit", "-qam", "two"]);
        git(&["checkout", "-qb", "feature"]);
        std::fs::write(dir.join("a.txt"), "three\n").unwrap();
        git(&["commit", "-qam", "three"]);
        git(&["checkout", "-q", "main"]);
        // Readable by the rootless user too.
        Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&dir)
            .status()
            .unwrap();
        dir
    })
}

/// The test repository as `mode`'s user may clone it: git refuses a repository another
/// user owns ("dubious ownership"), so the rootless user gets a copy of its own.
fn repo_for(mode: Mode) -> PathBuf {
    let repo = test_repo();
    if mode == Mode::Root {
        return repo.clone();
    }
    static COPY: OnceLock<PathBuf> = OnceLock::new();
    COPY.get_or_init(|| {
        let copy = repo.with_extension("rootless");
        let _ = std::fs::remove_dir_all(&copy);
        let copied = Command::new("cp")
            .arg("-a")
            .arg(repo)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(copied.success());
        let owner = crate::common::ROOTLESS_UID.to_string();
        let owned = Command::new("chown")
            .args(["-R", &format!("{owner}:{owner}")])
            .arg(&copy)
            .status()
            .unwrap();
        assert!(owned.success());
        copy
    })
    .clone()
}

fn repo_url_for(mode: Mode, reference: &str) -> String {
    format!("file://{}{reference}", repo_for(mode).display())
}

fn repo_url(reference: &str) -> String {
    repo_url_for(Mode::Root, reference)
}

/// The commit `reference` names in the test repository.
fn commit_of(reference: &str) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(test_repo())
        .args(["rev-parse", reference])
        .output()
        .unwrap();
    stdout(&output).trim().to_string()
}

/// The checks every backend passes; `backend` is its flags (`--backend docker --image …`).
pub(crate) fn volumes_and_sources(mode: Mode, backend: &[&str]) {
    let tag = backend.get(1).copied().unwrap_or("native");
    let volume = name(&format!("data-{tag}"), mode);
    // A volume outlives the sandboxes that use it.
    let mount = format!("{volume}:/data");
    let written = sh(
        mode,
        backend,
        &["--volume", &mount],
        "echo kept > /data/f && mkdir -p /data/d && echo x > /data/d/g",
    );
    assert_code(&written, 0);
    let read = sh(
        mode,
        backend,
        &["--volume", &format!("{volume}:/mnt/v:ro")],
        "cat /mnt/v/f /mnt/v/d/g",
    );
    assert_code(&read, 0);
    assert_eq!(stdout(&read), "kept\nx\n");
    // Read-only means read-only.
    let refused = sh(
        mode,
        backend,
        &["--volume", &format!("{volume}:/data:ro")],
        "echo no > /data/f",
    );
    assert!(
        !refused.status.success(),
        "a write to a read-only volume succeeded"
    );
    let inspected: serde_json::Value =
        serde_json::from_slice(&ak(mode, &["volume", "inspect", &volume, "--json"]).stdout)
            .unwrap();
    assert!(inspected["size_bytes"].as_u64().unwrap() > 0, "{inspected}");
    assert!(
        inspected["path"].is_string(),
        "the local user sees the path: {inspected}"
    );

    // A source is cloned at the ref asked for, into the workdir.
    for (reference, content) in [("", "two"), ("#v1", "one"), ("#feature", "three")] {
        let url = repo_url_for(mode, reference);
        let cloned = sh(
            mode,
            backend,
            &["--source", &url],
            "cat a.txt && git rev-parse HEAD 2>/dev/null || true",
        );
        assert_code(&cloned, 0);
        assert!(
            stdout(&cloned).starts_with(&format!("{content}\n")),
            "{reference}: {}",
            stdout(&cloned)
        );
    }
    let commit = commit_of("v1");
    let by_commit = sh(
        mode,
        backend,
        &["--source", &repo_url_for(mode, &format!("#{commit}"))],
        "cat a.txt",
    );
    assert_code(&by_commit, 0);
    assert_eq!(stdout(&by_commit), "one\n");
    // A ref that does not exist: a clear error, before anything runs.
    let missing = sh(
        mode,
        backend,
        &["--source", &repo_url_for(mode, "#no-such-branch")],
        "echo ran",
    );
    assert_code(&missing, 2);
    assert!(!stdout(&missing).contains("ran"));
    assert!(
        stderr(&missing).contains("no branch, tag or commit named 'no-such-branch'"),
        "{}",
        stderr(&missing)
    );
    ak(mode, &["volume", "remove", &volume]);
}

#[test]
fn volumes_and_sources_on_this_backend() {
    let _host = shared_host();
    for mode in modes() {
        volumes_and_sources(mode, &["--backend", crate::common::BACKEND]);
    }
}

#[test]
fn volume_lifecycle_sharing_and_refusals() {
    let _host = shared_host();
    for mode in modes() {
        let volume = name("share", mode);
        let created = ak(mode, &["volume", "create", &volume]);
        assert_code(&created, 0);
        // Twice is an error, not a silent success.
        assert_code(&ak(mode, &["volume", "create", &volume]), 2);
        let listed = stdout(&ak(mode, &["volume", "list"]));
        assert!(listed.lines().any(|l| l.starts_with(&volume)), "{listed}");

        // A named sandbox that writes to it exclusively keeps others out while it runs.
        let writer = name("writer", mode);
        let reader = name("reader", mode);
        let rw = format!("{volume}:/data");
        let ro = format!("{volume}:/data:ro");
        assert_code(
            &ak(mode, &["create", &writer, "--no-network", "--volume", &rw]),
            0,
        );
        assert_code(&ak(mode, &["start", &writer]), 0);
        assert_code(
            &ak(
                mode,
                &["exec", &writer, "--", "sh", "-c", "echo w > /data/w"],
            ),
            0,
        );
        assert_code(
            &ak(mode, &["create", &reader, "--no-network", "--volume", &ro]),
            0,
        );
        let busy = ak(mode, &["start", &reader]);
        assert_code(&busy, 2);
        assert!(
            stderr(&busy).contains(&format!("in use by sandbox '{writer}'")),
            "{}",
            stderr(&busy)
        );
        let busy_run = ak(
            mode,
            &["run", "--no-network", "--volume", &ro, "--", "true"],
        );
        assert_code(&busy_run, 2);
        // Removal is refused while any named sandbox mounts it, running or not.
        let refused = ak(mode, &["volume", "remove", &volume]);
        assert_code(&refused, 2);
        assert!(
            stderr(&refused).contains("remove the sandbox first"),
            "{}",
            stderr(&refused)
        );
        assert_code(&ak(mode, &["stop", &writer]), 0);
        assert_code(&ak(mode, &["start", &reader]), 0);
        let read = ak(mode, &["exec", &reader, "--", "cat", "/data/w"]);
        assert_eq!(stdout(&read), "w\n");
        // Readers share: a one-shot read-only run alongside the running reader works.
        let alongside = ak(
            mode,
            &[
                "run",
                "--no-network",
                "--volume",
                &ro,
                "--",
                "cat",
                "/data/w",
            ],
        );
        assert_code(&alongside, 0);
        // And :shared writers may share with readers.
        let shared = ak(
            mode,
            &[
                "run",
                "--no-network",
                "--volume",
                &format!("{volume}:/data:shared"),
                "--",
                "sh",
                "-c",
                "echo s > /data/s",
            ],
        );
        assert_code(&shared, 0);
        let inspected: serde_json::Value =
            serde_json::from_slice(&ak(mode, &["volume", "inspect", &volume, "--json"]).stdout)
                .unwrap();
        let users: Vec<&str> = inspected["used_by"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["sandbox"].as_str().unwrap())
            .collect();
        assert!(
            users.contains(&writer.as_str()) && users.contains(&reader.as_str()),
            "{inspected}"
        );
        for n in [&writer, &reader] {
            assert_code(&ak(mode, &["remove", n, "--force"]), 0);
        }

        // A one-shot run using it holds it: removal waits for the run to end.
        let mut running = agentkernel(
            mode,
            &[
                "run",
                "--no-network",
                "--volume",
                &ro,
                "--",
                "sh",
                "-c",
                "echo up; sleep 30",
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(running.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line, "up\n");
        let during = ak(mode, &["volume", "remove", &volume]);
        assert_code(&during, 2);
        assert!(
            stderr(&during).contains("in use by a running command"),
            "{}",
            stderr(&during)
        );
        running.kill().unwrap();
        running.wait().unwrap();
        // The killed run's lock went with it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let removed = ak(mode, &["volume", "remove", &volume]);
            if removed.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the volume stayed busy: {}",
                stderr(&removed)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_code(&ak(mode, &["volume", "inspect", &volume]), 2);

        // Bad names and entries are refused before anything is made.
        for bad in ["../x", "a/b", "-x", ""] {
            assert_code(&ak(mode, &["volume", "create", bad]), 2);
        }
        for bad in [
            "../x:/data",
            "v:relative",
            "v:/a/../b",
            "v:/",
            "v:/data:rx",
            "novolume",
        ] {
            let refused = ak(
                mode,
                &["run", "--no-network", "--volume", bad, "--", "true"],
            );
            assert_code(&refused, 2);
            assert!(
                stderr(&refused).contains("invalid volume"),
                "{bad}: {}",
                stderr(&refused)
            );
        }
        assert_code(&ak(mode, &["volume", "remove", "no-such-volume"]), 2);
    }
}

#[test]
fn sources_are_refused_clearly_and_never_run_hooks() {
    let _host = shared_host();
    let mode = Mode::Root;
    for (url, expected) in [
        ("ext::sh%20-c%20touch%20/tmp/pwned", "unsupported protocol"),
        ("https://example.com/a b", "must not contain spaces"),
        ("--upload-pack=touch /tmp/pwned", "must not start with '-'"),
        ("/tmp/relative-looking", "a local path needs file://"),
        ("git://example.com/r", "unsupported protocol"),
    ] {
        let flag = format!("--source={url}");
        let refused = ak(mode, &["run", &flag, "--", "true"]);
        assert_code(&refused, 2);
        assert!(
            stderr(&refused).contains(expected),
            "{url}: {}",
            stderr(&refused)
        );
    }
    let missing = ak(
        mode,
        &["run", "--source", "file:///nonexistent/repo", "--", "true"],
    );
    assert_code(&missing, 2);
    assert!(
        stderr(&missing).contains("cloning the source"),
        "{}",
        stderr(&missing)
    );

    // A global config and a template that would install and run hooks are ignored.
    let home = tempfile::tempdir().unwrap();
    let marker = home.path().join("hook-ran");
    let hooks = home.path().join("hooks");
    std::fs::create_dir_all(hooks.join("hooks")).unwrap();
    for dir in [&hooks, &hooks.join("hooks")] {
        let hook = dir.join("post-checkout");
        std::fs::write(&hook, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    std::fs::write(
        home.path().join(".gitconfig"),
        format!(
            "[core]\n\thooksPath = {}\n[init]\n\ttemplateDir = {}\n",
            hooks.display(),
            hooks.display()
        ),
    )
    .unwrap();
    let cloned = agentkernel(
        mode,
        &[
            "run",
            "--source",
            &repo_url("#feature"),
            "--",
            "cat",
            "a.txt",
        ],
    )
    .env("HOME", home.path())
    .output()
    .unwrap();
    assert_code(&cloned, 0);
    assert_eq!(stdout(&cloned), "three\n");
    assert!(!marker.exists(), "a hook ran during the clone");

    // A source with a host directory as the workdir is refused: the clone has nowhere to go.
    let n = name("srcdir", mode);
    let dir = tempfile::tempdir().unwrap();
    let refused = ak(
        mode,
        &[
            "create",
            &n,
            "--source",
            &repo_url(""),
            "--dir",
            &dir.path().to_string_lossy(),
        ],
    );
    assert_code(&refused, 2);
    // A named sandbox keeps its clone: stop and start do not clone again.
    assert_code(
        &ak(
            mode,
            &["create", &n, "--no-network", "--source", &repo_url("#v1")],
        ),
        0,
    );
    assert_code(&ak(mode, &["start", &n]), 0);
    assert_code(
        &ak(mode, &["exec", &n, "--", "sh", "-c", "echo mine > a.txt"]),
        0,
    );
    assert_code(&ak(mode, &["stop", &n]), 0);
    assert_code(&ak(mode, &["start", &n]), 0);
    assert_eq!(
        stdout(&ak(mode, &["exec", &n, "--", "cat", "/workspace/a.txt"])),
        "mine\n"
    );
    let inspected = stdout(&ak(mode, &["inspect", &n]));
    assert!(
        inspected.contains(&format!("source:   {}", repo_url("#v1"))),
        "{inspected}"
    );
    assert_code(&ak(mode, &["remove", &n, "--force"]), 0);
    // A failed clone leaves no sandbox and no directory behind (a state directory of its
    // own: other tests' sandboxes come and go in the shared one), nor does a one-shot run.
    let state = tempfile::tempdir().unwrap();
    let failed = name("srcbad", mode);
    assert_code(
        &ak_with_state(
            state.path(),
            &["create", &failed, "--source", &repo_url("#nope")],
        ),
        2,
    );
    assert_code(&ak_with_state(state.path(), &["inspect", &failed]), 2);
    let ran = ak_with_state(
        state.path(),
        &[
            "run",
            "--no-network",
            "--source",
            &repo_url(""),
            "--",
            "true",
        ],
    );
    assert_code(&ran, 0);
    let left: Vec<_> = std::fs::read_dir(state.path().join("sandboxes"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "sandbox directories left: {left:?}");
}
