//! Secrets a sandbox may use without ever holding them: the SDK's `secrets` entries
//! (`KEY=value:host`, `KEY:host`, `KEY:host:header`) and `secret_files` (`KEY`), parsed and
//! checked here once.
//!
//! Inside the sandbox the variable `KEY` holds a placeholder unique to the sandbox and the
//! secret; the egress helper (`ak-egress`) puts the real value in its place only in requests
//! to the secret's hosts. A [`SandboxSpec`](crate::SandboxSpec) carries the rules (key, host,
//! header, placeholder) but never a value: values travel beside it in [`SecretValues`], which
//! is never serialized and whose `Debug` prints no value.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::egress::HostPattern;
use crate::error::ConfigError;

/// Longest secret name.
const MAX_KEY: usize = 128;
/// Largest secret value: an API token or a key file, not a data set (it is held in memory
/// by the egress helper and searched for in every response).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The directory the host gives a sandbox with secrets (read-only): the sandbox CA, a
/// bundle of it and the image's roots, and the secret files.
pub const RUN_DIR: &str = "/run/agentkernel";
/// Where `secret_files` land inside the sandbox. Their real values are visible to every
/// process of the sandbox that runs as its root: a tool that must read a file gets the
/// secret itself, not a placeholder.
pub const SECRET_FILES_DIR: &str = "/run/agentkernel/secrets";
/// The sandbox CA's certificate inside the sandbox.
pub const CA_FILE: &str = "/run/agentkernel/ca.pem";
/// The image's root certificates and the sandbox CA, in one file.
pub const CA_BUNDLE: &str = "/run/agentkernel/ca-bundle.pem";
/// The system bundle the sandbox CA bundle is bound over, where the image has one.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The variables that make common TLS clients trust the sandbox CA: OpenSSL and curl,
/// Python's requests, Node (which adds to its own roots rather than replacing them).
pub fn trust_env() -> Vec<(String, String)> {
    [
        ("SSL_CERT_FILE", CA_BUNDLE),
        ("REQUESTS_CA_BUNDLE", CA_BUNDLE),
        ("CURL_CA_BUNDLE", CA_BUNDLE),
        ("NODE_EXTRA_CA_CERTS", CA_FILE),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}
/// Prefix of every placeholder, so that a placeholder is recognisable in logs.
pub const PLACEHOLDER_PREFIX: &str = "akph_";

/// Checks a secret's name: an environment variable name (`[A-Za-z_][A-Za-z0-9_]*`, at most
/// 128 characters), since the sandbox sees it as one, and a file name under
/// [`SECRET_FILES_DIR`].
pub fn validate_key(key: &str) -> Result<(), ConfigError> {
    let invalid = |reason| ConfigError::InvalidSecret {
        entry: key.to_string(),
        reason,
    };
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(invalid("a secret's name has 1 to 128 characters"));
    }
    if !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        || key.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(invalid(
            "a secret's name is an environment variable name: letters, digits and '_', not starting with a digit",
        ));
    }
    Ok(())
}

/// Checks a secret's value: not empty, at most [`MAX_VALUE_BYTES`], no NUL byte (it goes
/// into HTTP headers and files).
pub fn validate_value(key: &str, value: &str) -> Result<(), ConfigError> {
    let invalid = |reason| ConfigError::InvalidSecret {
        entry: key.to_string(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("the value is empty"));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(invalid("the value is larger than 64 KiB"));
    }
    if value.contains(['\0', '\r', '\n']) {
        return Err(invalid(
            "the value holds a NUL or line break (it is sent in HTTP headers)",
        ));
    }
    Ok(())
}

/// A secret's real value. Its `Debug` and `Display` print nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(key: &str, value: String) -> Result<SecretValue, ConfigError> {
        validate_value(key, &value)?;
        Ok(SecretValue(value))
    }

    /// The value itself, for the egress helper and secret files only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// The values of one sandbox's secrets, by key. Never serialized with the spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretValues(pub BTreeMap<String, SecretValue>);

impl SecretValues {
    pub fn get(&self, key: &str) -> Option<&SecretValue> {
        self.0.get(key)
    }
}

/// One `secrets` entry: substitute `key`'s value for its placeholder in requests to `host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRule {
    pub key: String,
    #[serde(with = "pattern_text")]
    pub host: HostPattern,
    /// Only this request header gets the value; `None`: any header holding the placeholder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// What the sandbox's `key` variable holds instead of the value.
    pub placeholder: String,
}

mod pattern_text {
    use super::HostPattern;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(host: &HostPattern, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(host)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HostPattern, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One parsed `secrets` entry, before a placeholder is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretEntry {
    pub key: String,
    pub host: HostPattern,
    pub header: Option<String>,
    /// Given inline (`KEY=value:host`); `None`: from the secret store or the host's
    /// environment.
    pub value: Option<SecretValue>,
}

/// Parses one `secrets` entry: `KEY=value:host` (the value is everything up to the last
/// `:`, so it may hold colons), `KEY:host` or `KEY:host:header`.
pub fn parse_entry(entry: &str) -> Result<SecretEntry, ConfigError> {
    let invalid = |reason: &'static str| ConfigError::InvalidSecret {
        entry: shown_entry(entry),
        reason,
    };
    let host_pattern = |host: &str| -> Result<HostPattern, ConfigError> {
        if host.is_empty() {
            return Err(invalid("the host after ':' is empty"));
        }
        host.parse()
            .map_err(|e: ConfigError| ConfigError::InvalidSecret {
                entry: shown_entry(entry),
                reason: match e {
                    ConfigError::InvalidAllowlist { .. } => "the host is not a valid host name",
                    _ => "the host is not valid",
                },
            })
    };
    let name_end = entry.find(['=', ':']).unwrap_or(entry.len());
    let key = &entry[..name_end];
    validate_key(key)
        .map_err(|_| invalid("the name before '=' or ':' is not an environment variable name"))?;
    let rest = &entry[name_end..];
    if let Some(inline) = rest.strip_prefix('=') {
        let (value, host) = inline
            .rsplit_once(':')
            .ok_or_else(|| invalid("expected KEY=value:host"))?;
        let value = SecretValue::new(key, value.to_string())?;
        return Ok(SecretEntry {
            key: key.to_string(),
            host: host_pattern(host)?,
            header: None,
            value: Some(value),
        });
    }
    let Some(rest) = rest.strip_prefix(':') else {
        return Err(invalid(
            "expected KEY=value:host, KEY:host or KEY:host:header",
        ));
    };
    let (host, header) = match rest.split_once(':') {
        Some((host, header)) => (host, Some(header)),
        None => (rest, None),
    };
    let host = host_pattern(host)?;
    let header = header
        .map(|header| {
            if is_header_name(header) {
                Ok(header.to_ascii_lowercase())
            } else {
                Err(invalid(
                    "the header after the host is not an HTTP header name",
                ))
            }
        })
        .transpose()?;
    Ok(SecretEntry {
        key: key.to_string(),
        host,
        header,
        value: None,
    })
}

/// An HTTP header name: one or more token characters (RFC 9110 §5.6.2).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An entry as an error message shows it: an inline value is never repeated.
fn shown_entry(entry: &str) -> String {
    match entry.split_once('=') {
        Some((key, _)) => format!("{key}=<value>"),
        None => entry.to_string(),
    }
}

/// A fresh placeholder: [`PLACEHOLDER_PREFIX`] and 32 random hex digits, so that it is
/// unique to one sandbox and one secret and cannot be guessed from either.
pub fn new_placeholder() -> String {
    format!("{PLACEHOLDER_PREFIX}{}", crate::random::uuid_v4().simple())
}

/// The rules, values and files of a sandbox's `secrets` and `secret_files`, checked: one
/// placeholder per key, no key given two different inline values, and every file a valid
/// key. Keys without an inline value are left for the service to find.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    pub rules: Vec<SecretRule>,
    pub values: SecretValues,
    pub files: Vec<String>,
}

impl Secrets {
    pub fn parse(entries: &[String], files: &[String]) -> Result<Secrets, ConfigError> {
        let mut secrets = Secrets::default();
        let mut placeholders: BTreeMap<String, String> = BTreeMap::new();
        for entry in entries {
            let parsed = parse_entry(entry)?;
            if let Some(value) = parsed.value {
                match secrets.values.0.get(&parsed.key) {
                    Some(existing) if *existing != value => {
                        return Err(ConfigError::InvalidSecret {
                            entry: parsed.key,
                            reason: "given two different values",
                        });
                    }
                    _ => {
                        secrets.values.0.insert(parsed.key.clone(), value);
                    }
                }
            }
            let placeholder = placeholders
                .entry(parsed.key.clone())
                .or_insert_with(new_placeholder)
                .clone();
            let rule = SecretRule {
                key: parsed.key,
                host: parsed.host,
                header: parsed.header,
                placeholder,
            };
            if !secrets.rules.contains(&rule) {
                secrets.rules.push(rule);
            }
        }
        for file in files {
            validate_key(file)?;
            if !secrets.files.contains(file) {
                secrets.files.push(file.clone());
            }
        }
        Ok(secrets)
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.files.is_empty()
    }
}

/// Every key whose value a sandbox needs: its rules' and its files'.
pub fn needed_keys(rules: &[SecretRule], files: &[String]) -> Vec<String> {
    let mut keys: Vec<String> = rules.iter().map(|r| r.key.clone()).collect();
    keys.extend(files.iter().cloned());
    keys.sort();
    keys.dedup();
    keys
}

/// What the egress helper does when a placeholder heads to a host not its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLeak {
    /// Refuse the connection and audit it (the default).
    #[default]
    Block,
    /// Also stop the sandbox.
    Kill,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms_parse() {
        let inline = parse_entry("TOKEN=s3:cr:et:api.example.com").unwrap();
        assert_eq!(inline.key, "TOKEN");
        assert_eq!(inline.value.unwrap().expose(), "s3:cr:et");
        assert_eq!(inline.host, "api.example.com".parse().unwrap());
        let named = parse_entry("GH_TOKEN:api.github.com").unwrap();
        assert_eq!((named.header, named.value), (None, None));
        let header = parse_entry("KEY:*.example.org:X-Api-Key").unwrap();
        assert_eq!(header.header.as_deref(), Some("x-api-key"));
        assert!(!header.host.is_exact());
    }

    #[test]
    fn bad_entries_are_refused_without_their_value() {
        for (entry, message) in [
            ("TOKEN", "expected KEY=value:host"),
            ("TOKEN=abc", "expected KEY=value:host"),
            ("TOKEN=hunter2:", "the host after ':' is empty"),
            ("TOKEN:", "the host after ':' is empty"),
            ("=v:host.com", "not an environment variable name"),
            ("1KEY:host.com", "not an environment variable name"),
            ("BAD-KEY:host.com", "not an environment variable name"),
            ("KEY:host.com:bad header", "not an HTTP header name"),
            ("KEY:host.com:", "not an HTTP header name"),
            ("KEY:bad_host!:", "not a valid host name"),
            ("KEY=:host.com", "the value is empty"),
            ("KEY:10.0.0.1", "not a valid host name"),
        ] {
            let error = parse_entry(entry).unwrap_err().to_string();
            assert!(error.contains(message), "{entry}: {error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn one_placeholder_per_key() {
        let secrets = Secrets::parse(
            &[
                "A:one.example".into(),
                "A:two.example".into(),
                "B=v:one.example".into(),
            ],
            &["A".into(), "C".into()],
        )
        .unwrap();
        assert_eq!(secrets.rules.len(), 3);
        assert_eq!(secrets.rules[0].placeholder, secrets.rules[1].placeholder);
        assert_ne!(secrets.rules[0].placeholder, secrets.rules[2].placeholder);
        assert!(secrets.rules[0].placeholder.starts_with(PLACEHOLDER_PREFIX));
        assert_eq!(needed_keys(&secrets.rules, &secrets.files), ["A", "B", "C"]);
        assert!(Secrets::parse(&["B=x:a.example".into(), "B=y:b.example".into()], &[]).is_err());
        assert!(Secrets::parse(&[], &["no/slash".into()]).is_err());
    }

    #[test]
    fn values_never_print() {
        let values = SecretValues(
            [(
                "K".to_string(),
                SecretValue::new("K", "hunter2".into()).unwrap(),
            )]
            .into(),
        );
        assert!(!format!("{values:?}").contains("hunter2"));
        assert!(SecretValue::new("K", "a\nb".into()).is_err());
        assert!(SecretValue::new("K", "x".repeat(MAX_VALUE_BYTES + 1)).is_err());
    }
}
