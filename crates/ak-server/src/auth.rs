//! Bearer-token auth for every request but `GET /health`, compared in constant time, and
//! the audit entry of every refused request (4xx), whatever refused it.

use std::net::SocketAddr;

use ak_service::Outcome;
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::{ApiError, Refusal};

/// Why a listener may not start.
#[derive(Debug, thiserror::Error)]
pub enum TokenCheck {
    #[error(
        "refusing to listen on {0} without a token: set AGENTKERNEL_API_KEY (or api_key in the config), or listen on 127.0.0.1"
    )]
    NonLoopbackWithoutToken(SocketAddr),
    #[error("the API token must not be empty")]
    EmptyToken,
}

/// A TCP listener on an address other hosts can reach needs a token.
pub fn check_listen_address(address: SocketAddr, token: Option<&str>) -> Result<(), TokenCheck> {
    match token {
        Some("") => Err(TokenCheck::EmptyToken),
        Some(_) => Ok(()),
        None if address.ip().is_loopback() => Ok(()),
        None => Err(TokenCheck::NonLoopbackWithoutToken(address)),
    }
}

/// Refuses requests without the right token, and records every refused request.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let open = method == Method::GET && path == "/health";
    let response = match &state.config.token {
        Some(expected) if !open => match presented(&request) {
            Some(given) if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) => {
                next.run(request).await
            }
            Some(_) => ApiError::Unauthorized("invalid API token".into()).into_response(),
            None => ApiError::Unauthorized(
                "missing API token (send Authorization: Bearer <token>)".into(),
            )
            .into_response(),
        },
        _ => next.run(request).await,
    };
    let status = response.status();
    if status.is_client_error() {
        let reason = response
            .extensions()
            .get::<Refusal>()
            .map_or_else(|| status.to_string(), |r| r.0.clone());
        state.service.record_audit(
            ak_service::Caller::Api,
            "request",
            sandbox_of(&path),
            Outcome::Refused,
            Some(format!("{method} {path}: {} {reason}", status.as_u16())),
        );
    }
    response
}

/// The token of an `Authorization: Bearer …` header.
fn presented(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The sandbox a path is about (`/sandboxes/NAME/…`), when its name is a valid one.
fn sandbox_of(path: &str) -> Option<&str> {
    let name = path.strip_prefix("/sandboxes/")?.split('/').next()?;
    (name != "by-uuid" && ak_core::spec::validate_name(name).is_ok()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_beyond_loopback_need_a_token() {
        let loopback: SocketAddr = "127.0.0.1:18888".parse().unwrap();
        let v6_loopback: SocketAddr = "[::1]:18888".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:18888".parse().unwrap();
        assert!(check_listen_address(loopback, None).is_ok());
        assert!(check_listen_address(v6_loopback, None).is_ok());
        assert!(matches!(
            check_listen_address(any, None),
            Err(TokenCheck::NonLoopbackWithoutToken(_))
        ));
        assert!(check_listen_address(any, Some("secret")).is_ok());
        assert!(matches!(
            check_listen_address(loopback, Some("")),
            Err(TokenCheck::EmptyToken)
        ));
    }

    #[test]
    fn sandbox_names_in_paths() {
        assert_eq!(sandbox_of("/sandboxes/box/exec"), Some("box"));
        assert_eq!(sandbox_of("/sandboxes/box"), Some("box"));
        assert_eq!(sandbox_of("/sandboxes/by-uuid/x"), None);
        assert_eq!(sandbox_of("/sandboxes/..%2f/x"), None);
        assert_eq!(sandbox_of("/run"), None);
    }
}
