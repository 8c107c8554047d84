//! Sandboxes' networks over HTTP: the `network` field that `POST /run` and
//! `POST /sandboxes` (and the MCP tools) take, and the change of a sandbox's allowlist
//! (`PUT /sandboxes/{name}/network`). What the fields mean is decided once, by
//! `ak_core::config::resolve` and the service; this only translates.

use ak_core::NetworkMode;
use ak_core::config::NetworkSetting;
use ak_core::egress::AllowlistEntries;
use ak_core::spec::validate_name;
use ak_service::Caller;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::{Deserialize, Deserializer};

use crate::AppState;
use crate::body::JsonBody;
use crate::error::{ApiError, ok};
use crate::sandboxes::SandboxInfo;

/// A network as a request names it: `"none"`, `"allowlist"` or `"open"`, or a boolean
/// as in the config files and the MCP tools' first version (`true` the open network,
/// `false` none). A bad name is refused with the modes it could have been.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkField(pub NetworkSetting);

impl<'de> Deserialize<'de> for NetworkField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = NetworkField;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"none\", \"allowlist\", \"open\" or a boolean")
            }

            fn visit_bool<E: serde::de::Error>(self, enabled: bool) -> Result<NetworkField, E> {
                Ok(NetworkField(NetworkSetting::Enabled(enabled)))
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<NetworkField, E> {
                name.parse::<NetworkMode>()
                    .map(|mode| NetworkField(NetworkSetting::Mode(mode)))
                    .map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl schemars::JsonSchema for NetworkField {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NetworkField".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "The sandbox's network: none, allowlist (only allow_hosts, allow_cidrs and allow_ports), or open; true means open and false none",
            "oneOf": [
                {"type": "string", "enum": ["none", "allowlist", "open"]},
                {"type": "boolean"},
            ],
        })
    }
}

/// The JSON schema of [`NetworkField`], for the OpenAPI document.
pub(crate) fn network_schema() -> serde_json::Value {
    use schemars::JsonSchema;
    NetworkField::json_schema(&mut schemars::SchemaGenerator::default()).to_value()
}

/// `PUT /sandboxes/{name}/network`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkRequest {
    /// Host names, `*.domain` patterns or presets (`pypi`, `npm`, `crates`, `github`,
    /// `debian`).
    #[serde(default)]
    pub allow_hosts: Option<Vec<String>>,
    /// CIDRs or single addresses.
    #[serde(default)]
    pub allow_cidrs: Option<Vec<String>>,
    /// Destination ports (none: any port).
    #[serde(default)]
    pub allow_ports: Option<Vec<u16>>,
    /// Add these entries to the sandbox's allowlist instead of replacing it.
    #[serde(default)]
    pub extend: Option<bool>,
}

impl NetworkRequest {
    /// The entries, and whether they extend the current list.
    pub(crate) fn entries(&self) -> (AllowlistEntries, bool) {
        (
            ak_core::config::entries(&self.allow_hosts, &self.allow_cidrs, &self.allow_ports),
            self.extend.unwrap_or(false),
        )
    }
}

/// Replaces (or, with `extend`, adds to) an allowlist sandbox's allowlist. A running
/// sandbox's next connection is judged by the new list; a stopped one starts with it.
#[utoipa::path(put, path = "/sandboxes/{name}/network", tag = "sandboxes",
    params(("name" = String, Path, description = "The sandbox's name")),
    request_body = NetworkRequest,
    responses((status = 200, description = "The sandbox with its new allowlist", body = SandboxInfo)))]
pub async fn set(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<NetworkRequest>,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    let (entries, extend) = request.entries();
    let record = state
        .service
        .set_allowlist(Caller::Api, &name, &entries, extend)
        .await?;
    let denied = state.service.egress_denied(&record)?;
    Ok(ok(SandboxInfo::from(&record).with_denied(denied)))
}
