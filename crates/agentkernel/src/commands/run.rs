//! `agentkernel run`: one command in a fresh sandbox, output streamed live, stdin and
//! signals forwarded, the command's exit code returned.

use ak_core::ExecSpec;

use super::stream;
use crate::cli::RunArgs;
use crate::wiring;

pub async fn run(args: RunArgs) -> i32 {
    let spec = super::resolve_spec(&args.sandbox);
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
