//! `agentkernel cp SRC DST`: files and directories between the host and a running sandbox
//! (one side is `NAME:/path`). Files land atomically on both sides (the agent writes a
//! temporary file and renames it; the host side does the same); a directory copied to the
//! host appears whole, under a temporary name first.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ak_core::spec::validate_name;
use ak_protocol::{AgentClient, FileType, ProtocolError};
use anyhow::{Context, anyhow, bail};

use crate::cli::CpArgs;
use crate::exit;
use crate::front;
use crate::wiring;

/// Largest single file `cp` moves (the agent refuses larger reads).
const MAX_FILE: u64 = 4 << 30;

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
enum Location {
    Host(PathBuf),
    Sandbox { name: String, path: String },
}

fn parse(arg: &str) -> Result<Location, anyhow::Error> {
    if let Some((name, path)) = arg.split_once(':')
        && !name.is_empty()
        && !name.contains('/')
    {
        validate_name(name)?;
        if path.is_empty() {
            bail!("'{arg}': give a path inside the sandbox after ':'");
        }
        if path.split('/').any(|c| c == "..") {
            bail!("'{arg}': paths inside a sandbox must not contain '..'");
        }
        return Ok(Location::Sandbox {
            name: name.to_string(),
            path: path.to_string(),
        });
    }
    Ok(Location::Host(PathBuf::from(arg)))
}

pub async fn cp(args: CpArgs) -> i32 {
    let (src, dst) = match (parse(&args.src), parse(&args.dst)) {
        (Ok(src), Ok(dst)) => (src, dst),
        (Err(e), _) | (_, Err(e)) => exit::fail(exit::USAGE, &e),
    };
    let service = wiring::service();
    let result = match (src, dst) {
        (Location::Host(host), Location::Sandbox { name, path }) => {
            match front::client(&service, &name).await {
                Ok(client) => upload(&client, &host, &path).await,
                Err(failure) => return failure.report(),
            }
        }
        (Location::Sandbox { name, path }, Location::Host(host)) => {
            match front::client(&service, &name).await {
                Ok(client) => download(&client, &path, &host).await,
                Err(failure) => return failure.report(),
            }
        }
        _ => exit::fail(
            exit::USAGE,
            &anyhow!("exactly one of SRC and DST must be NAME:/path"),
        ),
    };
    match result {
        Ok(()) => 0,
        Err(error) => {
            exit::report(&error);
            1
        }
    }
}

/// Host file or directory -> sandbox path. Both appear whole: a file is written atomically
/// by the agent, a directory is built under a hidden name beside the target and renamed
/// into place in one step (the target must not exist yet).
async fn upload(client: &AgentClient, host: &Path, target: &str) -> anyhow::Result<()> {
    let meta =
        std::fs::metadata(host).with_context(|| format!("cannot read {}", host.display()))?;
    if !meta.is_dir() {
        return upload_tree(client, host, target).await;
    }
    let target = target.trim_end_matches('/');
    let (parent, name) = match target.rsplit_once('/') {
        Some((parent, name)) => (format!("{parent}/"), name),
        None => (String::new(), target),
    };
    if name.is_empty() {
        return Err(anyhow!("cannot copy a directory onto the sandbox's root"));
    }
    let staging = format!("{parent}.{name}.ak-cp-{}", std::process::id());
    let copied = match upload_tree(client, host, &staging).await {
        Ok(()) => client.rename(&staging, target).await.map_err(agent),
        Err(error) => Err(error),
    };
    if copied.is_err() {
        let _ = client.remove(&staging, true).await;
    }
    copied
}

/// Copies `host` (file or tree) to `target`, entry by entry.
async fn upload_tree(client: &AgentClient, host: &Path, target: &str) -> anyhow::Result<()> {
    let meta =
        std::fs::metadata(host).with_context(|| format!("cannot read {}", host.display()))?;
    if meta.is_dir() {
        client
            .mkdir(target, true, meta.permissions().mode() & 0o7777)
            .await
            .map_err(agent)?;
        let mut entries: Vec<_> = std::fs::read_dir(host)
            .with_context(|| format!("cannot list {}", host.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            Box::pin(upload_tree(
                client,
                &entry.path(),
                &format!("{}/{name}", target.trim_end_matches('/')),
            ))
            .await?;
        }
        return Ok(());
    }
    let data = std::fs::read(host).with_context(|| format!("cannot read {}", host.display()))?;
    client
        .write_file(target, &data, meta.permissions().mode() & 0o7777)
        .await
        .map_err(agent)
}

/// Sandbox file or directory -> host path (a directory appears whole).
async fn download(client: &AgentClient, source: &str, host: &Path) -> anyhow::Result<()> {
    let stat = client.stat(source).await.map_err(agent)?;
    let parent = host
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = host
        .file_name()
        .ok_or_else(|| anyhow!("{} names no file", host.display()))?;
    let staging = parent.join(format!(
        ".{}.ak-cp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = fetch(client, source, stat.file_type, stat.mode, &staging).await;
    if let Err(error) = result {
        let _ = std::fs::remove_dir_all(&staging).or_else(|_| std::fs::remove_file(&staging));
        return Err(error);
    }
    std::fs::rename(&staging, host)
        .with_context(|| format!("cannot move into place: {}", host.display()))
}

async fn fetch(
    client: &AgentClient,
    source: &str,
    file_type: FileType,
    mode: u32,
    host: &Path,
) -> anyhow::Result<()> {
    match file_type {
        FileType::Dir => {
            std::fs::create_dir(host)
                .with_context(|| format!("cannot create {}", host.display()))?;
            for entry in client.list_dir(source).await.map_err(agent)? {
                // The agent is inside the sandbox: a name it sends must not walk the host.
                if entry.name.is_empty()
                    || entry.name == "."
                    || entry.name == ".."
                    || entry.name.contains('/')
                {
                    return Err(anyhow!(
                        "the sandbox listed an invalid file name {:?} in {source}",
                        entry.name
                    ));
                }
                let child = format!("{}/{}", source.trim_end_matches('/'), entry.name);
                Box::pin(fetch(
                    client,
                    &child,
                    entry.file_type,
                    entry.mode,
                    &host.join(&entry.name),
                ))
                .await?;
            }
        }
        FileType::File => {
            let data = client.read_file(source, MAX_FILE).await.map_err(agent)?;
            std::fs::write(host, data)
                .with_context(|| format!("cannot write {}", host.display()))?;
        }
        FileType::Symlink | FileType::Other => {
            tracing::warn!("skipping {source}: not a regular file or directory");
            return Ok(());
        }
    }
    std::fs::set_permissions(host, std::fs::Permissions::from_mode(mode & 0o7777))
        .with_context(|| format!("cannot set the mode of {}", host.display()))
}

fn agent(error: ProtocolError) -> anyhow::Error {
    anyhow!(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            parse("box:/a/b").unwrap(),
            Location::Sandbox {
                name: "box".into(),
                path: "/a/b".into()
            }
        );
        assert_eq!(parse("./x:y").unwrap(), Location::Host("./x:y".into()));
        assert_eq!(
            parse("/tmp/file").unwrap(),
            Location::Host("/tmp/file".into())
        );
        assert!(parse("box:").is_err());
        assert!(parse("box:/../etc").is_err());
        assert!(parse("b;x:/a").is_err());
    }
}
