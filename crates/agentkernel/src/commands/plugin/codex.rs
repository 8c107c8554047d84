//! Codex's `config.toml`, edited with toml_edit: comments, layout and every table outside
//! `[mcp_servers.agentkernel]` are written back as they were read, byte for byte.

use anyhow::{Context, anyhow, bail};
use serde_json::{Map, Value};
use toml_edit::{Array, DocumentMut, InlineTable, Item, Table, TableLike};

use super::{Change, ConfigDoc, SERVER_NAME};

const SERVERS: &str = "mcp_servers";

/// One `config.toml`.
#[derive(Debug)]
pub(super) struct CodexDoc {
    doc: DocumentMut,
}

impl CodexDoc {
    pub(super) fn parse(text: &str) -> anyhow::Result<CodexDoc> {
        let doc: DocumentMut = text.parse().context("it is not valid TOML")?;
        if let Some(servers) = doc.get(SERVERS) {
            let servers = servers
                .as_table_like()
                .ok_or_else(|| anyhow!("its '{SERVERS}' is not a table"))?;
            if let Some(entry) = servers.get(SERVER_NAME)
                && !entry.is_table_like()
            {
                bail!("its '{SERVERS}.{SERVER_NAME}' is not a table");
            }
        }
        Ok(CodexDoc { doc })
    }

    fn servers_mut(&mut self) -> Option<&mut dyn TableLike> {
        self.doc.get_mut(SERVERS)?.as_table_like_mut()
    }

    fn entry_mut(&mut self) -> anyhow::Result<&mut dyn TableLike> {
        self.servers_mut()
            .and_then(|servers| servers.get_mut(SERVER_NAME))
            .and_then(Item::as_table_like_mut)
            .ok_or_else(|| anyhow!("its '{SERVERS}.{SERVER_NAME}' is gone"))
    }
}

impl ConfigDoc for CodexDoc {
    fn entry(&self) -> anyhow::Result<Option<Map<String, Value>>> {
        let Some(entry) = self
            .doc
            .get(SERVERS)
            .and_then(|servers| servers.get(SERVER_NAME))
        else {
            return Ok(None);
        };
        let entry = entry
            .as_table_like()
            .ok_or_else(|| anyhow!("its '{SERVERS}.{SERVER_NAME}' is not a table"))?;
        // The entry as plain data: its TOML text read back through serde, its keys in the
        // file's order.
        let mut table = Table::new();
        for (key, item) in entry.iter() {
            table.insert(key, item.clone());
        }
        let mut single = DocumentMut::new();
        single.insert("entry", Item::Table(table));
        let parsed: toml::Table = toml::from_str(&single.to_string())
            .with_context(|| format!("read its '{SERVERS}.{SERVER_NAME}'"))?;
        let Some(toml::Value::Table(parsed)) = parsed.get("entry") else {
            bail!("its '{SERVERS}.{SERVER_NAME}' is not a table");
        };
        let mut map = Map::new();
        for (key, _) in entry.iter() {
            if let Some(value) = parsed.get(key) {
                map.insert(key.to_string(), serde_json::to_value(value)?);
            }
        }
        Ok(Some(map))
    }

    fn add_entry(&mut self, entry: &Map<String, Value>) -> anyhow::Result<()> {
        let had_content = !self.doc.to_string().trim().is_empty();
        if self.doc.get(SERVERS).is_none() {
            // Only `[mcp_servers.agentkernel]` is written, not an empty `[mcp_servers]`.
            let mut servers = Table::new();
            servers.set_implicit(true);
            self.doc.insert(SERVERS, Item::Table(servers));
        }
        let ours = toml_value(&Value::Object(entry.clone()))?;
        match self.doc.get_mut(SERVERS) {
            // `mcp_servers = { ... }` takes an inline entry.
            Some(Item::Value(toml_edit::Value::InlineTable(servers))) => {
                servers.insert(SERVER_NAME, ours);
            }
            Some(Item::Table(servers)) => {
                let toml_edit::Value::InlineTable(inline) = ours else {
                    bail!("our entry is not a table");
                };
                let mut table = inline.into_table();
                if had_content {
                    // A blank line between the user's last table and ours.
                    table.decor_mut().set_prefix("\n");
                }
                servers.insert(SERVER_NAME, Item::Table(table));
            }
            _ => bail!("its '{SERVERS}' is not a table"),
        }
        Ok(())
    }

    fn apply(&mut self, changes: &[Change]) -> anyhow::Result<()> {
        let entry = self.entry_mut()?;
        for change in changes {
            match &change.to {
                Some(value) => {
                    let mut value = toml_value(value)?;
                    // A comment after the old value stays after the new one.
                    if let Some(old) = entry.get(&change.key).and_then(Item::as_value) {
                        *value.decor_mut() = old.decor().clone();
                    }
                    entry.insert(&change.key, Item::Value(value));
                }
                None => {
                    entry.remove(&change.key);
                }
            }
        }
        Ok(())
    }

    fn remove_entry(&mut self) -> anyhow::Result<bool> {
        Ok(self
            .servers_mut()
            .and_then(|servers| servers.remove(SERVER_NAME))
            .is_some())
    }

    fn text(&self) -> String {
        self.doc.to_string()
    }
}

/// A JSON value of our entry as TOML (strings, booleans, numbers, arrays and tables).
fn toml_value(value: &Value) -> anyhow::Result<toml_edit::Value> {
    Ok(match value {
        Value::String(s) => s.as_str().into(),
        Value::Bool(b) => (*b).into(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.into(),
            (None, Some(f)) => f.into(),
            _ => bail!("{n} has no TOML form"),
        },
        Value::Array(items) => {
            let mut array = Array::new();
            for item in items {
                array.push(toml_value(item)?);
            }
            array.into()
        }
        Value::Object(map) => {
            let mut table = InlineTable::new();
            for (key, item) in map {
                table.insert(key, toml_value(item)?);
            }
            table.into()
        }
        Value::Null => bail!("TOML has no null"),
    })
}
