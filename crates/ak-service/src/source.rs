//! Cloning a sandbox's source repository on the host side, into the directory that becomes
//! its workdir, before the sandbox starts. `git` does the work (the user's git, with their
//! credential helpers and ssh keys for the protocols allowed), hardened: only the source's
//! own protocol (`GIT_ALLOW_PROTOCOL` also covers submodules and redirects), no hooks
//! (an empty template installs none, and `core.hooksPath` points nowhere), no system
//! config that could add any, no prompt, no submodules, and a time limit.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ak_core::source::{GitProtocol, GitSource};

use crate::error::ServiceError;

/// How long one git command may take before the clone is given up.
const GIT_TIMEOUT: Duration = Duration::from_secs(600);
/// The most of git's error output an error message repeats.
const SHOWN_ERROR_BYTES: usize = 2000;

/// Clones `source` into `dest` (an empty directory) and checks out its ref, then gives
/// every file to `owner` (the sandbox's root on the host) when one is named.
pub(crate) async fn clone_into(
    source: &GitSource,
    dest: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(), ServiceError> {
    let protocol = source.protocol()?;
    let git = Git { protocol };
    git.run(
        None,
        [
            OsStr::new("clone"),
            OsStr::new("--quiet"),
            OsStr::new("--no-checkout"),
            OsStr::new("--no-recurse-submodules"),
            OsStr::new("--template="),
            OsStr::new("--"),
            OsStr::new(&source.url),
            dest.as_os_str(),
        ],
    )
    .await?;
    match &source.reference {
        None => {
            // The remote's default branch; an empty repository has nothing to check out.
            if git
                .output(Some(dest), ["rev-parse", "--verify", "--quiet", "HEAD"])
                .await
                .is_ok()
            {
                git.run(Some(dest), ["checkout", "--quiet"]).await?;
            }
        }
        Some(reference) => {
            let branch = format!("refs/remotes/origin/{reference}");
            if git
                .output(Some(dest), ["rev-parse", "--verify", "--quiet", &branch])
                .await
                .is_ok()
            {
                // A branch: checked out as a local branch of that name, as `clone -b` does.
                git.run(
                    Some(dest),
                    [
                        "checkout",
                        "--quiet",
                        "-B",
                        reference.as_str(),
                        "--track",
                        branch.as_str(),
                    ],
                )
                .await?;
            } else {
                // A tag or a commit (the ref was checked for option look-alikes).
                let commit = format!("{reference}^{{commit}}");
                let resolved = git
                    .output(
                        Some(dest),
                        [
                            "rev-parse",
                            "--verify",
                            "--quiet",
                            "--end-of-options",
                            &commit,
                        ],
                    )
                    .await
                    .map_err(|_| {
                        ServiceError::Source(format!(
                            "{}: no branch, tag or commit named '{reference}'",
                            source.url
                        ))
                    })?;
                git.run(
                    Some(dest),
                    ["checkout", "--quiet", "--detach", resolved.trim()],
                )
                .await?;
            }
        }
    }
    if let Some((uid, gid)) = owner {
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || chown_tree(&dest, uid, gid))
            .await
            .map_err(|e| ServiceError::State(format!("chown task: {e}")))??;
    }
    Ok(())
}

/// git, run for one source.
struct Git {
    protocol: GitProtocol,
}

impl Git {
    fn command<I, S>(&self, dir: Option<&Path>, args: I) -> tokio::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = tokio::process::Command::new("git");
        if let Some(dir) = dir {
            command.arg("-C").arg(dir);
        }
        command
            .args(["-c", "core.hooksPath=/dev/null"])
            // The workdir may already belong to the sandbox's (unprivileged) root.
            .args(["-c", "safe.directory=*"])
            .args(["-c", "protocol.allow=never"])
            .arg("-c")
            .arg(format!("protocol.{}.allow=always", self.protocol.as_str()))
            .args(["-c", "submodule.recurse=false"])
            .args(["-c", "advice.detachedHead=false"])
            .args(args)
            .env("GIT_ALLOW_PROTOCOL", self.protocol.as_str())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            // ssh never asks either: a host it does not know, or a key with a passphrase,
            // is an error rather than a prompt on the service's terminal.
            .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs git; its standard output when it succeeds, its error output as the error.
    async fn output<I, S>(&self, dir: Option<&Path>, args: I) -> Result<String, ServiceError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let child = self.command(dir, args).output();
        let output = match tokio::time::timeout(GIT_TIMEOUT, child).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ServiceError::Source(
                    "git is not installed on this host (a source needs it)".into(),
                ));
            }
            Ok(Err(e)) => return Err(ServiceError::State(format!("run git: {e}"))),
            Err(_) => {
                return Err(ServiceError::Source(format!(
                    "git took longer than {} s",
                    GIT_TIMEOUT.as_secs()
                )));
            }
        };
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        let shown: String = stderr.chars().take(SHOWN_ERROR_BYTES).collect();
        Err(ServiceError::Source(if shown.is_empty() {
            format!("git failed ({})", output.status)
        } else {
            shown
        }))
    }

    async fn run<I, S>(&self, dir: Option<&Path>, args: I) -> Result<(), ServiceError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.output(dir, args).await.map(drop)
    }
}

/// Gives `dir` and everything in it to `uid:gid`, never following a symlink (the
/// repository's content is someone else's data).
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<(), ServiceError> {
    let owner = (
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    );
    let chown = |path: &Path| {
        rustix::fs::chownat(
            rustix::fs::CWD,
            path,
            owner.0,
            owner.1,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| ServiceError::State(format!("chown {}: {e}", path.display())))
    };
    chown(dir)?;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| ServiceError::State(format!("read {}: {e}", dir.display())))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| ServiceError::State(format!("read {}: {e}", dir.display())))?;
            let path = entry.path();
            chown(&path)?;
            if entry
                .file_type()
                .map_err(|e| ServiceError::State(format!("stat {}: {e}", path.display())))?
                .is_dir()
            {
                pending.push(path);
            }
        }
    }
    Ok(())
}
