//! The envelope every JSON answer is wrapped in (`{"success", "data"}` or
//! `{"success": false, "error"}`), and the one error type of the API: each failure gets its
//! HTTP status; real faults are logged in full and reach the client as a plain message.

use ak_service::{ErrorClass, ServiceError};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A successful answer: `{"success": true, "data": …}` with status 200.
pub fn ok<T: Serialize>(data: T) -> Response {
    with_status(StatusCode::OK, data)
}

/// A successful answer with another status (201 for a created sandbox).
pub fn with_status<T: Serialize>(status: StatusCode, data: T) -> Response {
    (
        status,
        Json(serde_json::json!({"success": true, "data": data})),
    )
        .into_response()
}

/// Every error answer: `{"success": false, "error": "…"}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub success: bool,
    pub error: String,
}

/// Why a request failed, as the client sees it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed or invalid input (400).
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The sandbox agent refused a file operation for lack of permission (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such sandbox, file, command or route (404).
    #[error("{0}")]
    NotFound(String),
    /// Duplicate name, or a state that does not allow the operation (409).
    #[error("{0}")]
    Conflict(String),
    /// A body or file over the limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// Not possible here or now: a backend not built or usable, capacity exhausted (503).
    #[error("{0}")]
    Unavailable(String),
    /// A fault of agentkernel or the host (500); the message is logged, never sent.
    #[error("{0}")]
    Internal(String),
}

/// What the client reads in place of a fault's details.
const INTERNAL_MESSAGE: &str = "internal error; the server's log has the details";

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(details) => {
                tracing::error!("request failed: {details}");
                INTERNAL_MESSAGE.to_string()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            success: false,
            error: message.clone(),
        };
        let mut response = (status, Json(body)).into_response();
        // The auth layer writes refused requests to the audit log with this message.
        response.extensions_mut().insert(Refusal(message));
        response
    }
}

/// The message of an error answer, for the audit log.
#[derive(Debug, Clone)]
pub struct Refusal(pub String);

/// The one mapping of a service error's class to an HTTP answer.
impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        let message = error.to_string();
        match error.class() {
            ErrorClass::Invalid => ApiError::BadRequest(message),
            ErrorClass::Forbidden => ApiError::Forbidden(message),
            ErrorClass::NotFound => ApiError::NotFound(message),
            ErrorClass::Conflict => ApiError::Conflict(message),
            ErrorClass::TooLarge => ApiError::TooLarge(message),
            ErrorClass::Unavailable => ApiError::Unavailable(message),
            ErrorClass::Fault => ApiError::Internal(message),
        }
    }
}

impl From<ak_core::ConfigError> for ApiError {
    fn from(error: ak_core::ConfigError) -> Self {
        ApiError::BadRequest(error.to_string())
    }
}

/// Endpoint families the published SDKs call that this server does not have, each with
/// what it is, so a client learns that rather than a bare "no such endpoint".
pub const UNIMPLEMENTED_FAMILIES: &[(&str, &str)] = &[
    ("orchestrations", "orchestrations"),
    ("objects", "durable objects"),
    ("schedules", "schedules"),
    ("stores", "durable stores"),
];

/// Answer for every request to an endpoint family of [`UNIMPLEMENTED_FAMILIES`].
pub fn not_implemented(what: &str) -> ApiError {
    ApiError::NotFound(format!(
        "{what} are not implemented in this server (this endpoint family does not exist here)"
    ))
}

/// A request body read to its end (within the body limit) before a refusal is sent: a
/// body left unread ends the connection under a keep-alive client's next request. One
/// that cannot be read (over the limit) changes nothing about the refusal.
pub type Drained = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

/// Answer for a path no route matches (its body drained first).
pub async fn not_found(_body: Drained) -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

/// Answer for a known path with a method it does not take.
pub async fn method_not_allowed(_body: Drained) -> Response {
    let mut response = (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(
            serde_json::json!({"success": false, "error": "method not allowed for this endpoint"}),
        ),
    )
        .into_response();
    response
        .extensions_mut()
        .insert(Refusal("method not allowed".into()));
    response
}
