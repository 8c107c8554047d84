//! `agentkernel volume create|list|inspect|remove`: named volumes, kept by the service
//! (the daemon's when one runs).

use ak_service::{Action, VolumeInfo};

use super::{print_json, say};
use crate::cli::VolumeCommand;
use crate::front;

pub async fn volume(command: VolumeCommand) -> i32 {
    let (action, json) = match &command {
        VolumeCommand::Create(args) => (
            Action::VolumeCreate {
                name: args.name.clone(),
                size_limit: args.size,
            },
            args.json,
        ),
        VolumeCommand::List(args) => (Action::VolumeList, args.json),
        VolumeCommand::Inspect(args) => (
            Action::VolumeInspect {
                name: args.name.clone(),
            },
            args.json,
        ),
        VolumeCommand::Remove(args) => (
            Action::VolumeRemove {
                name: args.name.clone(),
            },
            args.json,
        ),
    };
    let answer = match front::perform(action).await {
        Ok(answer) => answer,
        Err(failure) => return failure.report(),
    };
    let shown = match command {
        VolumeCommand::List(_) => answer.into_volumes().map(|volumes| {
            if json {
                return print_json(&volumes);
            }
            let mut out = format!("{:<24} {:>12} {}\n", "NAME", "SIZE", "USED BY");
            for volume in &volumes {
                out.push_str(&format!(
                    "{:<24} {:>12} {}\n",
                    volume.name,
                    volume.size_bytes,
                    users(volume)
                ));
            }
            say(out.trim_end());
            0
        }),
        VolumeCommand::Remove(args) => answer.into_removed().map(|()| {
            if json {
                print_json(&serde_json::json!({ "removed": args.name }))
            } else {
                say(&args.name);
                0
            }
        }),
        VolumeCommand::Create(_) | VolumeCommand::Inspect(_) => answer.into_volume().map(|volume| {
            if json {
                return print_json(&volume);
            }
            let mut out = format!(
                "name:       {}\nsize:       {} bytes\ncreated:    {}\ncreated by: {}\nused by:    {}\n",
                volume.name,
                volume.size_bytes,
                ak_service::audit::rfc3339_unix(volume.created_at),
                volume.created_by,
                users(&volume)
            );
            if let Some(limit) = volume.size_limit_bytes {
                out.push_str(&format!("limit:      {limit} bytes\n"));
            }
            if let Some(path) = &volume.path {
                out.push_str(&format!("path:       {}\n", path.display()));
            }
            say(out.trim_end());
            0
        }),
    };
    match shown {
        Ok(code) => code,
        Err(error) => front::Failure::from(error).report(),
    }
}

/// The named sandboxes that mount a volume, as `name (state, access)`.
fn users(volume: &VolumeInfo) -> String {
    if volume.used_by.is_empty() {
        return "-".into();
    }
    volume
        .used_by
        .iter()
        .map(|u| format!("{} ({}, {})", u.sandbox, u.state, u.access.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}
