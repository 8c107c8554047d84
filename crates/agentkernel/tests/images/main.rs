//! `agentkernel image …` and `status` against a real registry on loopback (the image
//! store's own fixtures: Debian's docker-registry, images pushed with oci-client). Needs
//! root and the packages `.ci/run` installs.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions panic on failure by design"
)]

mod python_like;
#[path = "../../../ak-image/tests/common/mod.rs"]
mod registry;
mod run_microvm;
mod run_native;

use std::path::Path;
use std::process::{Command, Output};

use registry::images::{busybox, push};
use registry::{PASSWORD, Registry, USER};

/// Runs the CLI with its state (registry, image store) in `state` and its user config at
/// `state/config.toml`.
fn cli(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentkernel"))
        .args(args)
        .env("AGENTKERNEL_REGISTRY", state.join("registry.db"))
        .env("AGENTKERNEL_CONFIG", state.join("config.toml"))
        .env("REGISTRY_TEST_PASSWORD", PASSWORD)
        .env("HOME", state)
        .output()
        .unwrap()
}

fn json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_commands_pull_list_inspect_remove_prune() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests need root"
    );
    let registry = Registry::plain();
    let image = busybox();
    let reference = push(&registry, "busybox:cli", &image).await;
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    std::fs::write(state.join("config.toml"), "").unwrap();

    let pulled = json(&cli(state, &["image", "pull", &reference, "--json"]));
    assert_eq!(pulled["reference"], reference.as_str());
    assert_eq!(pulled["digest"], image.manifest.digest.as_str());
    assert_eq!(
        pulled["layers"][0]["digest"],
        image.layers[0].digest.as_str()
    );
    assert_eq!(pulled["config"]["cmd"][0], "/bin/sh");
    // No host path in any answer.
    assert!(!pulled.to_string().contains(&state.display().to_string()));
    // A pull fetches: the layer waits, compressed, for its first use.
    assert_eq!(pulled["layers"][0]["unpacked"], false);
    let status = json(&cli(state, &["status", "--json"]));
    assert_eq!(status["image_store"]["Ok"]["fetched_layers"], 1);
    assert_eq!(status["image_store"]["Ok"]["layers"], 0);
    let text = cli(state, &["status"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("1 layer(s) fetched, not unpacked yet"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    // `--unpack` unpacks it now.
    let pulled = json(&cli(
        state,
        &["image", "pull", &reference, "--unpack", "--json"],
    ));
    assert_eq!(pulled["layers"][0]["unpacked"], true);

    let list = json(&cli(state, &["image", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    let text = cli(state, &["image", "list"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains(&reference));
    let inspected = json(&cli(state, &["image", "inspect", &reference, "--json"]));
    assert_eq!(inspected, pulled);
    let status = json(&cli(state, &["status", "--json"]));
    assert_eq!(status["image_store"]["Ok"]["images"], 1);
    assert!(status["image_store"]["Ok"]["bytes"].as_u64().unwrap() > 1_000_000);

    let removed = cli(state, &["image", "remove", &reference]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    let pruned = json(&cli(state, &["image", "prune", "--json"]));
    assert_eq!(pruned["layers"][0], image.layers[0].digest.as_str());
    assert_eq!(
        json(&cli(state, &["status", "--json"]))["image_store"]["Ok"]["layers"],
        0
    );

    // Bad input: exit code 2 with a clear message; an unreachable registry: 125.
    let missing = cli(state, &["image", "inspect", &reference]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("not in the local store"),
        "{}",
        stderr(&missing)
    );
    let unknown = cli(state, &["image", "pull", &registry.reference("nope:1")]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("does not have"),
        "{}",
        stderr(&unknown)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = cli(state, &["image", "pull", &format!("127.0.0.1:{port}/x:1")]);
    assert_eq!(unreachable.status.code(), Some(125));
    assert!(
        stderr(&unreachable).contains("unreachable"),
        "{}",
        stderr(&unreachable)
    );
    let invalid = cli(state, &["image", "pull", "UPPER/Case"]);
    assert_eq!(invalid.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_table_gives_the_ca_and_the_login() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests need root"
    );
    let registry = Registry::tls_with_auth();
    let image = busybox();
    let reference = push(&registry, "private:cli", &image).await;
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    let ca = registry.ca.clone().unwrap();

    // Without [images]: the test CA is not trusted.
    std::fs::write(state.join("config.toml"), "").unwrap();
    let refused = cli(state, &["image", "pull", &reference]);
    assert_eq!(refused.status.code(), Some(125), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("certificate"),
        "{}",
        stderr(&refused)
    );

    // The CA from the config, but no login: refused by the registry.
    std::fs::write(
        state.join("config.toml"),
        format!("[images]\nca_files = [{:?}]\n", ca.display().to_string()),
    )
    .unwrap();
    let unauthorized = cli(state, &["image", "pull", &reference]);
    assert_eq!(
        unauthorized.status.code(),
        Some(2),
        "{}",
        stderr(&unauthorized)
    );
    assert!(
        stderr(&unauthorized).contains("refused the credentials"),
        "{}",
        stderr(&unauthorized)
    );

    // The CA and a login whose password comes from the environment.
    std::fs::write(
        state.join("config.toml"),
        format!(
            "[images]\nca_files = [{:?}]\n[images.credentials.{:?}]\nusername = {USER:?}\npassword_env = \"REGISTRY_TEST_PASSWORD\"\n",
            ca.display().to_string(),
            registry.addr
        ),
    )
    .unwrap();
    let pulled = json(&cli(state, &["image", "pull", &reference, "--json"]));
    assert_eq!(pulled["digest"], image.manifest.digest.as_str());
    assert!(!pulled.to_string().contains(PASSWORD));

    // A bad [images] table is a usage error of the commands that need it.
    std::fs::write(
        state.join("config.toml"),
        "[images]\nca_files = [\"relative.pem\"]\n",
    )
    .unwrap();
    let bad = cli(state, &["image", "pull", &reference]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("[images] ca_files"),
        "{}",
        stderr(&bad)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_download_each_blob_once_and_hostile_images_leave_nothing() {
    use registry::images::{Image, Tar, gzip_layer, push_index};
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests need root"
    );
    let registry = Registry::plain();
    let amd64 = busybox();
    let arm64 = Image::new(
        "arm64",
        vec![gzip_layer(&Tar::new().file("arm", b"arm").finish())],
        serde_json::json!({}),
    );
    let reference = push_index(
        &registry,
        "multi:cli",
        &[("amd64", &amd64), ("arm64", &arm64)],
    )
    .await;
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    std::fs::write(state.join("config.toml"), "").unwrap();

    // Two CLI processes pull the same image at once.
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_agentkernel"))
            .args(["image", "pull", &reference, "--json"])
            .env("AGENTKERNEL_REGISTRY", state.join("registry.db"))
            .env("AGENTKERNEL_CONFIG", state.join("config.toml"))
            .env("HOME", state)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(json(&a)["digest"], json(&b)["digest"]);
    assert_eq!(json(&a)["platform"], "linux/amd64");
    for blob in amd64.layers.iter().chain([&amd64.config]) {
        assert_eq!(registry.blob_gets(&blob.digest), 1, "{}", blob.digest);
    }
    assert_eq!(registry.blob_gets(&arm64.layers[0].digest), 0);

    // A hostile layer and a tampered blob: usage errors, and the store holds only the
    // image pulled above.
    let escape = Image::new(
        "amd64",
        vec![gzip_layer(
            &Tar::new().hardlink("shadow", "../../etc/shadow").finish(),
        )],
        serde_json::json!({}),
    );
    let hostile = push(&registry, "hostile:cli", &escape).await;
    let out = cli(state, &["image", "pull", "--unpack", &hostile]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("hard link out of the layer"),
        "{}",
        stderr(&out)
    );
    // Only fetched, it is refused by the first run that needs it, which forgets it.
    let out = cli(state, &["image", "pull", &hostile]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(
        state,
        &[
            "run",
            "--backend",
            "native",
            "--no-network",
            "--image",
            &hostile,
            "--",
            "true",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("hard link out of the layer"),
        "{}",
        stderr(&out)
    );
    let out = cli(state, &["image", "inspect", &hostile]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let good = Image::new(
        "amd64",
        vec![gzip_layer(&Tar::new().file("ok", b"ok").finish())],
        serde_json::json!({}),
    );
    let tampered = push(&registry, "tampered:cli", &good).await;
    let blob = registry.blob_file(&good.layers[0].digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let out = cli(state, &["image", "pull", &tampered]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("does not match its digest"),
        "{}",
        stderr(&out)
    );
    let status = json(&cli(state, &["status", "--json"]));
    assert_eq!(status["image_store"]["Ok"]["images"], 1);
    assert_eq!(status["image_store"]["Ok"]["layers"], 0);
    assert_eq!(status["image_store"]["Ok"]["fetched_layers"], 1);
    let tmp = state.join("images/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "{}",
        tmp.display()
    );
}
