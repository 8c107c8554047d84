//! `agentkernel plugin install`: each client's file is created or merged (never clobbered),
//! installing twice changes nothing, `--dry-run` writes nothing, and a damaged file is left
//! alone.

#![allow(clippy::unwrap_used, reason = "tests panic on failure by design")]

use std::path::Path;
use std::process::{Command, Output};

fn install(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentkernel"))
        .args(["plugin", "install"])
        .args(args)
        .env("HOME", home)
        .output()
        .unwrap()
}

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_agentkernel")
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn claude_merges_into_an_existing_file() {
    let home = tempfile::tempdir().unwrap();
    let path = home.path().join(".claude.json");
    std::fs::write(
        &path,
        r#"{"numStartups": 7, "mcpServers": {"other": {"command": "other-server"}}, "theme": "dark"}"#,
    )
    .unwrap();
    let output = install(home.path(), &["claude"]);
    assert!(output.status.success(), "{output:?}");
    let config = json(&path);
    assert_eq!(config["numStartups"], 7);
    assert_eq!(config["theme"], "dark");
    assert_eq!(config["mcpServers"]["other"]["command"], "other-server");
    let ours = &config["mcpServers"]["agentkernel"];
    assert_eq!(ours["command"], exe());
    assert_eq!(ours["args"], serde_json::json!(["mcp"]));
    // The user's key order survives.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.find("numStartups").unwrap() < text.find("theme").unwrap());

    let before = std::fs::read_to_string(&path).unwrap();
    let again = install(home.path(), &["claude"]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already configured"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
}

#[test]
fn dry_run_writes_nothing() {
    let home = tempfile::tempdir().unwrap();
    let output = install(home.path(), &["gemini", "--dry-run"]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("\"agentkernel\""), "{stdout}");
    assert!(stdout.contains("dry run"), "{stdout}");
    assert!(!home.path().join(".gemini").exists());
}

#[test]
fn gemini_and_opencode_files_are_created() {
    let home = tempfile::tempdir().unwrap();
    assert!(install(home.path(), &["gemini"]).status.success());
    let gemini = json(&home.path().join(".gemini/settings.json"));
    assert_eq!(gemini["mcpServers"]["agentkernel"]["command"], exe());
    assert!(install(home.path(), &["opencode"]).status.success());
    let opencode = json(&home.path().join(".config/opencode/opencode.json"));
    assert_eq!(
        opencode["mcp"]["agentkernel"]["command"],
        serde_json::json!([exe(), "mcp"])
    );
    assert_eq!(opencode["mcp"]["agentkernel"]["type"], "local");
}

#[test]
fn codex_appends_and_keeps_comments() {
    let home = tempfile::tempdir().unwrap();
    let path = home.path().join(".codex/config.toml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let original = "# my settings\nmodel = \"o3\"\n\n[mcp_servers.other]\ncommand = \"x\"\n";
    std::fs::write(&path, original).unwrap();
    let output = install(home.path(), &["codex"]);
    assert!(output.status.success(), "{output:?}");
    let merged = std::fs::read_to_string(&path).unwrap();
    assert!(merged.starts_with(original), "{merged}");
    let parsed: toml::Table = toml::from_str(&merged).unwrap();
    assert_eq!(
        parsed["mcp_servers"]["agentkernel"]["command"].as_str(),
        Some(exe())
    );
    assert_eq!(
        parsed["mcp_servers"]["other"]["command"].as_str(),
        Some("x")
    );
    assert!(install(home.path(), &["codex"]).status.success());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), merged);

    // A different entry of ours is not silently rewritten.
    std::fs::write(
        &path,
        "[mcp_servers.agentkernel]\ncommand = \"/old/agentkernel\"\n",
    )
    .unwrap();
    let output = install(home.path(), &["codex"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("remove that table"));
}

#[test]
fn damaged_files_and_unknown_clients_are_refused() {
    let home = tempfile::tempdir().unwrap();
    let path = home.path().join(".claude.json");
    std::fs::write(&path, "{ not json").unwrap();
    let output = install(home.path(), &["claude"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("left unchanged"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ not json");
    std::fs::write(&path, "[1, 2]").unwrap();
    assert!(!install(home.path(), &["claude"]).status.success());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "[1, 2]");

    let output = install(home.path(), &["vscode"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown client"));
}

#[test]
fn an_existing_entry_keeps_the_users_settings() {
    let home = tempfile::tempdir().unwrap();
    let path = home.path().join(".claude.json");
    // An entry of ours from an older install, with the user's own environment.
    std::fs::write(
        &path,
        r#"{"mcpServers": {"agentkernel": {"type": "stdio", "command": "/old/agentkernel", "args": ["mcp"], "env": {"AGENTKERNEL_LOG": "debug"}}}}"#,
    )
    .unwrap();
    let output = install(home.path(), &["claude"]);
    assert!(output.status.success(), "{output:?}");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        said.contains("updated") && said.contains("command"),
        "{said}"
    );
    let ours = &json(&path)["mcpServers"]["agentkernel"];
    assert_eq!(ours["command"], exe());
    assert_eq!(ours["env"]["AGENTKERNEL_LOG"], "debug", "{ours}");

    // opencode: a server the user turned off stays off.
    let path = home.path().join(".config/opencode/opencode.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        &path,
        serde_json::json!({"mcp": {"agentkernel": {"type": "local", "command": [exe(), "mcp"], "enabled": false}}})
            .to_string(),
    )
    .unwrap();
    let before = std::fs::read_to_string(&path).unwrap();
    let output = install(home.path(), &["opencode"]);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("already configured"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
}
