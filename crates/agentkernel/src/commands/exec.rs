//! `agentkernel exec NAME -- CMD`: a command in a running named sandbox, streamed like `run`.

use ak_core::resources::parse_duration;
use ak_core::spec::{parse_env_entry, validate_sandbox_path};
use ak_core::{ExecSpec, PtySize};

use super::stream;
use crate::cli::ExecArgs;
use crate::exit;
use crate::wiring;

pub async fn exec(args: ExecArgs) -> i32 {
    let exec = match build(&args) {
        Ok(exec) => exec,
        Err(e) => exit::fail(exit::USAGE, &e.into()),
    };
    let (stdin, tty) = (exec.stdin, exec.pty.is_some());
    match wiring::service().exec_named(&args.name, exec).await {
        Ok(session) => {
            stream::stream(
                session,
                stream::Options {
                    stdin,
                    memory_limit: None,
                    tty,
                },
            )
            .await
        }
        Err(error) => stream::fail_start(error),
    }
}

fn build(args: &ExecArgs) -> Result<ExecSpec, ak_core::ConfigError> {
    let env = args
        .env
        .iter()
        .map(|entry| parse_env_entry(entry))
        .collect::<Result<Vec<_>, _>>()?;
    let cwd = args
        .workdir
        .as_deref()
        .map(validate_sandbox_path)
        .transpose()?
        .map(|p| p.to_string_lossy().into_owned());
    let timeout_ms = args
        .timeout
        .as_deref()
        .map(parse_duration)
        .transpose()?
        .map(|t| t.as_millis() as u64);
    Ok(ExecSpec {
        argv: args.command.clone(),
        env,
        cwd,
        user: None,
        stdin: stream::stdin_mode(),
        timeout_ms,
        pty: args.tty.then(terminal_size),
    })
}

/// The size of our terminal, or 24x80 when stdout is not one.
pub fn terminal_size() -> PtySize {
    rustix::termios::tcgetwinsize(rustix::stdio::stdout())
        .map(|size| PtySize {
            rows: size.ws_row.max(1),
            cols: size.ws_col.max(1),
        })
        .unwrap_or(PtySize { rows: 24, cols: 80 })
}
