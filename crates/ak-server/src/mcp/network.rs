//! The MCP tools of sandboxes' networks: a named sandbox's allowlist shown (with how many
//! connections it refused) and changed while it runs, as `PUT /sandboxes/{name}/network`.

use ak_service::Caller;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{McpServer, message};
use crate::network::NetworkRequest;
use crate::sandboxes::SandboxInfo;

/// `sandbox_network_set`'s input: the sandbox, and the fields of the HTTP API's
/// `PUT /sandboxes/{name}/network` body (serde cannot flatten under
/// `deny_unknown_fields`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkParams {
    pub name: String,
    /// Host names, `*.domain` patterns or presets (`pypi`, `npm`, `crates`, `github`,
    /// `debian`).
    pub allow_hosts: Option<Vec<String>>,
    /// CIDRs or single addresses.
    pub allow_cidrs: Option<Vec<String>>,
    /// Destination ports (none: any port).
    pub allow_ports: Option<Vec<u16>>,
    /// Add these entries to the sandbox's allowlist instead of replacing it.
    pub extend: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShowParams {
    pub name: String,
}

#[tool_router(router = network_router, vis = "pub(super)")]
impl McpServer {
    #[tool(
        title = "Show a named sandbox's network",
        description = "Show a named sandbox with its network: its mode, its allowlist (allowlist sandboxes) and egress_denied, how many connections and lookups the allowlist refused.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn sandbox_network_show(
        &self,
        Parameters(params): Parameters<ShowParams>,
    ) -> Result<Json<SandboxInfo>, String> {
        let record = self
            .service
            .inspect_named(&params.name)
            .await
            .map_err(message)?;
        let denied = self.service.egress_denied(&record).map_err(message)?;
        Ok(Json(SandboxInfo::from(&record).with_denied(denied)))
    }

    #[tool(
        title = "Change a named sandbox's allowlist",
        description = "Replace the allowlist of a named allowlist sandbox with allow_hosts, allow_cidrs and allow_ports (extend: true adds them to it instead). A running sandbox's next connection is judged by the new list; a stopped one starts with it.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn sandbox_network_set(
        &self,
        Parameters(params): Parameters<NetworkParams>,
    ) -> Result<Json<SandboxInfo>, String> {
        let (entries, extend) = NetworkRequest {
            allow_hosts: params.allow_hosts,
            allow_cidrs: params.allow_cidrs,
            allow_ports: params.allow_ports,
            extend: params.extend,
        }
        .entries();
        let record = self
            .service
            .set_allowlist(Caller::Mcp, &params.name, &entries, extend)
            .await
            .map_err(message)?;
        let denied = self.service.egress_denied(&record).map_err(message)?;
        Ok(Json(SandboxInfo::from(&record).with_denied(denied)))
    }
}
