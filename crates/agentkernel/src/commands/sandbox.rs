//! Lifecycle commands of named sandboxes: create, start, stop, pause, resume, remove, list,
//! inspect.

use ak_service::SandboxRecord;

use super::{print_json, say};
use crate::cli::{CreateArgs, InspectArgs, ListArgs, NameArgs, PauseArgs, RemoveArgs};
use crate::front::{self, Failure};

pub async fn create(args: CreateArgs) -> i32 {
    if let Some(snapshot) = &args.from_snapshot {
        return super::snapshot::create_from(&args.name, snapshot, &args.sandbox).await;
    }
    let mut spec = super::resolve_spec(&args.sandbox);
    // Pulled here, as `--pull` says; the service would pull a missing one itself.
    if let Err(error) = crate::wiring::service()
        .prepare_image(&mut spec, None, args.pull)
        .await
    {
        return super::stream::fail_start(error);
    }
    named(front::create(&args.name, spec, args.dir.as_deref()).await)
}

pub async fn start(args: NameArgs) -> i32 {
    named(front::start(&args.name).await)
}

pub async fn stop(args: NameArgs) -> i32 {
    named(front::stop(&args.name).await)
}

pub async fn pause(args: PauseArgs) -> i32 {
    named(front::pause(&args.name, args.save).await)
}

pub async fn resume(args: NameArgs) -> i32 {
    named(front::resume(&args.name).await)
}

pub async fn remove(args: RemoveArgs) -> i32 {
    match front::remove(&args.name, args.force).await {
        Ok(()) => {
            say(&args.name);
            0
        }
        Err(failure) => failure.report(),
    }
}

/// Prints the name of the sandbox an operation left, or the failure.
pub(super) fn named(result: Result<SandboxRecord, Failure>) -> i32 {
    match result {
        Ok(record) => {
            say(&record.name);
            0
        }
        Err(failure) => failure.report(),
    }
}

pub async fn list(args: ListArgs) -> i32 {
    let records = match front::list().await {
        Ok(records) => records,
        Err(failure) => return failure.report(),
    };
    if args.json {
        return print_json(&records.iter().map(summary).collect::<Vec<_>>());
    }
    let mut out = format!(
        "{:<24} {:<9} {:<8} {:<12} {}\n",
        "NAME", "STATE", "BACKEND", "IMAGE", "ID"
    );
    for record in &records {
        out.push_str(&format!(
            "{:<24} {:<9} {:<8} {:<12} {}\n",
            record.name,
            record.state.as_str(),
            record.backend.as_str(),
            record.spec.image.to_string(),
            record.uuid
        ));
    }
    say(out.trim_end());
    0
}

pub async fn inspect(args: InspectArgs) -> i32 {
    let record = match front::inspect(&args.name).await {
        Ok(record) => record,
        Err(failure) => return failure.report(),
    };
    if args.json {
        return print_json(&record);
    }
    let spec = &record.spec;
    let mut out = format!(
        "name:     {}\nid:       {}\nstate:    {}\nbackend:  {}\nimage:    {}\nprofile:  {}\nnetwork:  {}\nmemory:   {} bytes\npids:     {}\ncpus:     {}\nworkdir:  {}\n",
        record.name,
        record.uuid,
        record.state,
        record.backend,
        spec.image,
        spec.policy.profile,
        spec.policy.network.as_str(),
        spec.resources.memory_bytes,
        spec.resources.pids,
        spec.resources
            .cpus
            .map_or("unlimited".to_string(), |c| c.to_string()),
        spec.workdir.display(),
    );
    out.push_str(&super::network::describe_allowlist(&record));
    for mount in &spec.mounts {
        out.push_str(&format!(
            "mount:    {} -> {} ({})\n",
            mount.host.display(),
            mount.target.display(),
            if mount.writable { "rw" } else { "ro" }
        ));
    }
    for volume in &spec.volumes {
        out.push_str(&format!(
            "volume:   {} -> {} ({})\n",
            volume.name,
            volume.target.display(),
            volume.access.as_str()
        ));
    }
    if let Some(source) = &spec.source {
        out.push_str(&format!("source:   {source}\n"));
    }
    if let Some(error) = &record.error {
        out.push_str(&format!("error:    {error}\n"));
    }
    say(out.trim_end());
    0
}

/// The fields `list --json` shows of each sandbox.
fn summary(record: &SandboxRecord) -> serde_json::Value {
    serde_json::json!({
        "name": record.name,
        "uuid": record.uuid,
        "status": record.state,
        "backend": record.backend,
        "image": record.spec.image.to_string(),
        "vcpus": record.spec.resources.cpus,
        "memory_mb": record.spec.resources.memory_bytes >> 20,
        "created_at": record.created_at,
    })
}
