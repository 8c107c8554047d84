//! A command as a user describes it (argv, `KEY=VALUE` entries, a workdir, a timeout, root or
//! not), checked and turned into the protocol's [`ExecSpec`] in one place for every front
//! end (CLI, HTTP, MCP).

use crate::error::ConfigError;
use crate::resources::parse_duration;
use crate::spec::{parse_env_entry, validate_sandbox_path};
use ak_protocol::ExecSpec;

/// The user the command runs as when root is asked for explicitly.
const ROOT_USER: &str = "0";

/// The longest single argument or environment entry `execve` takes (`MAX_ARG_STRLEN`,
/// 32 pages, counting the terminating NUL).
pub const MAX_ARG_BYTES: usize = 128 << 10;
/// The most bytes the arguments and environment entries may take together. The kernel's
/// own bound depends on the stack limit inside the sandbox (a quarter of it, 2 MiB with
/// the usual 8 MiB stack); 1 MiB leaves room for the environment the sandbox adds.
pub const MAX_COMMAND_BYTES: usize = 1 << 20;

/// Checks a command line and its extra environment against the kernel's limits, so that
/// an over-long command is refused here, with a clear message, rather than failing inside
/// the sandbox with `E2BIG`.
pub fn validate_argv(argv: &[String], env: &[String]) -> Result<(), ConfigError> {
    if argv.is_empty() || argv[0].is_empty() {
        return Err(ConfigError::EmptyCommand);
    }
    if argv.iter().any(|arg| arg.contains('\0')) {
        return Err(ConfigError::InvalidCommand(
            "an argument contains a NUL byte",
        ));
    }
    if argv.iter().any(|arg| arg.len() >= MAX_ARG_BYTES) {
        return Err(ConfigError::InvalidCommand(
            "an argument is longer than the kernel's limit of 128 KiB (MAX_ARG_STRLEN)",
        ));
    }
    if env.iter().any(|entry| entry.len() >= MAX_ARG_BYTES) {
        return Err(ConfigError::InvalidCommand(
            "an environment entry is longer than the kernel's limit of 128 KiB (MAX_ARG_STRLEN)",
        ));
    }
    // Each string costs its bytes, its NUL and the pointer to it.
    let cost = |s: &String| s.len() + 1 + std::mem::size_of::<usize>();
    let total: usize = argv.iter().chain(env).map(cost).sum();
    if total > MAX_COMMAND_BYTES {
        return Err(ConfigError::InvalidCommand(
            "the arguments and environment together exceed 1 MiB",
        ));
    }
    Ok(())
}

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
        validate_argv(&self.argv, &self.env)?;
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

    fn refusal(options: ExecOptions) -> String {
        match options.resolve() {
            Err(error) => error.to_string(),
            Ok(spec) => panic!("accepted: {:?}", spec.argv.len()),
        }
    }

    #[test]
    fn over_long_commands_are_refused_clearly() {
        let base = ExecOptions {
            argv: argv(&["echo"]),
            ..ExecOptions::default()
        };
        // The longest single argument the kernel takes, and one byte more.
        let longest = "a".repeat(MAX_ARG_BYTES - 1);
        let mut fits = base.clone();
        fits.argv.push(longest.clone());
        assert!(fits.resolve().is_ok());
        let mut one_arg = base.clone();
        one_arg.argv.push(format!("{longest}a"));
        assert!(refusal(one_arg).contains("MAX_ARG_STRLEN"));

        let mut one_env = base.clone();
        one_env.env.push(format!("A={longest}"));
        assert!(refusal(one_env).contains("environment entry"));

        // Many arguments, each within the limit, together beyond it.
        let mut many = base.clone();
        many.argv
            .extend(std::iter::repeat_n("b".repeat(64 << 10), 17));
        assert!(refusal(many).contains("exceed 1 MiB"));
        let mut with_env = base.clone();
        with_env
            .argv
            .extend(std::iter::repeat_n("b".repeat(64 << 10), 8));
        with_env.env.extend(std::iter::repeat_n(
            format!("K={}", "v".repeat(64 << 10)),
            9,
        ));
        assert!(refusal(with_env).contains("exceed 1 MiB"));
    }

    #[test]
    fn over_long_workdirs_and_bad_env_names_are_refused() {
        let base = ExecOptions {
            argv: argv(&["true"]),
            ..ExecOptions::default()
        };
        let long = ExecOptions {
            workdir: Some(format!("/{}", "d".repeat(5000))),
            ..base.clone()
        };
        assert!(refusal(long).contains("4095 bytes"));
        let spaced = ExecOptions {
            env: vec!["MY VAR=1".into()],
            ..base.clone()
        };
        assert!(refusal(spaced).contains("whitespace"));
        // A command's own working directory may be '/': unlike a sandbox's workdir, it
        // grants no write access.
        let root = ExecOptions {
            workdir: Some("/".into()),
            ..base
        };
        assert_eq!(root.resolve().unwrap().cwd.as_deref(), Some("/"));
    }
}
