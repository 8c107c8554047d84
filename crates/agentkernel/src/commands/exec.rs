//! `agentkernel exec NAME -- CMD`: a command in a running named sandbox, streamed like `run`.

use ak_core::exec::ExecOptions;
use ak_core::{ExecSpec, PtySize};

use super::stream;
use crate::cli::ExecArgs;
use crate::exit;
use crate::front;
use crate::wiring;

pub async fn exec(args: ExecArgs) -> i32 {
    let exec = match build(&args) {
        Ok(exec) => exec,
        Err(e) => exit::fail(exit::USAGE, &e.into()),
    };
    let (stdin, tty) = (exec.stdin, exec.pty.is_some());
    match front::exec(&wiring::service(), &args.name, exec).await {
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
        Err(failure) => failure.report(),
    }
}

fn build(args: &ExecArgs) -> Result<ExecSpec, ak_core::ConfigError> {
    let mut exec = ExecOptions {
        argv: args.command.clone(),
        env: args.env.clone(),
        workdir: args.workdir.clone(),
        timeout: args.timeout.clone(),
        ..ExecOptions::default()
    }
    .resolve()?;
    exec.stdin = stream::stdin_mode();
    exec.pty = args.tty.then(terminal_size);
    Ok(exec)
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
