//! `agentkernel serve` end to end on the native backend: driven over real HTTP (TCP and a
//! Unix socket), by the published Python SDK, and `agentkernel mcp` by an MCP client.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions panic on failure by design"
)]

mod compat;
mod http;
mod mcp;
mod network;
mod python;
mod schemathesis;
mod serve;
mod server;
mod soak;
