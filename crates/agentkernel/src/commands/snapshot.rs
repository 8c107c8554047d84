//! Snapshots: `snapshot create|list|inspect|remove`, `create --from-snapshot`, `fork`.

use ak_core::config::SandboxOptions;
use ak_service::SnapshotInfo;
use anyhow::anyhow;

use super::print_json;
use super::sandbox::named;
use super::say;
use crate::cli::{ForkArgs, SandboxArgs, SnapshotCommand, SnapshotCreateArgs};
use crate::exit;
use crate::front;

pub async fn snapshot(command: SnapshotCommand) -> i32 {
    match command {
        SnapshotCommand::Create(args) => create(args).await,
        SnapshotCommand::List(args) => {
            let infos = match front::snapshot_list().await {
                Ok(infos) => infos,
                Err(failure) => return failure.report(),
            };
            if args.json {
                return print_json(&infos);
            }
            let mut out = format!(
                "{:<28} {:<24} {:<8} {:>8} {:>12} {}\n",
                "NAME", "SANDBOX", "BACKEND", "FILES", "BYTES", "CREATED"
            );
            for info in &infos {
                out.push_str(&format!(
                    "{:<28} {:<24} {:<8} {:>8} {:>12} {}\n",
                    info.name,
                    info.sandbox,
                    info.backend.as_str(),
                    info.files,
                    info.bytes,
                    info.created_at
                ));
            }
            say(out.trim_end());
            0
        }
        SnapshotCommand::Inspect(args) => match front::snapshot_inspect(&args.name).await {
            Ok(info) if args.json => print_json(&info),
            Ok(info) => {
                say(&describe(&info));
                0
            }
            Err(failure) => failure.report(),
        },
        SnapshotCommand::Remove(args) => match front::snapshot_remove(&args.name).await {
            Ok(()) => {
                say(&args.name);
                0
            }
            Err(failure) => failure.report(),
        },
    }
}

async fn create(args: SnapshotCreateArgs) -> i32 {
    match front::snapshot_create(&args.sandbox, args.name.as_deref()).await {
        Ok(info) if args.json => print_json(&info),
        Ok(info) => {
            say(&info.name);
            0
        }
        Err(failure) => failure.report(),
    }
}

fn describe(info: &SnapshotInfo) -> String {
    format!(
        "name:         {}\nsandbox:      {}\nbackend:      {}\nimage:        {}\ncreated:      {}\ntaken while:  {} (frozen {} ms)\nfiles:        {} ({} bytes; {} bytes new to the store)\nleft out:     {} sockets or devices",
        info.name,
        info.sandbox,
        info.backend,
        info.image_tag,
        info.created_at,
        info.taken_while,
        info.frozen_ms,
        info.files,
        info.bytes,
        info.stored_bytes,
        info.skipped,
    )
}

/// `create NAME --from-snapshot SNAPSHOT`: the snapshot decides every setting, so a
/// sandbox option given beside it is an error rather than silently ignored (a backend
/// that names the snapshot's own is fine: `AGENTKERNEL_BACKEND` may be set).
pub async fn create_from(name: &str, snapshot: &str, sandbox: &SandboxArgs) -> i32 {
    let mut options = sandbox.options();
    let backend = options.backend.take();
    if options != SandboxOptions::default() {
        exit::fail(
            exit::USAGE,
            &anyhow!(
                "--from-snapshot takes every sandbox setting from the snapshot; drop the other sandbox options"
            ),
        );
    }
    if let Some(backend) = backend {
        match front::snapshot_inspect(snapshot).await {
            Ok(info) if info.backend.as_str() == backend => {}
            Ok(info) => exit::fail(
                exit::USAGE,
                &anyhow!(
                    "snapshot {snapshot} is of a {} sandbox, not {backend}",
                    info.backend
                ),
            ),
            Err(failure) => return failure.report(),
        }
    }
    named(front::create_from_snapshot(name, snapshot).await)
}

pub async fn fork(args: ForkArgs) -> i32 {
    match front::fork(&args.name, &args.new).await {
        Ok(records) => {
            for record in records {
                say(&record.name);
            }
            0
        }
        Err(failure) => failure.report(),
    }
}
