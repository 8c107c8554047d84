//! `agentkernel mcp`: the MCP server on stdin/stdout, over the in-process service.

use std::sync::Arc;

use ak_core::config::SandboxOptions;
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
    let base_options = wiring::settings().sandbox_options(SandboxOptions::default());
    let service = match super::daemon::pool_config().and_then(wiring::serving_service) {
        Ok(service) => Arc::new(service),
        Err(error) => exit::fail(exit::USAGE, &error.into()),
    };
    // Used pool sandboxes are released and pools topped up while the session lasts.
    let stop = Arc::new(tokio::sync::Notify::new());
    let maintainer = tokio::spawn(service.clone().maintain_until(
        super::serve::MAINTAIN_EVERY,
        super::serve::REAP_EVERY,
        stop.clone(),
    ));
    let served = McpServer::new(service.clone(), base_options, cwd)
        .serve_stdio()
        .await;
    stop.notify_one();
    let _ = maintainer.await;
    service.shutdown(super::serve::STOP_GRACE).await;
    Ok(served?)
}
