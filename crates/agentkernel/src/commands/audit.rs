//! `agentkernel audit [--sandbox NAME] [--json]`: the audit log of this state directory.

use ak_core::spec::validate_name;

use super::say;
use crate::cli::AuditArgs;
use crate::exit;
use crate::wiring;

pub fn audit(args: AuditArgs) -> i32 {
    if let Some(name) = &args.sandbox
        && let Err(error) = validate_name(name)
    {
        exit::fail(exit::USAGE, &error.into());
    }
    let entries = match wiring::service()
        .audit_log()
        .map_err(anyhow::Error::from)
        .and_then(|log| Ok(log.read(args.sandbox.as_deref())?))
    {
        Ok(entries) if args.network => entries
            .into_iter()
            .filter(|e| e.source == ak_service::audit::EGRESS_SOURCE)
            .collect(),
        Ok(entries) => entries,
        Err(error) => {
            exit::report(&error);
            return exit::SANDBOX_FAILURE;
        }
    };
    if args.json {
        return match serde_json::to_string_pretty(&entries) {
            Ok(json) => {
                say(&json);
                0
            }
            Err(error) => {
                exit::report(&error.into());
                exit::SANDBOX_FAILURE
            }
        };
    }
    let mut out = format!(
        "{:<20} {:<12} {:<20} {:<8} {:<4} DETAIL\n",
        "TIME", "ACTION", "SANDBOX", "OUTCOME", "FROM"
    );
    for entry in &entries {
        let outcome = serde_json::to_value(entry.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<20} {:<12} {:<20} {:<8} {:<4} {}\n",
            entry.time,
            entry.action,
            entry.sandbox.as_deref().unwrap_or("-"),
            outcome,
            entry.source,
            entry.detail.as_deref().unwrap_or("").escape_debug()
        ));
    }
    say(out.trim_end());
    0
}
