//! `agentkernel plugin install claude|codex|gemini|opencode [--dry-run]`: adds
//! `agentkernel mcp` to an agent client's MCP configuration. Existing files are merged:
//! only agentkernel's own entry is added or updated, everything else stays as it was; in an
//! existing entry of ours only the keys that say how to start us (command, arguments,
//! transport) are updated, and the user's own (`env`, `trust`, `enabled`, ...) are kept; what
//! changed is said. A file that cannot be parsed is left alone and reported.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

use super::say;
use crate::cli::PluginCommand;
use crate::exit;

/// The name of our entry in every client's list of MCP servers.
const SERVER_NAME: &str = "agentkernel";

/// The agent clients we know how to configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Claude,
    Codex,
    Gemini,
    OpenCode,
}

impl Client {
    fn parse(name: &str) -> anyhow::Result<Client> {
        Ok(match name {
            "claude" => Client::Claude,
            "codex" => Client::Codex,
            "gemini" => Client::Gemini,
            "opencode" => Client::OpenCode,
            other => bail!(
                "unknown client '{}' (expected claude, codex, gemini or opencode)",
                other.escape_default()
            ),
        })
    }

    /// The user-level configuration file the client reads its MCP servers from.
    fn config_path(self, home: &Path) -> PathBuf {
        match self {
            Client::Claude => home.join(".claude.json"),
            Client::Codex => home.join(".codex").join("config.toml"),
            Client::Gemini => home.join(".gemini").join("settings.json"),
            Client::OpenCode => home.join(".config").join("opencode").join("opencode.json"),
        }
    }
}

pub fn plugin(command: PluginCommand) -> i32 {
    let PluginCommand::Install { client, dry_run } = command;
    let client = match Client::parse(&client) {
        Ok(client) => client,
        Err(error) => exit::fail(exit::USAGE, &error),
    };
    match install(client, dry_run) {
        Ok(()) => 0,
        Err(error) => {
            exit::report(&error);
            1
        }
    }
}

fn install(client: Client, dry_run: bool) -> anyhow::Result<()> {
    let home = dirs::home_dir().ok_or_else(|| anyhow!("cannot find the home directory"))?;
    let exe = std::env::current_exe().context("find this executable")?;
    let exe = exe.to_str().ok_or_else(|| {
        anyhow!(
            "the path of agentkernel is not valid UTF-8: {}",
            exe.display()
        )
    })?;
    let path = client.config_path(&home);
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let merged = match client {
        Client::Codex => merge_codex(existing.as_deref(), exe),
        json_client => merge_json(json_client, existing.as_deref(), exe),
    }
    .with_context(|| format!("{} was left unchanged", path.display()))?;
    let (merged, what) = match merged {
        Merged::Unchanged => {
            say(&format!(
                "{}: agentkernel is already configured",
                path.display()
            ));
            return Ok(());
        }
        Merged::Added(text) => (text, "added the agentkernel MCP server".to_string()),
        Merged::Updated { text, changed } => (
            text,
            format!(
                "updated the agentkernel MCP server's {} (your other settings of it are kept)",
                changed.join(", ")
            ),
        ),
    };
    if dry_run {
        say(&format!("# {} (dry run: nothing written)", path.display()));
        say(merged.trim_end());
        say(&format!("# would have {what}"));
        return Ok(());
    }
    write_atomically(&path, &merged)?;
    say(&format!("{}: {what}", path.display()));
    Ok(())
}

/// What merging our entry into a client's file comes to.
#[derive(Debug, PartialEq)]
enum Merged {
    /// Our entry is there as it should be.
    Unchanged,
    /// The file with our entry added.
    Added(String),
    /// The file with the named keys of our existing entry updated.
    Updated { text: String, changed: Vec<String> },
}

/// The JSON clients: our entry under their map of servers. An entry of ours that is there
/// keeps every key but those that say how to start us.
fn merge_json(client: Client, existing: Option<&str>, exe: &str) -> anyhow::Result<Merged> {
    let mut root: Value = match existing {
        Some(text) if !text.trim().is_empty() => {
            serde_json::from_str(text).context("it is not valid JSON")?
        }
        _ => json!({}),
    };
    let (key, entry) = match client {
        Client::Claude => (
            "mcpServers",
            json!({"type": "stdio", "command": exe, "args": ["mcp"], "env": {}}),
        ),
        Client::Gemini => ("mcpServers", json!({"command": exe, "args": ["mcp"]})),
        Client::OpenCode => (
            "mcp",
            json!({"type": "local", "command": [exe, "mcp"], "enabled": true}),
        ),
        Client::Codex => unreachable!("codex is configured in TOML"),
    };
    let object = root
        .as_object_mut()
        .ok_or_else(|| anyhow!("its top level is not a JSON object"))?;
    let servers = object
        .entry(key)
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| anyhow!("its '{key}' is not a JSON object"))?;
    let Some(current) = servers.get_mut(SERVER_NAME) else {
        servers.insert(SERVER_NAME.to_string(), entry);
        return Ok(Merged::Added(serde_json::to_string_pretty(&root)? + "\n"));
    };
    let current = current
        .as_object_mut()
        .ok_or_else(|| anyhow!("its '{key}.{SERVER_NAME}' is not a JSON object"))?;
    let Value::Object(ours) = entry else {
        bail!("our own entry is not a JSON object");
    };
    let mut changed = Vec::new();
    for (name, value) in ours {
        match current.get(&name) {
            Some(mine) if *mine == value => {}
            // A setting of the user's own (`env`, `enabled`): theirs stays.
            Some(_) if !STARTS_US.contains(&name.as_str()) => {}
            None if !STARTS_US.contains(&name.as_str()) => {
                current.insert(name, value);
            }
            _ => {
                changed.push(name.clone());
                current.insert(name, value);
            }
        }
    }
    if changed.is_empty() {
        return Ok(Merged::Unchanged);
    }
    Ok(Merged::Updated {
        text: serde_json::to_string_pretty(&root)? + "\n",
        changed,
    })
}

/// The keys of our entry that say how to start us; the rest of an existing entry is the
/// user's.
const STARTS_US: [&str; 3] = ["type", "command", "args"];

/// Codex: a `[mcp_servers.agentkernel]` table appended to `config.toml`, so the user's
/// comments and layout stay as they are. An entry of ours that differs is not rewritten
/// (that would need re-serialising the whole file): the user is told to remove it.
fn merge_codex(existing: Option<&str>, exe: &str) -> anyhow::Result<Merged> {
    let text = existing.unwrap_or("");
    let parsed: toml::Table = toml::from_str(text).context("it is not valid TOML")?;
    let ours = toml::Value::Table(toml::Table::from_iter([
        ("command".to_string(), toml::Value::String(exe.to_string())),
        (
            "args".to_string(),
            toml::Value::Array(vec![toml::Value::String("mcp".into())]),
        ),
    ]));
    let servers = parsed.get("mcp_servers");
    if let Some(servers) = servers
        && !servers.is_table()
    {
        bail!("its 'mcp_servers' is not a table");
    }
    match servers.and_then(|s| s.get(SERVER_NAME)) {
        Some(current) if *current == ours => return Ok(Merged::Unchanged),
        Some(_) => bail!(
            "it already has a different [mcp_servers.{SERVER_NAME}]; remove that table and run this again"
        ),
        None => {}
    }
    let quoted = toml::Value::String(exe.to_string()).to_string();
    let mut merged = text.to_string();
    if !merged.is_empty() && !merged.ends_with('\n') {
        merged.push('\n');
    }
    if !merged.is_empty() {
        merged.push('\n');
    }
    merged.push_str(&format!(
        "[mcp_servers.{SERVER_NAME}]\ncommand = {quoted}\nargs = [\"mcp\"]\n"
    ));
    // What we append must parse back to exactly our entry.
    let check: toml::Table = toml::from_str(&merged).context("the merged file does not parse")?;
    if check.get("mcp_servers").and_then(|s| s.get(SERVER_NAME)) != Some(&ours) {
        bail!("the merged file does not hold the expected entry");
    }
    Ok(Merged::Added(merged))
}

/// Writes `path` through a temporary file in the same directory and a rename, keeping the
/// mode of the file it replaces (these files may hold the user's secrets).
fn write_atomically(path: &Path, content: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("create a temporary file in {}", dir.display()))?;
    temp.write_all(content.as_bytes())
        .and_then(|()| temp.as_file().sync_all())
        .context("write the temporary file")?;
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::set_permissions(temp.path(), meta.permissions())
            .context("copy the file's permissions")?;
    }
    temp.persist(path)
        .with_context(|| format!("replace {}", path.display()))?;
    Ok(())
}
