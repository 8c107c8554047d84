//! A git repository to clone into a sandbox's workdir before it starts (`--source
//! URL[#REF]`, the SDKs' `source_url` / `source_ref`): parsed and checked here, cloned by
//! the service on the host side.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The transports a source may use. Others (`git://` unauthenticated, `ext::` which runs
/// a command, `fd::`) are never accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GitProtocol {
    Https,
    Ssh,
    /// A repository on the host's file system: only for callers that may read host paths.
    File,
}

impl GitProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            GitProtocol::Https => "https",
            GitProtocol::Ssh => "ssh",
            GitProtocol::File => "file",
        }
    }

    pub fn parse(name: &str) -> Result<GitProtocol, ConfigError> {
        match name {
            "https" => Ok(GitProtocol::Https),
            "ssh" => Ok(GitProtocol::Ssh),
            "file" => Ok(GitProtocol::File),
            other => Err(ConfigError::InvalidSource {
                input: other.to_string(),
                reason: "unknown protocol (expected https, ssh or file)".into(),
            }),
        }
    }
}

/// A repository and, optionally, the branch, tag or commit to check out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitSource {
    pub url: String,
    /// A branch, tag or commit; the remote's default branch when absent.
    pub reference: Option<String>,
}

/// The longest URL or ref accepted: far beyond any real one, short of anything abusive.
const MAX_SOURCE_BYTES: usize = 2048;

impl GitSource {
    /// Parses the CLI's `URL[#REF]`.
    pub fn parse_cli(input: &str) -> Result<GitSource, ConfigError> {
        match input.rsplit_once('#') {
            Some((url, reference)) => GitSource::new(url, Some(reference)),
            None => GitSource::new(input, None),
        }
    }

    /// The API's and MCP's `source_url` and `source_ref`: a ref needs a URL.
    pub fn from_fields(
        url: Option<&str>,
        reference: Option<&str>,
    ) -> Result<Option<GitSource>, ConfigError> {
        match (url, reference) {
            (Some(url), reference) => GitSource::new(url, reference).map(Some),
            (None, Some(reference)) => Err(ConfigError::InvalidSource {
                input: reference.to_string(),
                reason: "source_ref is given without a source_url".into(),
            }),
            (None, None) => Ok(None),
        }
    }

    /// Checks a URL and ref given apart.
    pub fn new(url: &str, reference: Option<&str>) -> Result<GitSource, ConfigError> {
        let source = GitSource {
            url: url.to_string(),
            reference: reference.map(str::to_string),
        };
        source.protocol()?;
        if let Some(reference) = reference {
            validate_ref(reference).map_err(|reason| ConfigError::InvalidSource {
                input: reference.to_string(),
                reason: format!("the ref: {reason}"),
            })?;
        }
        Ok(source)
    }

    /// The transport the URL names; an error for anything else or for a URL git could
    /// read as an option.
    pub fn protocol(&self) -> Result<GitProtocol, ConfigError> {
        let url = &self.url;
        let invalid = |reason: &str| ConfigError::InvalidSource {
            input: url.clone(),
            reason: reason.to_string(),
        };
        if url.is_empty() || url.len() > MAX_SOURCE_BYTES {
            return Err(invalid("must be 1 to 2048 bytes"));
        }
        if url.starts_with('-') {
            return Err(invalid("must not start with '-'"));
        }
        if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid("must not contain spaces or control characters"));
        }
        let protocol = if let Some(rest) = url.strip_prefix("https://") {
            if rest.is_empty() || rest.starts_with('/') {
                return Err(invalid("names no host"));
            }
            GitProtocol::Https
        } else if let Some(rest) = url.strip_prefix("ssh://") {
            if rest.is_empty() || rest.starts_with('/') || rest.starts_with('-') {
                return Err(invalid("names no host"));
            }
            GitProtocol::Ssh
        } else if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid("a file:// URL needs an absolute path"));
            }
            GitProtocol::File
        } else if url.contains("://") || url.contains("::") {
            return Err(invalid(
                "unsupported protocol (expected https://, ssh://, user@host:path or file://)",
            ));
        } else if let Some((host, _)) = url.split_once(':')
            && host.contains('@')
            && !host.contains('/')
        {
            // scp-like `git@github.com:org/repo.git`: ssh.
            GitProtocol::Ssh
        } else {
            return Err(invalid(
                "expected https://, ssh://, user@host:path or file:// (a local path needs file://)",
            ));
        };
        Ok(protocol)
    }
}

/// `git check-ref-format`'s rules, plus no leading `-` (an option to git) and no `@{`.
fn validate_ref(reference: &str) -> Result<(), &'static str> {
    if reference.is_empty() || reference.len() > MAX_SOURCE_BYTES {
        return Err("must be 1 to 2048 bytes");
    }
    if reference.starts_with('-') {
        return Err("must not start with '-'");
    }
    if reference.contains("..") || reference.contains("@{") || reference.contains("//") {
        return Err("must not contain '..', '@{' or '//'");
    }
    if reference
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c))
    {
        return Err("must not contain spaces, control characters or any of ~ ^ : ? * [ \\");
    }
    if reference.starts_with('/')
        || reference.ends_with('/')
        || reference.ends_with('.')
        || reference.ends_with(".lock")
        || reference.split('/').any(|part| part.starts_with('.'))
    {
        return Err("is not a valid git ref name");
    }
    Ok(())
}

impl fmt::Display for GitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Some(reference) => write!(f, "{}#{reference}", self.url),
            None => f.write_str(&self.url),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_accepted_protocols() {
        let cases = [
            ("https://github.com/a/b.git", GitProtocol::Https),
            ("ssh://git@github.com/a/b.git", GitProtocol::Ssh),
            ("git@github.com:a/b.git", GitProtocol::Ssh),
            ("file:///srv/repo", GitProtocol::File),
        ];
        for (url, protocol) in cases {
            assert_eq!(
                GitSource::new(url, None).unwrap().protocol().unwrap(),
                protocol
            );
        }
        let s = GitSource::parse_cli("https://h/r.git#v1.2").unwrap();
        assert_eq!(s.reference.as_deref(), Some("v1.2"));
        assert_eq!(s.to_string(), "https://h/r.git#v1.2");
        assert!(GitSource::new("https://h/r", Some("0123abcd")).is_ok());
        assert!(GitSource::new("https://h/r", Some("feature/x")).is_ok());
    }

    #[test]
    fn refuses_other_protocols_and_option_lookalikes() {
        for url in [
            "",
            "--upload-pack=touch /tmp/x",
            "-oProxyCommand=x",
            "ext::sh -c touch% /tmp/pwned",
            "fd::3",
            "git://github.com/a/b",
            "http://github.com/a/b",
            "ftp://x/y",
            "/srv/repo",
            "relative/repo",
            "file://relative",
            "https://",
            "ssh://-oProxyCommand=x/y",
            "https://h/a b",
        ] {
            assert!(GitSource::new(url, None).is_err(), "{url:?}");
        }
        for reference in [
            "", "-b", "a..b", "a b", "a:b", "@{-1}", "x.lock", ".hidden", "a/", "/a", "a~1",
        ] {
            assert!(
                GitSource::new("https://h/r", Some(reference)).is_err(),
                "{reference:?}"
            );
        }
    }
}
