//! A command as a user describes it (argv, `KEY=VALUE` entries, a workdir, a timeout, root or
//! not), checked and turned into the protocol's [`ExecSpec`] in one place for every front
//! end (CLI, HTTP, MCP).

use crate::error::ConfigError;
use crate::resources::parse_duration;
use crate::spec::{parse_env_entry, validate_sandbox_path};
use ak_protocol::ExecSpec;

/// The user the command runs as when root is asked for explicitly.
const ROOT_USER: &str = "0";

/// A command's options before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOptions {
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Absolute working directory inside the sandbox.
    pub workdir: Option<String>,
    /// A duration such as `30s`.
    pub timeout: Option<String>,
    /// Wall-clock limit in milliseconds (instead of `timeout`).
    pub timeout_ms: Option<u64>,
    /// Run as the sandbox's root user.
    pub root: bool,
}

impl ExecOptions {
    /// Validates the options into an exec request (stdin `/dev/null`, no terminal: callers
    /// that forward input or use a terminal set those afterwards).
    pub fn resolve(self) -> Result<ExecSpec, ConfigError> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(ConfigError::EmptyCommand);
        }
        if self.argv.iter().any(|arg| arg.contains('\0')) {
            return Err(ConfigError::InvalidCommand(
                "an argument contains a NUL byte",
            ));
        }
        let env = self
            .env
            .iter()
            .map(|entry| parse_env_entry(entry))
            .collect::<Result<Vec<_>, _>>()?;
        let cwd = self
            .workdir
            .as_deref()
            .map(validate_sandbox_path)
            .transpose()?
            .map(|path| path.to_string_lossy().into_owned());
        let timeout_ms = match (self.timeout.as_deref(), self.timeout_ms) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::InvalidCommand(
                    "give either a timeout or timeout_ms, not both",
                ));
            }
            (Some(text), None) => Some(parse_duration(text)?.as_millis() as u64),
            (None, Some(0)) => return Err(ConfigError::InvalidDuration("0ms".into())),
            (None, ms) => ms,
        };
        Ok(ExecSpec {
            argv: self.argv,
            env,
            cwd,
            user: self.root.then(|| ROOT_USER.to_string()),
            timeout_ms,
            ..ExecSpec::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn resolves_every_field() {
        let spec = ExecOptions {
            argv: argv(&["sh", "-c", "true"]),
            env: vec!["A=1".into(), "B=x=y".into()],
            workdir: Some("/tmp//w/.".into()),
            timeout: Some("2s".into()),
            timeout_ms: None,
            root: true,
        }
        .resolve()
        .unwrap();
        assert_eq!(spec.argv, argv(&["sh", "-c", "true"]));
        assert_eq!(
            spec.env,
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(spec.cwd.as_deref(), Some("/tmp/w"));
        assert_eq!(spec.timeout_ms, Some(2000));
        assert_eq!(spec.user.as_deref(), Some("0"));
    }

    #[test]
    fn refuses_bad_input() {
        let base = ExecOptions {
            argv: argv(&["true"]),
            ..ExecOptions::default()
        };
        let cases = [
            ExecOptions {
                argv: vec![],
                ..base.clone()
            },
            ExecOptions {
                argv: argv(&[""]),
                ..base.clone()
            },
            ExecOptions {
                argv: argv(&["a\0b"]),
                ..base.clone()
            },
            ExecOptions {
                env: vec!["NOEQUALS".into()],
                ..base.clone()
            },
            ExecOptions {
                workdir: Some("../etc".into()),
                ..base.clone()
            },
            ExecOptions {
                workdir: Some("relative".into()),
                ..base.clone()
            },
            ExecOptions {
                timeout: Some("soon".into()),
                ..base.clone()
            },
            ExecOptions {
                timeout_ms: Some(0),
                ..base.clone()
            },
            ExecOptions {
                timeout: Some("1s".into()),
                timeout_ms: Some(1),
                ..base.clone()
            },
        ];
        for case in cases {
            assert!(case.clone().resolve().is_err(), "{case:?}");
        }
        assert!(base.resolve().is_ok());
    }
}
