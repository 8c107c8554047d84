//! `agentkernel mcp`: the MCP server on stdin/stdout, over the in-process service.

use std::sync::Arc;

use ak_core::config::{SandboxOptions, load_options};
use ak_server::mcp::McpServer;
use anyhow::Context;

use crate::exit;
use crate::wiring;

pub async fn mcp() -> i32 {
    match run().await {
        Ok(()) => 0,
        Err(error) => {
            exit::report(&error);
            1
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cwd = std::env::current_dir().context("read the current directory")?;
    let base_options = match load_options(SandboxOptions::default(), &cwd) {
        Ok(options) => options,
        Err(error) => exit::fail(exit::USAGE, &error.into()),
    };
    let service = Arc::new(wiring::service().with_audit_source("mcp"));
    McpServer::new(service, base_options, cwd)
        .serve_stdio()
        .await?;
    Ok(())
}
