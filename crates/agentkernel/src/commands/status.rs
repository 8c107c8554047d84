//! `agentkernel status`: which backends work here and why the others do not, plus the
//! kernel features found.

use crate::wiring::HostFeatures;
use ak_core::BackendProbe;
use serde::Serialize;

use crate::cli::StatusArgs;
use crate::wiring;

#[derive(Debug, Serialize)]
struct StatusReport {
    backends: Vec<BackendProbe>,
    host: HostFeatures,
    /// The image store's totals, or why it cannot be read.
    image_store: Result<ak_image::StoreSize, String>,
}

pub fn status(args: StatusArgs) -> i32 {
    let service = wiring::service();
    let report = StatusReport {
        backends: service.status(),
        host: crate::wiring::host_features(),
        image_store: service.image_store_size().map_err(|e| e.to_string()),
    };
    let text = if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => json,
            Err(e) => {
                crate::exit::report(&e.into());
                return crate::exit::SANDBOX_FAILURE;
            }
        }
    } else {
        render(&report)
    };
    super::say(&text);
    0
}

fn render(report: &StatusReport) -> String {
    let mut out = String::from("Backends:\n");
    for probe in &report.backends {
        let mark = if probe.usable { "usable" } else { "not usable" };
        out.push_str(&format!(
            "  {:<8} {:<11} {}\n",
            probe.backend.as_str(),
            mark,
            probe.reason
        ));
        for (name, value) in &probe.details {
            out.push_str(&format!("  {:<8}   {name}: {value}\n", ""));
        }
    }
    let host = &report.host;
    out.push_str("\nHost:\n");
    out.push_str(&format!("  kernel          {}\n", host.kernel));
    out.push_str(&format!("  running as root {}\n", host.running_as_root));
    let user_ns = match &host.user_namespaces {
        Ok(()) => "yes".to_string(),
        Err(reason) => format!("no: {reason}"),
    };
    out.push_str(&format!("  user namespaces {user_ns}\n"));
    let namespaces: Vec<&str> = host
        .namespaces
        .iter()
        .filter(|(_, present)| *present)
        .map(|(name, _)| name.as_str())
        .collect();
    out.push_str(&format!("  namespaces      {}\n", namespaces.join(" ")));
    out.push_str(&format!("  seccomp         {}\n", host.seccomp));
    let landlock = host
        .landlock_abi
        .map_or("absent".to_string(), |abi| format!("ABI {abi}"));
    out.push_str(&format!("  landlock        {landlock}\n"));
    out.push_str(&format!("  mount_setattr   {}\n", host.mount_setattr));
    out.push_str(&format!("  cgroups         {}\n", host.cgroups));
    if let Err(reason) = &host.cgroups_usable {
        out.push_str(&format!("                  not usable: {reason}\n"));
    }
    out.push_str(&format!("  cgroup entry    {}\n", host.cgroup_entry));
    out.push_str(&format!("  runtime dir     {}\n", host.runtime_dir));
    out.push_str(&format!("  kvm             {}\n", host.kvm.describe()));
    let images = match &report.image_store {
        Ok(size) if size.fetched_layers > 0 => format!(
            "{} image(s), {} layer(s), {}; {} layer(s) fetched, not unpacked yet, {}",
            size.images,
            size.layers,
            indicatif::HumanBytes(size.bytes),
            size.fetched_layers,
            indicatif::HumanBytes(size.fetched_bytes)
        ),
        Ok(size) => format!(
            "{} image(s), {} layer(s), {}",
            size.images,
            size.layers,
            indicatif::HumanBytes(size.bytes)
        ),
        Err(reason) => format!("unreadable: {reason}"),
    };
    out.push_str(&format!("  image store     {images}\n"));
    out
}
