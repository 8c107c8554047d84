//! The JSON body extractor of the API: a body must be a JSON object sent as
//! `application/json`; malformed JSON, wrong types, unknown fields and anything but an
//! object are 400 with serde's message; a body over the limit is 413.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A request body parsed as `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(&request) {
            return Err(ApiError::BadRequest(
                "expected a JSON body with Content-Type: application/json".into(),
            ));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge("request body too large".into())
                } else {
                    ApiError::BadRequest(rejection.body_text())
                }
            })?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
        // serde would also read a struct from an array of its fields in order; the API
        // takes objects only, so that every field is named.
        if !value.is_object() {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        }
        T::deserialize(value)
            .map(JsonBody)
            .map_err(|e| ApiError::BadRequest(format!("invalid request: {e}")))
    }
}

fn is_json(request: &Request) -> bool {
    let Some(value) = request.headers().get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A request body that may be left out (empty, as the SDKs send some `POST`s); when given,
/// it is held to [`JsonBody`]'s rules.
#[derive(Debug)]
pub struct OptionalJsonBody<T>(pub Option<T>);

impl<S, T> FromRequest<S> for OptionalJsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge("request body too large".into())
                } else {
                    ApiError::BadRequest(rejection.body_text())
                }
            })?;
        if bytes.is_empty() {
            return Ok(OptionalJsonBody(None));
        }
        let request = Request::from_parts(parts, axum::body::Body::from(bytes));
        JsonBody::from_request(request, state)
            .await
            .map(|JsonBody(value)| OptionalJsonBody(Some(value)))
    }
}
