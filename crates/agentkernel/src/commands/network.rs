//! `network show|set`: a named sandbox's network, and the change of its allowlist.

use ak_core::egress::AllowlistEntries;
use ak_service::SandboxRecord;

use super::{print_json, say};
use crate::cli::NetworkCommand;
use crate::front;

pub async fn network(command: NetworkCommand) -> i32 {
    let (record, json) = match command {
        NetworkCommand::Show(args) => (front::inspect(&args.name).await, args.json),
        NetworkCommand::Set(args) => {
            let entries = AllowlistEntries {
                hosts: args.allow_host,
                cidrs: args.allow_cidr,
                ports: args.allow_port,
            };
            let record = front::set_allowlist(&args.name, entries, args.add).await;
            (record, args.json)
        }
    };
    let record = match record {
        Ok(record) => record,
        Err(failure) => return failure.report(),
    };
    if json {
        let denied = match denied_count(&record) {
            Ok(denied) => denied,
            Err(error) => {
                crate::exit::report(&error);
                return crate::exit::SANDBOX_FAILURE;
            }
        };
        return print_json(&serde_json::json!({
            "name": record.name,
            "network": record.spec.policy.network.as_str(),
            "allowlist": record.spec.policy.allowlist,
            "egress_denied": denied,
        }));
    }
    let out = format!(
        "name:     {}\nnetwork:  {}\n{}",
        record.name,
        record.spec.policy.network.as_str(),
        describe_allowlist(&record)
    );
    say(out.trim_end());
    0
}

/// The service's count of refused connections, from the audit log.
fn denied_count(record: &SandboxRecord) -> anyhow::Result<Option<usize>> {
    Ok(crate::wiring::service().egress_denied(record)?)
}

/// An allowlist sandbox's entries and refusals, one `allow:` line per entry then
/// `denied:`; nothing for the other networks. `inspect` shows the same lines.
pub fn describe_allowlist(record: &SandboxRecord) -> String {
    let mut out = String::new();
    if record.spec.policy.network != ak_core::NetworkMode::Allowlist {
        return out;
    }
    let list = &record.spec.policy.allowlist;
    for host in &list.hosts {
        out.push_str(&format!("allow:    host {host}\n"));
    }
    for cidr in &list.cidrs {
        out.push_str(&format!("allow:    cidr {cidr}\n"));
    }
    for port in &list.ports {
        out.push_str(&format!("allow:    port {port}\n"));
    }
    match denied_count(record) {
        Ok(Some(count)) => out.push_str(&format!("denied:   {count}\n")),
        Ok(None) => {}
        Err(error) => out.push_str(&format!("denied:   unknown ({error:#})\n")),
    }
    out
}
