//! Waiting for the agent's socket to appear in the host directory, without polling: an
//! inotify watch on the directory wakes us when the agent binds it.

use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use rustix::fs::inotify;
use tokio::io::unix::AsyncFd;

use crate::error::DockerError;

/// A watch on a directory, set up before the container starts so no creation is missed.
#[derive(Debug)]
pub struct SocketWatch {
    inotify: AsyncFd<OwnedFd>,
}

impl SocketWatch {
    pub fn new(dir: &Path) -> Result<SocketWatch, DockerError> {
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .map_err(|e| DockerError::io("inotify_init")(e.into()))?;
        // The agent renames its socket into place once it listens (MOVED_TO); CREATE
        // covers an agent that binds in place.
        inotify::add_watch(
            &fd,
            dir,
            inotify::WatchFlags::CREATE | inotify::WatchFlags::MOVED_TO,
        )
        .map_err(|e| DockerError::io(format!("watch {}", dir.display()))(e.into()))?;
        // SAFETY: the inotify fd is an OwnedFd moved into the AsyncFd, which owns it (and so
        // keeps it open and the same) for its whole life.
        let inotify = unsafe { AsyncFd::register(fd) }
            .map_err(|e| DockerError::io("register the inotify watch")(e.into()))?;
        Ok(SocketWatch { inotify })
    }

    /// Returns once `path` (in the watched directory) exists, or fails after `limit`.
    pub async fn wait_for(&self, path: &Path, limit: Duration) -> Result<(), DockerError> {
        let name = path.file_name().map(|n| n.as_encoded_bytes().to_vec());
        let waited = tokio::time::timeout(limit, async {
            loop {
                // Checked after each wake-up (and first before any): events queued before
                // the watch existed are not lost, they were never needed.
                if path.exists() {
                    return Ok(());
                }
                let mut guard = self
                    .inotify
                    .readable()
                    .await
                    .map_err(DockerError::io("wait on inotify"))?;
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
                        Err(e) => return Err(DockerError::io("read inotify events")(e.into())),
                    }
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            Err(DockerError::Agent(format!(
                "did not listen on {} within {}s",
                path.display(),
                limit.as_secs()
            )))
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
        assert!(error.to_string().contains("did not listen"), "{error}");
    }
}
