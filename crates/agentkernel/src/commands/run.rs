//! `agentkernel run`: one command in a fresh sandbox, output streamed live, stdin and
//! signals forwarded, the command's exit code returned.

use std::os::fd::OwnedFd;

use ak_core::{ExecSpec, SandboxSpec};
use ak_service::{Caller, Placement};
use anyhow::anyhow;

use super::stream;
use crate::cli::RunArgs;
use crate::daemon::client::{self, ClientError};
use crate::daemon::{Request, Response, socket_path};
use crate::exit;
use crate::wiring;

pub async fn run(args: RunArgs) -> i32 {
    let mut spec = super::resolve_spec(&args.sandbox);
    let service = wiring::service();
    let pooled = args.fast || socket_path().exists();
    if !pooled {
        // Everything below until the backend's creation (half a millisecond here) then
        // overlaps the part of it that needs nothing else.
        service.expect_run(&spec);
    }
    // Before the pool is asked: the image (a stored one names its digest) is part of the
    // pool's key.
    if let Err(error) = service
        .prepare_image(&mut spec, Some(&args.command), args.pull)
        .await
    {
        return stream::fail_start(error);
    }
    // Only an OCI image brings a command of its own (its Entrypoint/Cmd).
    if args.command.is_empty()
        && !matches!(
            spec.image,
            ak_core::ImageRef::Oci(_) | ak_core::ImageRef::Stored(_)
        )
    {
        crate::exit::fail(
            crate::exit::USAGE,
            &anyhow::anyhow!(
                "the command to run is missing: agentkernel run [OPTIONS] -- CMD… (only an OCI \
                 image, --image NAME, brings one of its own)"
            ),
        );
    }
    let stdin = stream::stdin_mode();
    let exec = ExecSpec {
        argv: args.command,
        stdin,
        ..ExecSpec::default()
    };
    let options = stream::Options {
        stdin,
        memory_limit: Some(spec.resources.memory_bytes),
        tty: false,
    };

    if pooled {
        match from_pool(&spec, args.fast) {
            Ok(Some(connection)) => {
                let connection = std::os::unix::net::UnixStream::from(connection);
                let transport = match connection
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::UnixStream::from_std(connection))
                {
                    Ok(stream) => Box::new(stream),
                    Err(e) => exit::fail(exit::SANDBOX_FAILURE, &anyhow!("pool connection: {e}")),
                };
                let started = service
                    .start_handed_out(Caller::Local, transport, &spec, exec)
                    .await;
                return match started {
                    Ok(session) => stream::stream(session, options).await,
                    Err(error) => stream::fail_start(error),
                };
            }
            Ok(None) => {}
            Err(error) => exit::fail(exit::SANDBOX_FAILURE, &error),
        }
    }

    match service
        .start_run(Caller::Local, &spec, exec, Placement::Fresh)
        .await
    {
        Ok(session) => stream::stream(session, options).await,
        Err(error) => stream::fail_start(error),
    }
}

/// A connection to a never-used sandbox from the daemon (from its pool, or built for this
/// run when the spec has host mounts). Without `required`, any reason the daemon cannot
/// serve (none running, the daemon refusing) means `Ok(None)`: the run makes its own
/// sandbox. With it (`--fast`), those are errors, and so are host mounts, which no pool
/// can prepare ahead.
fn from_pool(spec: &SandboxSpec, required: bool) -> anyhow::Result<Option<OwnedFd>> {
    let refuse = |error: anyhow::Error| if required { Err(error) } else { Ok(None) };
    if required && !ak_service::poolable(spec) {
        return refuse(anyhow!(
            "--fast needs a sandbox without host mounts (drop --mount-cwd)"
        ));
    }
    let request = Request::Acquire {
        spec: Box::new(spec.clone()),
    };
    match client::call(&socket_path(), &request) {
        Ok((Response::Acquired { .. }, Some(fd))) => Ok(Some(fd)),
        Ok((Response::Error { message, .. }, _)) => refuse(anyhow!(
            "the daemon could not hand out a sandbox: {message}"
        )),
        Ok((other, _)) => refuse(anyhow!("unexpected answer from the daemon: {other:?}")),
        Err(ClientError::NotRunning(path)) => refuse(anyhow!(
            "--fast needs the daemon, and none runs (no socket at {path}); start it with `agentkernel daemon start`"
        )),
        Err(ClientError::Other(error)) => {
            tracing::warn!("daemon unusable, making a fresh sandbox: {error:#}");
            refuse(error)
        }
    }
}
