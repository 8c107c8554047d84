//! Keeps the architecture from rotting: workspace crates may only depend downwards
//! (types and protocol at the bottom, backends beside each other, the service above them,
//! the binary on top). Reads `cargo metadata`, so a new edge fails here first.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Each workspace crate and the workspace crates it may depend on.
fn allowed() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let rules: &[(&str, &[&str])] = &[
        ("ak-protocol", &[]),
        // Interface ioctls: beside the protocol at the bottom, for the agent and backends.
        ("ak-netif", &[]),
        ("ak-agent", &["ak-netif", "ak-protocol"]),
        ("ak-core", &["ak-protocol"]),
        ("ak-egress", &["ak-core", "ak-netif"]),
        (
            "ak-native",
            &["ak-core", "ak-egress", "ak-netif", "ak-protocol"],
        ),
        ("ak-docker", &["ak-core", "ak-egress"]),
        // The egress helper is the far end of an allowlist VM's NIC (its arguments and
        // settings come from ak-egress, as for the native and gVisor backends). The
        // protocol names the virtio-serial ports the guest agent and the host agree on.
        (
            "ak-microvm",
            &["ak-core", "ak-egress", "ak-netif", "ak-protocol"],
        ),
        // The one sideways edge: a gVisor sandbox is the native sandbox's policy under
        // another kernel, so it takes the native backend's seccomp deny-list and its
        // user-mode network helper rather than a second copy of either.
        ("ak-gvisor", &["ak-core", "ak-egress", "ak-native"]),
        // The OCI image store: a library beside the backends, which get its layers as
        // plain directories (`ak_core::StoredImage`) and never link it.
        ("ak-image", &["ak-core"]),
        ("ak-service", &["ak-core", "ak-image", "ak-protocol"]),
        // The harness drives the CLI as a user would; it links only the shared types
        // (where backends keep their runtime state, for the leak check).
        ("ak-bench", &["ak-core"]),
        // The HTTP API and MCP front ends: above the service, below the binary.
        ("ak-server", &["ak-core", "ak-protocol", "ak-service"]),
        (
            "agentkernel",
            &[
                "ak-agent",
                "ak-bench",
                "ak-core",
                "ak-docker",
                "ak-egress",
                "ak-gvisor",
                "ak-image",
                "ak-microvm",
                "ak-native",
                "ak-protocol",
                "ak-server",
                "ak-service",
            ],
        ),
    ];
    rules
        .iter()
        .map(|(name, deps)| (*name, deps.iter().copied().collect()))
        .collect()
}

#[test]
fn workspace_dependencies_point_down() {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let members: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let allowed = allowed();
    let mut violations = Vec::new();
    for package in packages {
        let name = package["name"].as_str().unwrap();
        let Some(permitted) = allowed.get(name) else {
            violations.push(format!(
                "{name} is not in the architecture table of this test"
            ));
            continue;
        };
        for dependency in package["dependencies"].as_array().unwrap() {
            let dep = dependency["name"].as_str().unwrap();
            // Dev-dependencies may reach sideways for tests; normal and build ones may not.
            if dependency["kind"].as_str() == Some("dev") {
                continue;
            }
            if members.contains(dep) && !permitted.contains(dep) {
                violations.push(format!("{name} must not depend on {dep}"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "architecture violations:\n{}",
        violations.join("\n")
    );
}

/// Source files of `dir` (recursively), with their text.
fn sources(dir: &std::path::Path) -> Vec<(std::path::PathBuf, String)> {
    fn fail<T>(e: std::io::Error) -> T {
        panic!("reading the sources: {e}")
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(fail) {
        let path = entry.unwrap_or_else(fail).path();
        if path.is_dir() {
            found.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap_or_else(fail);
            found.push((path, text));
        }
    }
    found
}

/// The front ends (the HTTP API and MCP in ak-server, the CLI's commands) only translate
/// into the service's operations: none of them reaches past it into the registry, the
/// pools' machinery or a backend. (The CLI's `wiring.rs` is where backends are built; its
/// `setup` command builds microVM guest files, which is no sandbox operation.)
#[test]
fn front_ends_call_the_service_only() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let forbidden = [
        "ak_service::pool::",
        "ak_service::registry",
        "Registry",
        "Pools",
        ".registry()",
        "ak_core::Backend;",
        "ak_core::Backend}",
        "ak_core::{Backend,",
        "dyn Backend",
        "ak_native",
        "ak_docker",
        "ak_microvm",
    ];
    let mut violations = Vec::new();
    let front_ends = [
        root.join("ak-server/src"),
        root.join("agentkernel/src/commands"),
    ];
    for dir in front_ends {
        for (path, text) in sources(&dir) {
            if path.ends_with("commands/setup.rs") {
                continue;
            }
            for word in forbidden {
                if text.contains(word) {
                    violations.push(format!("{} uses {word}", path.display()));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "front ends must go through ak-service's operations:\n{}",
        violations.join("\n")
    );
}
