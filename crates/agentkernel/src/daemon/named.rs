//! The daemon's side of the CLI's named-sandbox commands: the same service action the CLI
//! performs when no daemon runs, with a failure sent back with the exit code it stands for.

use std::os::fd::OwnedFd;

use ak_core::BackendError;
use ak_service::{Caller, Service, ServiceError};

use super::{Request, Response};
use crate::exit;

/// Does `request` with `service`: the answer, and the agent connection for `Connect`.
pub(super) async fn answer(service: &Service, request: Request) -> (Response, Option<OwnedFd>) {
    let result = match request {
        Request::Perform(action) => service
            .perform(Caller::Local, action)
            .await
            .map(Response::Performed),
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
