//! `agentkernel plugin install|uninstall`, from real configurations (comments, the user's
//! keys and servers, a customised agentkernel entry): every byte outside our entry
//! survives, installing twice changes nothing, uninstalling gives the file back as it was,
//! an entry that is the user's own is refused (and `--force` keeps the user's keys), and
//! `--project`, `CODEX_HOME` and `XDG_CONFIG_HOME` pick the file the client reads.

#![allow(clippy::unwrap_used, reason = "tests panic on failure by design")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A home directory and a project directory for one test, and the CLI run in them.
struct Env {
    home: tempfile::TempDir,
    project: tempfile::TempDir,
    vars: Vec<(&'static str, PathBuf)>,
}

impl Env {
    fn new() -> Env {
        Env {
            home: tempfile::tempdir().unwrap(),
            project: tempfile::tempdir().unwrap(),
            vars: Vec::new(),
        }
    }

    fn home(&self, path: &str) -> PathBuf {
        self.home.path().join(path)
    }

    fn project(&self, path: &str) -> PathBuf {
        self.project.path().join(path)
    }

    fn plugin(&self, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_agentkernel"));
        command
            .arg("plugin")
            .args(args)
            .env("HOME", self.home.path())
            .env_remove("CODEX_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .current_dir(self.project.path());
        for (name, value) in &self.vars {
            command.env(name, value);
        }
        command.output().unwrap()
    }

    /// Runs `plugin ARGS…`, which must succeed, and returns what it said.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.plugin(args);
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    }
}

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_agentkernel")
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// What an edit took out of `before` and put into `after`: the two texts share everything
/// else, byte for byte, before and after the one edited span.
fn edit(before: &str, after: &str) -> (String, String) {
    let prefix = before
        .bytes()
        .zip(after.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let room = before.len().min(after.len()) - prefix;
    let suffix = before
        .bytes()
        .rev()
        .zip(after.bytes().rev())
        .take(room)
        .take_while(|(a, b)| a == b)
        .count();
    (
        before[prefix..before.len() - suffix].to_string(),
        after[prefix..after.len() - suffix].to_string(),
    )
}

/// Install, install again, uninstall, uninstall again on `path` holding `original`: only
/// our entry is added (plus the comma before it), nothing changes the second time, and
/// uninstalling gives back `original` byte for byte.
fn round_trip(env: &Env, args: &[&str], path: &Path, original: &str) -> String {
    write(path, original);
    let said = env.ok(&[&["install"], args].concat());
    assert!(said.contains("added the agentkernel MCP server"), "{said}");
    let installed = read(path);
    let (removed, added) = edit(original, &installed);
    assert_eq!(
        removed, "",
        "nothing of the original is replaced:\n{installed}"
    );
    assert!(
        added.contains(exe()) && added.contains("agentkernel") && added.contains("mcp"),
        "our entry is what was added: {added:?}"
    );
    let said = env.ok(&[&["install"], args].concat());
    assert!(said.contains("already configured"), "{said}");
    assert_eq!(read(path), installed, "a second install changes nothing");
    let said = env.ok(&[&["uninstall"], args].concat());
    assert!(said.contains("removed"), "{said}");
    assert_eq!(
        read(path),
        original,
        "uninstall gives the file back as it was"
    );
    let said = env.ok(&[&["uninstall"], args].concat());
    assert!(said.contains("not configured"), "{said}");
    installed
}

const CLAUDE: &str = r#"{
  "numStartups": 42,
  "theme": "dark",
  "projects": {
    "/home/me/app": {
      "allowedTools": ["Bash(git:*)"],
      "mcpServers": {}
    }
  },
  "mcpServers": {
    "github": {
      "type": "stdio",
      "command": "github-mcp",
      "args": [],
      "env": {"GITHUB_TOKEN": "ghp_secret"}
    }
  },
  "userID": "abc123"
}
"#;

#[test]
fn claude_keeps_every_byte_of_the_users_file() {
    let env = Env::new();
    let installed = round_trip(&env, &["claude"], &env.home(".claude.json"), CLAUDE);
    let config: serde_json::Value = serde_json::from_str(&installed).unwrap();
    let ours = &config["mcpServers"]["agentkernel"];
    assert_eq!(ours["command"], exe());
    assert_eq!(ours["args"], serde_json::json!(["mcp"]));
    assert_eq!(ours["type"], "stdio");

    // A file on one line stays on one line: only our entry is added to it.
    let one_line = r#"{"numStartups": 7, "mcpServers": {"other": {"command": "other-server"}}, "theme": "dark"}"#;
    let installed = round_trip(&env, &["claude"], &env.home(".claude.json"), one_line);
    assert_eq!(installed.lines().count(), 1, "{installed}");
    let config: serde_json::Value = serde_json::from_str(&installed).unwrap();
    assert_eq!(config["mcpServers"]["agentkernel"]["command"], exe());
}

const GEMINI: &str = r#"{
  // Written by hand: comments, trailing commas and this layout must survive.
  "theme": "GitHub", /* the light one */
  "mcpServers": {
    "other": {
      "command": "other-server", // started by gemini
      "trust": true,
    },
  },
  "telemetry": { "enabled": false },
}
"#;

#[test]
fn gemini_settings_with_comments_survive() {
    let env = Env::new();
    round_trip(
        &env,
        &["gemini"],
        &env.home(".gemini/settings.json"),
        GEMINI,
    );
}

#[test]
fn an_entry_of_ours_from_elsewhere_is_updated_in_place_keeping_the_users_keys() {
    let env = Env::new();
    let path = env.home(".gemini/settings.json");
    let original = r#"{
  "mcpServers": {
    // agentkernel, from before it moved
    "agentkernel": {
      "command": "/old/bin/agentkernel", // keep this note
      "args": ["mcp"],
      "env": {"AGENTKERNEL_LOG": "debug"},
      "trust": true,
      "timeout": 30000
    }
  }
}
"#;
    write(&path, original);
    let said = env.ok(&["install", "gemini"]);
    assert!(
        said.contains("command \"/old/bin/agentkernel\" -> ")
            && said.contains("your env, trust, timeout kept"),
        "{said}"
    );
    assert_eq!(
        read(&path),
        original.replacen("/old/bin/agentkernel", exe(), 1),
        "only the command's path changed"
    );
    assert!(
        env.ok(&["install", "gemini"])
            .contains("already configured")
    );
}

#[test]
fn an_entry_that_starts_something_else_is_refused_unless_forced() {
    let env = Env::new();
    let path = env.home(".cursor/mcp.json");
    let original = r#"{"mcpServers": {"agentkernel": {"command": "my-wrapper", "args": ["--sandbox"], "env": {"X": "1"}}}}"#;
    write(&path, original);
    let output = env.plugin(&["install", "cursor"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("left unchanged")
            && stderr.contains("plugin install cursor --force")
            && stderr.contains("command \"my-wrapper\" -> ")
            && stderr.contains("keep your env"),
        "{stderr}"
    );
    assert_eq!(read(&path), original);
    let said = env.ok(&["install", "cursor", "--force"]);
    assert!(said.contains("your env kept"), "{said}");
    let config: serde_json::Value = serde_json::from_str(&read(&path)).unwrap();
    let ours = &config["mcpServers"]["agentkernel"];
    assert_eq!(ours["command"], exe());
    assert_eq!(ours["args"], serde_json::json!(["mcp"]));
    assert_eq!(ours["env"]["X"], "1");

    // A remote server under our name: forcing removes its URL.
    let path = env.home(".claude.json");
    write(
        &path,
        r#"{"mcpServers": {"agentkernel": {"type": "http", "url": "https://example.invalid/mcp", "headers": {"A": "b"}}}}"#,
    );
    let output = env.plugin(&["install", "claude"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let said = env.ok(&["install", "claude", "--force"]);
    assert!(
        said.contains("url \"https://example.invalid/mcp\" removed"),
        "{said}"
    );
    let config: serde_json::Value = serde_json::from_str(&read(&path)).unwrap();
    let ours = &config["mcpServers"]["agentkernel"];
    assert_eq!(ours["type"], "stdio");
    assert!(ours.get("url").is_none(), "{ours}");
    assert_eq!(ours["headers"]["A"], "b", "the user's other keys stay");
}

#[test]
fn opencode_jsonc_under_xdg_config_home_keeps_a_disabled_server_off() {
    let mut env = Env::new();
    let xdg = env.home("xdg");
    env.vars.push(("XDG_CONFIG_HOME", xdg.clone()));
    let path = xdg.join("opencode/opencode.jsonc");
    let original = r#"{
  "$schema": "https://opencode.ai/config.json",
  // my servers
  "mcp": {
    "search": { "type": "remote", "url": "https://example.invalid/mcp" }
  }
}
"#;
    round_trip(&env, &["opencode"], &path, original);
    assert!(!env.home(".config").exists(), "~/.config is not used");

    // Ours, turned off by the user, from an old path: it stays off.
    let original = r#"{
  "mcp": {
    "agentkernel": { "type": "local", "command": ["/old/agentkernel", "mcp"], "enabled": false, "environment": {"A": "1"} }
  }
}
"#;
    write(&path, original);
    let said = env.ok(&["install", "opencode"]);
    assert!(said.contains("your enabled, environment kept"), "{said}");
    assert_eq!(read(&path), original.replacen("/old/agentkernel", exe(), 1));
    assert!(
        env.ok(&["install", "opencode"])
            .contains("already configured")
    );
}

const CODEX: &str = r#"# Codex settings
model = "o3"  # the good one
approval_policy = "on-request"

[mcp_servers.docs]
command = "docs-mcp"
args = ["--port", "0"]

[profiles.fast]
model = "o4-mini"
"#;

#[test]
fn codex_under_codex_home_keeps_comments_and_tables() {
    let mut env = Env::new();
    let codex_home = env.home("codex-home");
    env.vars.push(("CODEX_HOME", codex_home.clone()));
    let path = codex_home.join("config.toml");
    let installed = round_trip(&env, &["codex"], &path, CODEX);
    let parsed: toml::Table = toml::from_str(&installed).unwrap();
    assert_eq!(
        parsed["mcp_servers"]["agentkernel"]["command"].as_str(),
        Some(exe())
    );
    assert!(!env.home(".codex").exists(), "~/.codex is not used");

    // Ours from an old path, with the user's environment and a comment: only the path
    // changes.
    let original = format!(
        "{CODEX}\n[mcp_servers.agentkernel]\ncommand = \"/old/agentkernel\" # moved since\nargs = [\"mcp\"]\nstartup_timeout_sec = 20\n\n[mcp_servers.agentkernel.env]\nAGENTKERNEL_LOG = \"debug\"\n"
    );
    write(&path, &original);
    let said = env.ok(&["install", "codex"]);
    assert!(
        said.contains("your startup_timeout_sec, env kept"),
        "{said}"
    );
    assert_eq!(read(&path), original.replacen("/old/agentkernel", exe(), 1));
    assert!(env.ok(&["install", "codex"]).contains("already configured"));

    // Someone else's server under our name is refused.
    write(
        &path,
        "[mcp_servers.agentkernel]\ncommand = \"npx\"\nargs = [\"x\"]\n",
    );
    let output = env.plugin(&["install", "codex"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--force"));
}

#[test]
fn project_files_are_the_projects_own() {
    let env = Env::new();
    for (args, file) in [
        (["claude", "--project"], ".mcp.json"),
        (["gemini", "--project"], ".gemini/settings.json"),
        (["cursor", "--project"], ".cursor/mcp.json"),
        (["opencode", "--project"], "opencode.json"),
        (["codex", "--project"], ".codex/config.toml"),
    ] {
        let said = env.ok(&[&["install"][..], &args].concat());
        assert!(said.contains(file), "{args:?}: {said}");
        let text = read(&env.project(file));
        assert!(text.contains(exe()), "{file}: {text}");
        if args[0] == "codex" {
            assert!(said.contains("trust the project"), "{said}");
        }
    }
    let claude: serde_json::Value = serde_json::from_str(&read(&env.project(".mcp.json"))).unwrap();
    assert_eq!(
        claude["mcpServers"]["agentkernel"]["args"],
        serde_json::json!(["mcp"])
    );
    assert_eq!(
        std::fs::read_dir(env.home.path()).unwrap().count(),
        0,
        "the user's files are not touched"
    );
    // A project's Claude file with other servers keeps them byte for byte.
    let original = "{\n  \"mcpServers\": {\n    \"db\": { \"command\": \"db-mcp\" }\n  }\n}\n";
    round_trip(
        &env,
        &["claude", "--project"],
        &env.project(".mcp.json"),
        original,
    );
}

#[test]
fn a_linked_file_stays_linked_and_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let real = env.home("dotfiles/claude.json");
    write(&real, CLAUDE);
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = env.home(".claude.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    env.ok(&["install", "claude"]);
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    assert!(read(&real).contains(exe()));
    let mode = std::fs::metadata(&real).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn dry_run_writes_nothing() {
    let env = Env::new();
    let said = env.ok(&["install", "gemini", "--dry-run"]);
    assert!(
        said.contains("\"agentkernel\"") && said.contains("dry run"),
        "{said}"
    );
    assert!(!env.home(".gemini").exists());
    let path = env.home(".claude.json");
    write(&path, CLAUDE);
    env.ok(&["install", "claude"]);
    let installed = read(&path);
    let said = env.ok(&["uninstall", "claude", "--dry-run"]);
    assert!(said.contains("would have removed"), "{said}");
    assert_eq!(read(&path), installed);
}

#[test]
fn damaged_files_and_unknown_clients_are_refused() {
    let env = Env::new();
    let path = env.home(".claude.json");
    for damaged in [
        "{ not json",
        "[1, 2]",
        r#"{"mcpServers": []}"#,
        r#"{"mcpServers": {"agentkernel": "yes"}}"#,
        "{'single': 'quotes'}",
    ] {
        write(&path, damaged);
        let output = env.plugin(&["install", "claude"]);
        assert_eq!(output.status.code(), Some(1), "{damaged}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("left unchanged"), "{damaged}: {stderr}");
        assert_eq!(read(&path), damaged);
        assert!(!env.plugin(&["uninstall", "claude"]).status.success());
        assert_eq!(read(&path), damaged);
    }
    let path = env.home(".codex/config.toml");
    for damaged in [
        "mcp_servers = 3\n",
        "[mcp_servers]\nagentkernel = 1\n",
        "= x",
    ] {
        write(&path, damaged);
        let output = env.plugin(&["install", "codex"]);
        assert_eq!(output.status.code(), Some(1), "{damaged}: {output:?}");
        assert_eq!(read(&path), damaged);
    }
    let output = env.plugin(&["install", "vscode"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown client"));
}
