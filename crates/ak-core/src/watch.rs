//! Waiting for a socket to appear in a host directory, without polling: an inotify watch
//! on the directory wakes us when the agent (or a helper process) binds it.

use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use rustix::fs::inotify;
use tokio::io::unix::AsyncFd;

/// A watch on a directory, set up before whatever binds the socket starts, so no
/// creation is missed.
#[derive(Debug)]
pub struct SocketWatch {
    inotify: AsyncFd<OwnedFd>,
}

impl SocketWatch {
    pub fn new(dir: &Path) -> std::io::Result<SocketWatch> {
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        // The agent renames its socket into place once it listens (MOVED_TO); CREATE
        // covers an agent that binds in place.
        inotify::add_watch(
            &fd,
            dir,
            inotify::WatchFlags::CREATE | inotify::WatchFlags::MOVED_TO,
        )?;
        // SAFETY: the inotify fd is an OwnedFd moved into the AsyncFd, which owns it (and
        // so keeps it open and the same) for its whole life.
        let inotify = unsafe { AsyncFd::register(fd) }?;
        Ok(SocketWatch { inotify })
    }

    /// Returns once `path` (in the watched directory) exists, or fails with `TimedOut`
    /// after `limit`.
    pub async fn wait_for(&self, path: &Path, limit: Duration) -> std::io::Result<()> {
        let name = path.file_name().map(|n| n.as_encoded_bytes().to_vec());
        let waited = tokio::time::timeout(limit, async {
            loop {
                // Checked after each wake-up (and first before any): events queued before
                // the watch existed are not lost, they were never needed.
                if path.exists() {
                    return Ok(());
                }
                let mut guard = self.inotify.readable().await?;
                let mut buffer = [MaybeUninit::<u8>::uninit(); 1024];
                let mut reader = inotify::Reader::new(self.inotify.get_ref(), &mut buffer);
                loop {
                    match reader.next() {
                        Ok(event) => {
                            if event.file_name().map(|n| n.to_bytes()) == name.as_deref() {
                                return Ok(());
                            }
                        }
                        Err(rustix::io::Errno::AGAIN) => {
                            guard.clear_ready();
                            break;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "nothing listened on {} within {}s",
                    path.display(),
                    limit.as_secs()
                ),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_when_the_file_appears_and_times_out_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let watch = SocketWatch::new(dir.path()).unwrap();
        let path = dir.path().join("agent.sock");
        let creator = {
            let path = path.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::fs::write(dir.path().join("other"), "").unwrap();
                std::fs::write(&path, "").unwrap();
                dir
            })
        };
        watch.wait_for(&path, Duration::from_secs(5)).await.unwrap();
        let dir = creator.await.unwrap();
        let error = watch
            .wait_for(&dir.path().join("never"), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
    }
}
