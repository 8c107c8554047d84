//! `agentkernel run`: one command in a fresh sandbox, output streamed live, stdin and
//! signals forwarded, the command's exit code returned.

use ak_core::ExecSpec;
use ak_core::config::{load_options, resolve};
use ak_core::spec::new_sandbox_id;
use anyhow::anyhow;

use super::stream;
use crate::cli::RunArgs;
use crate::exit;
use crate::wiring;

pub async fn run(args: RunArgs) -> i32 {
    let cwd = match std::env::current_dir() {
        Ok(cwd) => cwd,
        Err(e) => exit::fail(
            exit::USAGE,
            &anyhow!("cannot read the current directory: {e}"),
        ),
    };
    let spec = match load_options(args.sandbox.options(), &cwd)
        .and_then(|options| resolve(options, &cwd, new_sandbox_id()))
    {
        Ok(spec) => spec,
        Err(e) => exit::fail(exit::USAGE, &e.into()),
    };
    let stdin = stream::stdin_mode();
    let exec = ExecSpec {
        argv: args.command,
        stdin,
        ..ExecSpec::default()
    };

    let service = wiring::service();
    match service.start_run(&spec, exec).await {
        Ok(session) => {
            stream::stream(
                session,
                stream::Options {
                    stdin,
                    memory_limit: Some(spec.resources.memory_bytes),
                    tty: false,
                },
            )
            .await
        }
        Err(error) => stream::fail_start(error),
    }
}
