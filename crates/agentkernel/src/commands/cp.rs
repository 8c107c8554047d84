//! `agentkernel cp SRC DST`: files and directories between the host and a running sandbox
//! (one side is `NAME:/path`). Files land atomically on both sides (the agent writes a
//! temporary file and renames it; the host side does the same); a directory copied to the
//! host appears whole, under a temporary name first.
//!
//! What comes out of a sandbox is hostile data: on the host, every file and directory is
//! created afresh (`O_CREAT|O_EXCL|O_NOFOLLOW`, relative to its parent's descriptor, so
//! no planted symlink is followed) under an unpredictable staging name, and gets its
//! sandbox mode without the setuid, setgid and sticky bits and without write access for
//! group and others.

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ak_core::spec::{new_sandbox_id, validate_name};
use ak_protocol::{AgentClient, FileType, ProtocolError};
use anyhow::{Context, anyhow, bail};
use rustix::fs::{AtFlags, Mode, OFlags};

use ak_service::{Caller, Outcome};

use crate::cli::CpArgs;
use crate::exit;
use crate::front;
use crate::wiring;

/// Largest single file `cp` moves (the agent refuses larger reads).
const MAX_FILE: u64 = 4 << 30;

/// Marks a host staging entry: `.NAME.ak-cp-PID-RANDOM` beside the destination NAME.
const STAGING_MARK: &str = ".ak-cp-";

/// The mode bits a file or directory copied out of a sandbox keeps: no setuid, setgid or
/// sticky bit (a setuid file made by the sandbox's root must not become a host program
/// that runs as the user), and no write access for group or others.
const KEPT_MODE_BITS: u32 = 0o755;

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
    let (upward, name, path, host) = match (src, dst) {
        (Location::Host(host), Location::Sandbox { name, path }) => (true, name, path, host),
        (Location::Sandbox { name, path }, Location::Host(host)) => (false, name, path, host),
        _ => exit::fail(
            exit::USAGE,
            &anyhow!("exactly one of SRC and DST must be NAME:/path"),
        ),
    };
    let client = match front::client(&service, &name).await {
        Ok(client) => client,
        Err(failure) => return failure.report(),
    };
    // Recorded in the audit log like the service's own file operations.
    let (action, detail, result) = if upward {
        let detail = format!("{} -> {path}", host.display());
        ("cp_in", detail, upload(&client, &host, &path).await)
    } else {
        let detail = format!("{path} -> {}", host.display());
        ("cp_out", detail, download(&client, &path, &host).await)
    };
    let (outcome, detail) = match &result {
        Ok(()) => (Outcome::Ok, detail),
        Err(error) => (Outcome::Error, format!("{detail}: {error:#}")),
    };
    service.record_audit(Caller::Local, action, Some(&name), outcome, Some(detail));
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
    if !matches!(stat.file_type, FileType::File | FileType::Dir) {
        bail!("{source} is not a regular file or directory");
    }
    let parent = host
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = host
        .file_name()
        .ok_or_else(|| anyhow!("{} names no file", host.display()))?;
    // Every step below is relative to this descriptor: a parent swapped meanwhile cannot
    // redirect part of the copy elsewhere.
    let parent_fd = rustix::fs::open(
        parent,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open {}", parent.display()))?;
    // Staging entries of copies that were killed before they could clean up.
    sweep_stale_staging(parent_fd.as_fd());
    let staging = staging_name(name);
    let result = fetch(
        client,
        source,
        stat.file_type,
        stat.mode,
        parent_fd.as_fd(),
        &staging,
    )
    .await;
    if let Err(error) = result {
        let _ = remove_tree_at(parent_fd.as_fd(), &staging);
        return Err(error);
    }
    rustix::fs::renameat(parent_fd.as_fd(), &staging, parent_fd.as_fd(), name).map_err(|e| {
        let _ = remove_tree_at(parent_fd.as_fd(), &staging);
        anyhow!("cannot move into place: {}: {e}", host.display())
    })
}

/// A staging name beside `name` that no one can guess ahead: `.NAME.ak-cp-PID-RANDOM`.
/// The pid tells a later copy whether the entry's owner still runs.
fn staging_name(name: &OsStr) -> std::ffi::OsString {
    let mut staging = std::ffi::OsString::from(".");
    staging.push(name);
    staging.push(format!(
        "{STAGING_MARK}{}-{}",
        std::process::id(),
        new_sandbox_id()
    ));
    staging
}

/// The pid in a staging name made by [`staging_name`], or `None` for any other name
/// (a pid that is not a positive `pid_t` included: the name may be planted).
fn staging_owner(name: &[u8]) -> Option<rustix::process::Pid> {
    let name = std::str::from_utf8(name).ok()?;
    let (head, tail) = name.rsplit_once(STAGING_MARK)?;
    let (pid, random) = tail.split_once('-')?;
    let well_formed = head.starts_with('.')
        && head.len() > 1
        && random.len() == 32
        && random.bytes().all(|b| b.is_ascii_hexdigit());
    let pid: i32 = pid.parse().ok().filter(|pid| *pid > 0 && well_formed)?;
    rustix::process::Pid::from_raw(pid)
}

/// Removes the staging entries in `dir` that a copy left behind when it was killed: ours
/// (owned by this user) and whose copy no longer runs. Best effort: a copy never fails
/// for a leftover it could not remove.
fn sweep_stale_staging(dir: BorrowedFd<'_>) {
    let Ok(listing) = rustix::fs::Dir::read_from(dir) else {
        return;
    };
    let me = rustix::process::geteuid().as_raw();
    for entry in listing.flatten() {
        let name = entry.file_name().to_bytes();
        let Some(pid) = staging_owner(name) else {
            continue;
        };
        // EPERM (another user's process) counts as running.
        let still_running = rustix::process::test_kill_process(pid) != Err(rustix::io::Errno::SRCH);
        let name = OsStr::from_bytes(name);
        let ours = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|stat| stat.st_uid == me);
        if ours && !still_running {
            let _ = remove_tree_at(dir, name);
        }
    }
}

/// Removes `name` in `dir` and, when it is a directory, everything beneath it, never
/// following a symlink (a symlink is removed itself).
fn remove_tree_at(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
    let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Directory {
        return rustix::fs::unlinkat(dir, name, AtFlags::empty());
    }
    let sub = rustix::fs::openat(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // A copied directory may have lost its own write bit; its entries must go first.
    rustix::fs::fchmod(&sub, Mode::from_raw_mode(0o700))?;
    for entry in rustix::fs::Dir::read_from(&sub)?.flatten() {
        let child = entry.file_name().to_bytes();
        if child != b"." && child != b".." {
            remove_tree_at(sub.as_fd(), OsStr::from_bytes(child))?;
        }
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

/// Creates directory `name` in `dir` (failing if anything, a symlink included, is there)
/// and opens it without following a symlink put there meanwhile. Private until its
/// content is complete.
fn create_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))?;
    rustix::fs::openat(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Creates file `name` in `dir`, which must not exist (not even as a symlink).
fn create_file_at(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
}

/// The mode a copy on the host gets for sandbox mode `mode`.
fn host_mode(mode: u32) -> Mode {
    Mode::from_raw_mode(mode & KEPT_MODE_BITS)
}

/// Copies `source` (of `file_type`, with sandbox mode `mode`) to `name` in `dir`.
async fn fetch(
    client: &AgentClient,
    source: &str,
    file_type: FileType,
    mode: u32,
    dir: BorrowedFd<'_>,
    name: &OsStr,
) -> anyhow::Result<()> {
    let shown = || Path::new(name).display().to_string();
    let created = match file_type {
        FileType::Dir => {
            let created =
                create_dir_at(dir, name).with_context(|| format!("cannot create {}", shown()))?;
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
                    created.as_fd(),
                    OsStr::new(&entry.name),
                ))
                .await?;
            }
            created
        }
        FileType::File => {
            let data = client.read_file(source, MAX_FILE).await.map_err(agent)?;
            let created =
                create_file_at(dir, name).with_context(|| format!("cannot create {}", shown()))?;
            let mut file = std::fs::File::from(created);
            file.write_all(&data)
                .with_context(|| format!("cannot write {}", shown()))?;
            OwnedFd::from(file)
        }
        FileType::Symlink | FileType::Other => {
            tracing::warn!("skipping {source}: not a regular file or directory");
            return Ok(());
        }
    };
    rustix::fs::fchmod(&created, host_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", shown()))
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

    fn dir_fd(path: &Path) -> OwnedFd {
        rustix::fs::open(path, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap()
    }

    #[test]
    fn host_modes_lose_privilege_and_shared_write_bits() {
        assert_eq!(host_mode(0o4755).as_raw_mode(), 0o755);
        assert_eq!(host_mode(0o6777).as_raw_mode(), 0o755);
        assert_eq!(host_mode(0o1777).as_raw_mode(), 0o755);
        assert_eq!(host_mode(0o666).as_raw_mode(), 0o644);
        assert_eq!(host_mode(0o600).as_raw_mode(), 0o600);
        assert_eq!(host_mode(0o170_777).as_raw_mode(), 0o755);
    }

    #[test]
    fn staging_names_are_unpredictable_and_recognisable() {
        let first = staging_name(OsStr::new("out"));
        let second = staging_name(OsStr::new("out"));
        assert_ne!(first, second);
        let prefix = format!(".out{STAGING_MARK}{}-", std::process::id());
        assert!(first.to_string_lossy().starts_with(&prefix), "{first:?}");
        assert_eq!(
            staging_owner(first.as_bytes()).map(|pid| pid.as_raw_nonzero().get()),
            Some(std::process::id() as i32)
        );
        for other in [
            "out",
            ".out.ak-cp-12",
            ".out.ak-cp-12-xyz",
            ".ak-cp-12-0123456789abcdef0123456789abcdef",
            ".out.ak-cp-x-0123456789abcdef0123456789abcdef",
            ".out.ak-cp-0-0123456789abcdef0123456789abcdef",
            ".out.ak-cp--1-0123456789abcdef0123456789abcdef",
            ".out.ak-cp-4294967295-0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(staging_owner(other.as_bytes()), None, "{other}");
        }
    }

    #[test]
    fn a_planted_symlink_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("keep"), "precious").unwrap();
        let planted = OsStr::new(".out.ak-cp-1-0123456789abcdef0123456789abcdef");
        std::os::unix::fs::symlink(&victim, dir.path().join(planted)).unwrap();
        std::os::unix::fs::symlink(victim.join("keep"), dir.path().join("file-link")).unwrap();
        let fd = dir_fd(dir.path());
        assert_eq!(
            create_dir_at(fd.as_fd(), planted).unwrap_err(),
            rustix::io::Errno::EXIST
        );
        assert_eq!(
            create_file_at(fd.as_fd(), OsStr::new("file-link")).unwrap_err(),
            rustix::io::Errno::EXIST
        );
        assert_eq!(
            std::fs::read_to_string(victim.join("keep")).unwrap(),
            "precious"
        );
        // Removing a staging entry that is a symlink removes the link, not its target.
        remove_tree_at(fd.as_fd(), planted).unwrap();
        assert!(dir.path().join(planted).symlink_metadata().is_err());
        assert_eq!(
            std::fs::read_to_string(victim.join("keep")).unwrap(),
            "precious"
        );
    }

    #[test]
    fn stale_staging_entries_are_swept_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let random = "0123456789abcdef0123456789abcdef";
        // Above the kernel's pid_max limit: never a running process.
        let stale = format!(".out{STAGING_MARK}4194305-{random}");
        std::fs::create_dir_all(dir.path().join(&stale).join("sub")).unwrap();
        std::fs::write(dir.path().join(&stale).join("sub/f"), "x").unwrap();
        // A read-only directory inside, as a copied tree may have.
        std::fs::set_permissions(
            dir.path().join(&stale).join("sub"),
            std::fs::Permissions::from_mode(0o555),
        )
        .unwrap();
        let live = format!(".out{STAGING_MARK}{}-{random}", std::process::id());
        std::fs::write(dir.path().join(&live), "in progress").unwrap();
        let unrelated = format!(".out{STAGING_MARK}4194305");
        std::fs::write(dir.path().join(&unrelated), "not ours").unwrap();
        sweep_stale_staging(dir_fd(dir.path()).as_fd());
        assert!(!dir.path().join(&stale).exists());
        assert!(dir.path().join(&live).exists());
        assert!(dir.path().join(&unrelated).exists());
    }
}
