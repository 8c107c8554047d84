//! `run --image <loopback registry>/python-like:1 -- python3 -c …`, as the SDKs' python
//! examples do: on native and microvm with no container engine reachable (the CLI is
//! pointed at a Docker and a Podman socket that do not exist, so any use of an engine
//! fails), and on docker, whose engine pulls the image from the same registry.

use std::path::Path;
use std::process::{Command, Output};

use super::registry::Registry;
use super::registry::images::{push, python_like};
use super::stderr;

const SCRIPT: &str =
    "import json, sys; print(json.dumps({'major': sys.version_info[0], 'exe': sys.executable}))";
const EXPECTED: &str = "{\"major\": 3, \"exe\": \"/usr/bin/python3\"}\n";

/// The CLI with its own state, and no container engine it could reach.
fn cli_without_engine(state: &Path, args: &[&str]) -> Output {
    let missing = format!("unix://{}", state.join("no-engine.sock").display());
    Command::new(env!("CARGO_BIN_EXE_agentkernel"))
        .args(args)
        .env("AGENTKERNEL_REGISTRY", state.join("registry.db"))
        .env("AGENTKERNEL_CONFIG", state.join("config.toml"))
        .env("HOME", state)
        .env("DOCKER_HOST", &missing)
        .env("CONTAINER_HOST", &missing)
        .output()
        .unwrap()
}

async fn pushed(registry: &Registry) -> String {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests need root"
    );
    push(registry, "python-like:1", &python_like()).await
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
    let registry = Registry::plain();
    let reference = pushed(&registry).await;
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    std::fs::write(state.join("config.toml"), "").unwrap();

    // The engine really is out of reach for this CLI.
    let docker = cli_without_engine(state, &["run", "--backend", "docker", "--", "true"]);
    assert!(!docker.status.success(), "docker ran without an engine");

    let out = cli_without_engine(
        state,
        &[
            "run",
            "--backend",
            "native",
            "--no-network",
            "--image",
            &reference,
            "--",
            "python3",
            "-c",
            SCRIPT,
        ],
    );
    assert_python_ran(&out);
    // The image's Cmd when no command is given: python3 reading the script from stdin.
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentkernel"))
        .args([
            "run",
            "--backend",
            "native",
            "--no-network",
            "--image",
            &reference,
        ])
        .env("AGENTKERNEL_REGISTRY", state.join("registry.db"))
        .env("AGENTKERNEL_CONFIG", state.join("config.toml"))
        .env("HOME", state)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(SCRIPT.as_bytes()).unwrap();
    }
    assert_python_ran(&child.wait_with_output().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_image_boots_on_microvm_with_no_engine() {
    let registry = Registry::plain();
    let reference = pushed(&registry).await;
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    std::fs::write(state.join("config.toml"), "").unwrap();
    // The default pull policy (when missing): the store pulls it, the disk is built from
    // its layers; no `--pull always` needed.
    let out = cli_without_engine(
        state,
        &[
            "run",
            "--backend",
            "microvm",
            "--image",
            &reference,
            "--",
            "python3",
            "-c",
            SCRIPT,
        ],
    );
    assert_python_ran(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_image_runs_on_docker_from_the_registry() {
    let registry = Registry::plain();
    let reference = pushed(&registry).await;
    let engine = Command::new("docker").arg("version").output();
    assert!(
        engine.as_ref().is_ok_and(|o| o.status.success()),
        "the docker tests need a running Docker engine (.ci/run starts dockerd)"
    );
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    std::fs::write(state.join("config.toml"), "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agentkernel"))
        .args([
            "run",
            "--backend",
            "docker",
            "--image",
            &reference,
            "--",
            "python3",
            "-c",
            SCRIPT,
        ])
        .env("AGENTKERNEL_REGISTRY", state.join("registry.db"))
        .env("AGENTKERNEL_CONFIG", state.join("config.toml"))
        .env("HOME", state)
        .output()
        .unwrap();
    // The engine keeps what it pulled; remove it so reruns pull again.
    let _ = Command::new("docker")
        .args(["rmi", "-f", &reference])
        .output();
    assert_python_ran(&out);
}
