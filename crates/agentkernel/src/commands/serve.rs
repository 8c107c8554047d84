//! `agentkernel serve`: the HTTP API over the in-process service, with warm pools for
//! `fast` runs, on TCP (loopback by default) or a Unix socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ak_core::config::SandboxOptions;
use ak_server::{ApiConfig, AppState, Bound, Listen};
use anyhow::anyhow;
use tokio::signal::unix::{SignalKind, signal};

use super::say;
use crate::cli::ServeArgs;
use crate::exit;
use crate::wiring;

/// How often used pool sandboxes are released and pools topped up.
pub(crate) const MAINTAIN_EVERY: Duration = Duration::from_millis(50);
/// How often sandboxes whose time to live ran out are removed.
pub(crate) const REAP_EVERY: Duration = Duration::from_secs(5);
/// How long a stopping server waits for pool sandboxes still in use.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

pub async fn serve(args: ServeArgs) -> i32 {
    match run(args).await {
        Ok(()) => 0,
        Err(error) => {
            exit::report(&error);
            1
        }
    }
}

async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Bad settings are usage errors (exit code 2), reported before anything listens.
    let settings = (|| {
        let token = wiring::settings().api_token()?;
        let cwd = std::env::current_dir().map_err(ak_core::ConfigError::CurrentDir)?;
        let base_options = wiring::settings().sandbox_options(SandboxOptions::default());
        let service = super::daemon::pool_config().and_then(wiring::serving_service)?;
        Ok::<_, ak_core::ConfigError>((token, cwd, base_options, service))
    })();
    let (token, cwd, base_options, service) = match settings {
        Ok(settings) => settings,
        Err(error) => exit::fail(exit::USAGE, &error.into()),
    };
    let listen = match &args.socket {
        Some(path) => Listen::Unix(path.clone()),
        None => match args.host.parse() {
            Ok(ip) if args.insecure_no_auth => Listen::TcpNoAuth(SocketAddr::new(ip, args.port)),
            Ok(ip) => Listen::Tcp(SocketAddr::new(ip, args.port)),
            Err(_) => exit::fail(
                exit::USAGE,
                &anyhow!("--host '{}' is not an IP address", args.host),
            ),
        },
    };
    let token = match (&listen, token) {
        (Listen::TcpNoAuth(_), Some(_)) => exit::fail(
            exit::USAGE,
            &anyhow!(
                "--insecure-no-auth serves without a token, but one is configured (AGENTKERNEL_API_KEY or api_key in the config): drop one of them"
            ),
        ),
        (Listen::Tcp(_), None) => Some(generated_token()?),
        (_, token) => token,
    };

    let bound = Bound::bind(&listen, token.as_deref()).await?;
    let service = Arc::new(service);
    let stop_maintenance = Arc::new(tokio::sync::Notify::new());
    let maintainer = tokio::spawn(service.clone().maintain_until(
        MAINTAIN_EVERY,
        REAP_EVERY,
        stop_maintenance.clone(),
    ));
    let state = AppState::new(
        service.clone(),
        ApiConfig {
            token,
            base_options,
            cwd,
            ..ApiConfig::default()
        },
    );
    say(&format!("agentkernel API listening on {}", bound.address()));
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let stop = async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
    };
    let served = bound.serve(state, stop).await;
    // `notify_one` keeps the wake-up for a pass in progress: the loop ends right after it.
    stop_maintenance.notify_one();
    let _ = maintainer.await;
    service.shutdown(STOP_GRACE).await;
    tracing::info!("API server stopped");
    Ok(served?)
}

/// The token of a TCP listener that has none configured: made once into the state
/// directory and reused, so that clients keep working across restarts. Only where it is
/// goes to the terminal (and so into logs), never the token itself.
fn generated_token() -> anyhow::Result<String> {
    let stored = ak_server::load_or_create_token(&wiring::state_dir().join(ak_server::TOKEN_FILE))?;
    let made = if stored.created {
        "generated an API token"
    } else {
        "using the API token"
    };
    #[allow(
        clippy::print_stderr,
        reason = "a notice for the operator, not a result"
    )]
    {
        eprintln!(
            "agentkernel: {made} in {} (no AGENTKERNEL_API_KEY or api_key set); clients send it as 'Authorization: Bearer <token>'",
            stored.path.display()
        );
    }
    Ok(stored.token)
}
