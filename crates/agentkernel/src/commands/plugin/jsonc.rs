//! The JSON clients' files (Claude Code, Cursor, Gemini, OpenCode), edited through a
//! concrete syntax tree (jsonc-parser): comments, key order, indentation and everything
//! else outside our entry are written back as they were read, byte for byte.

use anyhow::{anyhow, bail};
use jsonc_parser::cst::{CstInputValue, CstObject, CstRootNode};
use jsonc_parser::{CollectOptions, ParseOptions, ast, parse_to_ast};
use serde_json::{Map, Value};

use super::{Change, ConfigDoc, SERVER_NAME};

/// One JSON (or JSON with comments) configuration file.
pub(super) struct JsoncDoc {
    root: CstRootNode,
    /// The key of the clients' map of servers (`mcpServers`, `mcp`).
    servers_key: &'static str,
    /// A new (or empty) file: it gets a final newline; an existing one keeps its ending.
    fresh: bool,
}

impl std::fmt::Debug for JsoncDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsoncDoc")
            .field("servers_key", &self.servers_key)
            .finish_non_exhaustive()
    }
}

/// What these clients accept: JSON with comments and trailing commas, nothing looser (a
/// file that only this parser could read would be broken for the client).
fn options() -> ParseOptions {
    ParseOptions {
        allow_comments: true,
        allow_trailing_commas: true,
        allow_loose_object_property_names: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        allow_bare_decimal_point_numbers: false,
        allow_non_finite_numbers: false,
        allow_extended_string_escapes: false,
    }
}

impl JsoncDoc {
    /// Parses `text` (empty: a new file), checking the shapes we will edit.
    pub(super) fn parse(text: &str, servers_key: &'static str) -> anyhow::Result<JsoncDoc> {
        let root = CstRootNode::parse(text, &options())
            .map_err(|e| anyhow!("it is not valid JSON: {e}"))?;
        if root.value().is_some() && root.object_value().is_none() {
            bail!("its top level is not a JSON object");
        }
        let doc = JsoncDoc {
            root,
            servers_key,
            fresh: text.trim().is_empty(),
        };
        if let Some(top) = doc.root.object_value()
            && let Some(servers) = top.get(servers_key)
            && servers.object_value().is_none()
        {
            bail!("its '{servers_key}' is not a JSON object");
        }
        if let Some(servers) = doc.servers()
            && let Some(entry) = servers.get(SERVER_NAME)
            && entry.object_value().is_none()
        {
            bail!("its '{servers_key}.{SERVER_NAME}' is not a JSON object");
        }
        Ok(doc)
    }

    fn servers(&self) -> Option<CstObject> {
        self.root.object_value()?.object_value(self.servers_key)
    }

    fn entry_object(&self) -> anyhow::Result<CstObject> {
        self.servers()
            .and_then(|servers| servers.object_value(SERVER_NAME))
            .ok_or_else(|| anyhow!("its '{}.{SERVER_NAME}' is gone", self.servers_key))
    }
}

impl ConfigDoc for JsoncDoc {
    fn entry(&self) -> anyhow::Result<Option<Map<String, Value>>> {
        let Some(entry) = self.servers().and_then(|s| s.object_value(SERVER_NAME)) else {
            return Ok(None);
        };
        match entry.to_serde_value() {
            Some(Value::Object(map)) => Ok(Some(map)),
            _ => bail!(
                "its '{}.{SERVER_NAME}' cannot be read as JSON",
                self.servers_key
            ),
        }
    }

    fn add_entry(&mut self, entry: &Map<String, Value>) -> anyhow::Result<()> {
        if let Some(text) = splice_on_one_line(&self.root.to_string(), self.servers_key, entry)? {
            self.root = CstRootNode::parse(&text, &options())
                .map_err(|e| anyhow!("the edited file does not parse: {e}"))?;
            return Ok(());
        }
        // Checked in `parse`: neither is replaced here, only created when missing.
        let servers = self
            .root
            .object_value_or_set()
            .object_value_or_set(self.servers_key);
        servers.append(SERVER_NAME, input(&Value::Object(entry.clone())));
        Ok(())
    }

    fn apply(&mut self, changes: &[Change]) -> anyhow::Result<()> {
        let entry = self.entry_object()?;
        for change in changes {
            match (&change.to, entry.get(&change.key)) {
                (Some(value), Some(prop)) => prop.set_value(input(value)),
                (Some(value), None) => {
                    entry.append(&change.key, input(value));
                }
                (None, Some(prop)) => prop.remove(),
                (None, None) => {}
            }
        }
        Ok(())
    }

    fn remove_entry(&mut self) -> anyhow::Result<bool> {
        match self.servers().and_then(|servers| servers.get(SERVER_NAME)) {
            Some(prop) => {
                prop.remove();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn text(&self) -> String {
        let text = self.root.to_string();
        if self.fresh && !text.ends_with('\n') {
            text + "\n"
        } else {
            text
        }
    }
}

/// Our entry added to an object written on one line (the map of servers, or the top level
/// when there is none), on that line: the tree would spread the whole object over lines,
/// changing the layout of what is not ours. `None` when the object spans lines (the tree
/// then adds our entry in the object's own indentation) or the file is new.
fn splice_on_one_line(
    text: &str,
    servers_key: &str,
    entry: &Map<String, Value>,
) -> anyhow::Result<Option<String>> {
    let parsed = parse_to_ast(text, &CollectOptions::default(), &options())
        .map_err(|e| anyhow!("it is not valid JSON: {e}"))?;
    let Some(ast::Value::Object(top)) = parsed.value else {
        return Ok(None);
    };
    let ours = format!(
        "{}: {}",
        spaced(&Value::from(SERVER_NAME))?,
        spaced(&Value::Object(entry.clone()))?
    );
    let (object, property) = match top
        .properties
        .iter()
        .find(|p| p.name.as_str() == servers_key)
    {
        Some(servers) => match &servers.value {
            ast::Value::Object(servers) => (servers, ours),
            _ => return Ok(None),
        },
        None => (
            &top,
            format!("{}: {{{ours}}}", spaced(&Value::from(servers_key))?),
        ),
    };
    if text[object.range.start..object.range.end].contains('\n') {
        return Ok(None);
    }
    let (at, insert) = match object.properties.last() {
        Some(last) => (last.range.end, format!(", {property}")),
        // Just inside the opening brace.
        None => (object.range.start + 1, property),
    };
    Ok(Some(format!("{}{insert}{}", &text[..at], &text[at..])))
}

/// JSON on one line, spaced as people write it (`{"a": 1, "b": [2, 3]}`).
fn spaced(value: &Value) -> anyhow::Result<String> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, Spaced);
    serde::Serialize::serialize(value, &mut serializer)?;
    Ok(String::from_utf8(out)?)
}

/// serde_json's compact form with a space after each `:` and `,`.
struct Spaced;

impl serde_json::ser::Formatter for Spaced {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// A JSON value as the tree takes it.
fn input(value: &Value) -> CstInputValue {
    match value {
        Value::Null => CstInputValue::Null,
        Value::Bool(b) => CstInputValue::Bool(*b),
        Value::Number(n) => CstInputValue::Number(n.to_string()),
        Value::String(s) => CstInputValue::String(s.clone()),
        Value::Array(items) => CstInputValue::Array(items.iter().map(input).collect()),
        Value::Object(map) => {
            CstInputValue::Object(map.iter().map(|(k, v)| (k.clone(), input(v))).collect())
        }
    }
}
