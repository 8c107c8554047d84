//! `agentkernel plugin install|uninstall CLIENT [--project] [--force] [--dry-run]`: adds
//! `agentkernel mcp` to (or removes it from) an agent client's MCP configuration, the
//! user's file or the project's. Files are edited in place: everything outside our entry
//! stays byte for byte (comments too). In an existing entry only the keys that say how to
//! start us change, and only when it already starts agentkernel's MCP server (from another
//! path); one that starts something else is the user's own and is refused unless
//! `--force`. The user's own keys (`env`, `trust`, `enabled`, ...) are always kept, and
//! every change is named.

mod codex;
mod jsonc;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde_json::{Map, Value, json};

use super::say;
use crate::cli::{PluginCommand, PluginTarget};
use crate::exit;

/// The name of our entry in every client's list of MCP servers.
const SERVER_NAME: &str = "agentkernel";

/// Keys that make an entry a remote server (a URL instead of a command).
const REMOTE_KEYS: [&str; 2] = ["url", "httpUrl"];

/// The agent clients we know how to configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Claude,
    Codex,
    Cursor,
    Gemini,
    OpenCode,
}

/// The user's file or the project's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    User,
    Project,
}

/// Where the clients' files are, from the environment.
#[derive(Debug)]
struct Places {
    home: PathBuf,
    cwd: PathBuf,
    /// `CODEX_HOME`, which Codex reads instead of `~/.codex`.
    codex_home: Option<PathBuf>,
    /// `XDG_CONFIG_HOME` (when absolute, as the XDG rules say), instead of `~/.config`.
    xdg_config: Option<PathBuf>,
}

impl Places {
    fn from_env() -> anyhow::Result<Places> {
        let set = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        Ok(Places {
            home: dirs::home_dir().ok_or_else(|| anyhow!("cannot find the home directory"))?,
            cwd: std::env::current_dir().context("read the current directory")?,
            codex_home: set("CODEX_HOME").map(PathBuf::from),
            xdg_config: set("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .filter(|path| path.is_absolute()),
        })
    }
}

impl Client {
    fn parse(name: &str) -> anyhow::Result<Client> {
        Ok(match name {
            "claude" => Client::Claude,
            "codex" => Client::Codex,
            "cursor" => Client::Cursor,
            "gemini" => Client::Gemini,
            "opencode" => Client::OpenCode,
            other => bail!(
                "unknown client '{}' (expected claude, codex, cursor, gemini or opencode)",
                other.escape_default()
            ),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Client::Claude => "claude",
            Client::Codex => "codex",
            Client::Cursor => "cursor",
            Client::Gemini => "gemini",
            Client::OpenCode => "opencode",
        }
    }

    /// The file the client reads its MCP servers from, for the user or the project in the
    /// current directory.
    fn path(self, scope: Scope, places: &Places) -> PathBuf {
        let home = &places.home;
        let cwd = &places.cwd;
        match (self, scope) {
            (Client::Claude, Scope::User) => home.join(".claude.json"),
            (Client::Claude, Scope::Project) => cwd.join(".mcp.json"),
            (Client::Codex, Scope::User) => places
                .codex_home
                .clone()
                .unwrap_or_else(|| home.join(".codex"))
                .join("config.toml"),
            (Client::Codex, Scope::Project) => cwd.join(".codex").join("config.toml"),
            (Client::Cursor, Scope::User) => home.join(".cursor").join("mcp.json"),
            (Client::Cursor, Scope::Project) => cwd.join(".cursor").join("mcp.json"),
            (Client::Gemini, Scope::User) => home.join(".gemini").join("settings.json"),
            (Client::Gemini, Scope::Project) => cwd.join(".gemini").join("settings.json"),
            (Client::OpenCode, Scope::User) => opencode_file(
                &places
                    .xdg_config
                    .clone()
                    .unwrap_or_else(|| home.join(".config"))
                    .join("opencode"),
            ),
            (Client::OpenCode, Scope::Project) => opencode_file(cwd),
        }
    }

    /// Our entry.
    fn entry(self, exe: &str) -> Map<String, Value> {
        let entry: &[(&str, Value)] = match self {
            Client::Claude => &[
                ("type", json!("stdio")),
                ("command", json!(exe)),
                ("args", json!(["mcp"])),
                ("env", json!({})),
            ],
            Client::Codex | Client::Cursor | Client::Gemini => {
                &[("command", json!(exe)), ("args", json!(["mcp"]))]
            }
            Client::OpenCode => &[
                ("type", json!("local")),
                ("command", json!([exe, "mcp"])),
                ("enabled", json!(true)),
            ],
        };
        entry
            .iter()
            .map(|(key, value)| (key.to_string(), value.clone()))
            .collect()
    }

    /// The keys of our entry that say how to start us; the rest of an existing entry is
    /// the user's.
    fn starts_us(self) -> &'static [&'static str] {
        match self {
            Client::Claude => &["type", "command", "args"],
            Client::OpenCode => &["type", "command"],
            Client::Codex | Client::Cursor | Client::Gemini => &["command", "args"],
        }
    }

    /// The program and arguments an entry starts.
    fn launch(self, entry: &Map<String, Value>) -> Option<(String, Vec<Value>)> {
        match self {
            Client::OpenCode => {
                let command = entry.get("command")?.as_array()?;
                let (program, args) = command.split_first()?;
                Some((program.as_str()?.to_string(), args.to_vec()))
            }
            _ => {
                let program = entry.get("command")?.as_str()?.to_string();
                let args = match entry.get("args") {
                    Some(args) => args.as_array()?.clone(),
                    None => Vec::new(),
                };
                Some((program, args))
            }
        }
    }

    /// Whether an entry starts agentkernel's MCP server (from whatever path), so that only
    /// where it is found may change without asking.
    fn starts_agentkernel(self, entry: &Map<String, Value>) -> bool {
        let Some((program, args)) = self.launch(entry) else {
            return false;
        };
        !REMOTE_KEYS.iter().any(|key| entry.contains_key(*key))
            && Path::new(&program).file_name() == Some(std::ffi::OsStr::new("agentkernel"))
            && args == [json!("mcp")]
    }

    fn open(self, text: &str) -> anyhow::Result<Box<dyn ConfigDoc>> {
        Ok(match self {
            Client::Codex => Box::new(codex::CodexDoc::parse(text)?),
            Client::Claude | Client::Cursor | Client::Gemini => {
                Box::new(jsonc::JsoncDoc::parse(text, "mcpServers")?)
            }
            Client::OpenCode => Box::new(jsonc::JsoncDoc::parse(text, "mcp")?),
        })
    }
}

/// OpenCode reads `opencode.jsonc` or `opencode.json`: the one that is there (the JSONC
/// one when both are), else a new `opencode.json`.
fn opencode_file(dir: &Path) -> PathBuf {
    let jsonc = dir.join("opencode.jsonc");
    if jsonc.exists() {
        jsonc
    } else {
        dir.join("opencode.json")
    }
}

/// A client's configuration file, as the edits here see it.
trait ConfigDoc {
    /// Our entry, as plain JSON data, when there is one.
    fn entry(&self) -> anyhow::Result<Option<Map<String, Value>>>;
    /// Adds our entry (there is none yet), with the map of servers when it is missing.
    fn add_entry(&mut self, entry: &Map<String, Value>) -> anyhow::Result<()>;
    /// Sets or removes keys of our entry, leaving its other keys as they are.
    fn apply(&mut self, changes: &[Change]) -> anyhow::Result<()>;
    /// Removes our entry; false when there was none.
    fn remove_entry(&mut self) -> anyhow::Result<bool>;
    /// The file's text.
    fn text(&self) -> String;
}

/// One key of an existing entry that changes.
#[derive(Debug, Clone, PartialEq)]
struct Change {
    key: String,
    from: Option<Value>,
    /// `None`: the key is removed.
    to: Option<Value>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.from, &self.to) {
            (Some(from), Some(to)) => write!(f, "{} {from} -> {to}", self.key),
            (None, Some(to)) => write!(f, "{} set to {to}", self.key),
            (Some(from), None) => write!(f, "{} {from} removed", self.key),
            (None, None) => write!(f, "{} unchanged", self.key),
        }
    }
}

/// What turns `current` into an entry that starts us: the keys that say how to start us
/// set to ours, and those that make it a remote server removed.
fn changes(client: Client, current: &Map<String, Value>, ours: &Map<String, Value>) -> Vec<Change> {
    let mut changes = Vec::new();
    for key in client.starts_us() {
        if current.get(*key) != ours.get(*key) {
            changes.push(Change {
                key: key.to_string(),
                from: current.get(*key).cloned(),
                to: ours.get(*key).cloned(),
            });
        }
    }
    for key in REMOTE_KEYS {
        if let Some(value) = current.get(key) {
            changes.push(Change {
                key: key.to_string(),
                from: Some(value.clone()),
                to: None,
            });
        }
    }
    changes
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn plugin(command: PluginCommand) -> i32 {
    let (client, target, action) = match command {
        PluginCommand::Install {
            client,
            target,
            force,
        } => (client, target, Action::Install { force }),
        PluginCommand::Uninstall { client, target } => (client, target, Action::Uninstall),
    };
    let client = match Client::parse(&client) {
        Ok(client) => client,
        Err(error) => exit::fail(exit::USAGE, &error),
    };
    match edit(client, &target, action) {
        Ok(()) => 0,
        Err(error) => {
            exit::report(&error);
            1
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Install { force: bool },
    Uninstall,
}

fn edit(client: Client, target: &PluginTarget, action: Action) -> anyhow::Result<()> {
    let places = Places::from_env()?;
    let scope = if target.project {
        Scope::Project
    } else {
        Scope::User
    };
    let path = client.path(scope, &places);
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let unchanged = || format!("{} was left unchanged", path.display());
    let mut doc = client
        .open(existing.as_deref().unwrap_or(""))
        .with_context(unchanged)?;
    let what = match action {
        Action::Install { force } => {
            let exe = std::env::current_exe().context("find this executable")?;
            let exe = exe.to_str().ok_or_else(|| {
                anyhow!(
                    "the path of agentkernel is not valid UTF-8: {}",
                    exe.display()
                )
            })?;
            let flags = if target.project { " --project" } else { "" };
            match install(client, doc.as_mut(), exe, force, flags).with_context(unchanged)? {
                Some(what) => what,
                None => {
                    say(&format!(
                        "{}: agentkernel is already configured",
                        path.display()
                    ));
                    return Ok(());
                }
            }
        }
        Action::Uninstall => {
            if existing.is_none() || !doc.remove_entry().with_context(unchanged)? {
                say(&format!(
                    "{}: agentkernel is not configured there",
                    path.display()
                ));
                return Ok(());
            }
            "removed the agentkernel MCP server".to_string()
        }
    };
    let text = doc.text();
    if target.dry_run {
        say(&format!("# {} (dry run: nothing written)", path.display()));
        say(text.trim_end());
        say(&format!("# would have {what}"));
        return Ok(());
    }
    write_atomically(&path, &text)?;
    say(&format!("{}: {what}", path.display()));
    if client == Client::Codex && scope == Scope::Project {
        say("Codex reads a project's .codex/config.toml only once you trust the project.");
    }
    Ok(())
}

/// Adds or updates our entry in `doc`; `None` when it is there as it should be.
fn install(
    client: Client,
    doc: &mut dyn ConfigDoc,
    exe: &str,
    force: bool,
    flags: &str,
) -> anyhow::Result<Option<String>> {
    let ours = client.entry(exe);
    let what = match doc.entry()? {
        None => {
            doc.add_entry(&ours)?;
            "added the agentkernel MCP server".to_string()
        }
        Some(current) => {
            let changes = changes(client, &current, &ours);
            if changes.is_empty() {
                return Ok(None);
            }
            let kept: Vec<&String> = current
                .keys()
                .filter(|key| {
                    !client.starts_us().contains(&key.as_str())
                        && !REMOTE_KEYS.contains(&key.as_str())
                })
                .collect();
            if !client.starts_agentkernel(&current) && !force {
                let keep = if kept.is_empty() {
                    String::new()
                } else {
                    format!(" and keep your {}", list(&kept))
                };
                bail!(
                    "its agentkernel entry starts something else, so it is yours; \
                     `agentkernel plugin install {}{flags} --force` would change {}{keep}",
                    client.name(),
                    list(&changes)
                );
            }
            let kept = if kept.is_empty() {
                String::new()
            } else {
                format!("; your {} kept", list(&kept))
            };
            doc.apply(&changes)?;
            format!(
                "updated the agentkernel MCP server: {}{kept}",
                list(&changes)
            )
        }
    };
    // What is written must read back as an entry that starts us.
    let written = client.open(&doc.text())?.entry()?;
    match written {
        Some(entry) if changes(client, &entry, &ours).is_empty() => Ok(Some(what)),
        _ => bail!("the edited file does not hold the expected entry"),
    }
}

/// Writes `path` through a temporary file in the same directory and a rename, keeping the
/// mode of the file it replaces (these files may hold the user's secrets). A symbolic link
/// (a dotfiles checkout) stays one: the file it points to is the one replaced.
fn write_atomically(path: &Path, content: &str) -> anyhow::Result<()> {
    let path = match std::fs::canonicalize(path) {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => path.to_path_buf(),
        Err(e) => return Err(e).with_context(|| format!("resolve {}", path.display())),
    };
    let path = path.as_path();
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
