//! The egress helper: enforces one sandbox's allowlist from outside it (see the `ak-egress`
//! crate). Started by the native backend with the sandbox's namespace, policy file and
//! descriptors; writes its verdicts to the audit log of the state directory it is given.

use std::process::ExitCode;
use std::sync::Arc;

use ak_egress::{AuditSink, Event, HelperArgs, Verdict};
use ak_service::audit::{AuditEntry, AuditLog, Outcome};

/// Writes each verdict as one audit entry (`source` `egress`, action `connect` or `dns`).
struct AuditLogSink {
    log: Option<AuditLog>,
    sandbox: String,
}

impl AuditSink for AuditLogSink {
    fn record(&self, event: &Event) {
        let outcome = match event.verdict {
            Verdict::Allowed => Outcome::Ok,
            Verdict::Denied => Outcome::Refused,
        };
        let action = if event.protocol == "dns" {
            "dns"
        } else {
            "connect"
        };
        let entry = AuditEntry::new(
            ak_service::audit::EGRESS_SOURCE,
            action,
            Some(&self.sandbox),
            outcome,
            Some(event.to_string()),
        );
        match &self.log {
            Some(log) => {
                if let Err(error) = log.append(&entry) {
                    tracing::warn!("cannot write the audit log: {error}");
                }
            }
            None => tracing::info!("{}: {}", self.sandbox, event),
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AGENTKERNEL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = match HelperArgs::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(error) => {
            tracing::error!("{error}");
            return ExitCode::from(2);
        }
    };
    let sink = Arc::new(AuditLogSink {
        log: args.audit_dir.as_deref().map(AuditLog::in_dir),
        sandbox: args.sandbox.clone(),
    });
    match ak_egress::helper::run(args, sink) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The native backend reads this from the helper's stderr or log.
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}
