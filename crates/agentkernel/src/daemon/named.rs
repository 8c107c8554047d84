//! The daemon's side of the CLI's named-sandbox commands: the same service calls the CLI
//! makes when no daemon runs, with a failure sent back with the exit code it stands for.

use std::os::fd::OwnedFd;

use ak_core::BackendError;
use ak_service::{Caller, Service, ServiceError};

use super::{Request, Response};
use crate::exit;

/// Does `request` with `service`: the answer, and the agent connection for `Connect`.
pub(super) async fn answer(service: &Service, request: Request) -> (Response, Option<OwnedFd>) {
    let record = |record| Response::Record(Box::new(record));
    let result = match request {
        Request::Create { name, spec, dir } => service
            .create_named(Caller::Local, &name, *spec, dir.as_deref())
            .await
            .map(record),
        Request::Start { name } => service.start_named(Caller::Local, &name).await.map(record),
        Request::StopSandbox { name } => service.stop_named(Caller::Local, &name).await.map(record),
        Request::Remove { name, force } => service
            .remove_named(Caller::Local, &name, force)
            .await
            .map(|()| Response::Removed),
        Request::List => service.list_named().await.map(Response::Records),
        Request::Inspect { name } => service.inspect_named(&name).await.map(record),
        Request::Connect { name } => {
            return match connect(service, &name).await {
                Ok(connection) => (Response::Connected, Some(connection)),
                Err(error) => (failure(error), None),
            };
        }
        Request::Acquire { .. } | Request::Status | Request::Stop => {
            return (
                Response::Error {
                    message: "not a named-sandbox request".into(),
                    code: exit::USAGE,
                },
                None,
            );
        }
    };
    match result {
        Ok(response) => (response, None),
        Err(error) => (failure(error), None),
    }
}

async fn connect(service: &Service, name: &str) -> Result<OwnedFd, ServiceError> {
    let transport = service.connect_named(name).await?;
    transport
        .into_fd()
        .map_err(|e| ServiceError::from(BackendError::Io(e)))
}

/// The answer for a failed operation: its message with every cause, and its exit code.
pub(super) fn failure(error: ServiceError) -> Response {
    let code = exit::code_for(&error);
    Response::Error {
        // As the CLI prints its own errors: with every cause.
        message: format!("{:#}", exit::with_hint(error)),
        code,
    }
}
