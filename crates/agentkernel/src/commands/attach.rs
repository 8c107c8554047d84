//! `agentkernel attach NAME`: an interactive shell on a terminal in a running sandbox.
//! Leaving the shell (or losing the connection) ends only the shell; the sandbox runs on.

use ak_core::{ExecSpec, StdinMode};

use super::exec::terminal_size;
use super::stream;
use crate::cli::AttachArgs;
use crate::front;
use crate::wiring;

/// Starts bash when the sandbox has it, else sh.
const DEFAULT_SHELL: &[&str] = &[
    "/bin/sh",
    "-c",
    "command -v bash >/dev/null && exec bash -i || exec sh -i",
];

pub async fn attach(args: AttachArgs) -> i32 {
    let argv = match &args.shell {
        Some(shell) => vec![shell.clone()],
        None => DEFAULT_SHELL.iter().map(|s| s.to_string()).collect(),
    };
    let exec = ExecSpec {
        argv,
        env: vec![(
            "TERM".into(),
            std::env::var("TERM").unwrap_or_else(|_| "xterm".into()),
        )],
        stdin: StdinMode::Pipe,
        pty: Some(terminal_size()),
        ..ExecSpec::default()
    };
    match front::exec(&wiring::service(), &args.name, exec).await {
        Ok(session) => {
            stream::stream(
                session,
                stream::Options {
                    stdin: StdinMode::Pipe,
                    memory_limit: None,
                    tty: true,
                },
            )
            .await
        }
        Err(failure) => failure.report(),
    }
}
