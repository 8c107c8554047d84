//! The initramfs: our static agent as `/init`, nothing else. The agent mounts the base
//! image itself (`--guest`), so images never carry it and an agent update needs no image
//! rebuild. Cached by the agent's hash.

use std::path::{Path, PathBuf};

use super::{file_hash, publish};
use crate::error::MicrovmError;

/// The initramfs for `agent`, written into the cache if not there yet.
pub fn ensure(cache: &Path, agent: &Path) -> Result<PathBuf, MicrovmError> {
    if !agent.is_file() {
        return Err(MicrovmError::Artifact(format!(
            "the agent {} is missing",
            agent.display()
        )));
    }
    let dir = cache.join("initramfs");
    let path = dir.join(format!("agent-{}.cpio", file_hash(agent)?));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(MicrovmError::io(format!("create {}", dir.display())))?;
    let staged = dir.join(format!(".staged-{}.cpio", std::process::id()));
    let written = write(agent, &staged).and_then(|()| publish(&staged, &path));
    if written.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    prune(&dir);
    written.map(|()| path)
}

/// How many initramfs files (one per agent build) the cache keeps: a few agents (a debug
/// and a release build, an upgrade) may be in use at once.
const KEEP: usize = 4;

/// Removes all but the newest [`KEEP`] initramfs files.
fn prune(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("agent-"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    for (_, old) in files.into_iter().skip(KEEP) {
        let _ = std::fs::remove_file(old);
    }
}

/// Writes a newc archive holding `agent` as `/init` (mode 0755, root's).
fn write(agent: &Path, out: &Path) -> Result<(), MicrovmError> {
    let input = std::fs::File::open(agent)
        .map_err(MicrovmError::io(format!("open {}", agent.display())))?;
    let output = std::fs::File::create(out)
        .map_err(MicrovmError::io(format!("create {}", out.display())))?;
    // The kernel's built-in initramfs, unpacked first, provides /dev/console and /root.
    let init = cpio::NewcBuilder::new("init")
        .mode(0o100_755)
        .uid(0)
        .gid(0)
        .nlink(1);
    let output = cpio::write_cpio(std::iter::once((init, input)), output)
        .map_err(MicrovmError::io(format!("write {}", out.display())))?;
    output
        .sync_all()
        .map_err(MicrovmError::io(format!("sync {}", out.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_holds_the_agent_as_init_and_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("ak-agent");
        std::fs::write(&agent, b"\x7fELF pretend agent").unwrap();
        let cache = dir.path().join("cache");
        let path = ensure(&cache, &agent).unwrap();
        assert_eq!(ensure(&cache, &agent).unwrap(), path);
        let archive = std::fs::File::open(&path).unwrap();
        let mut reader = cpio::NewcReader::new(archive).unwrap();
        assert_eq!(reader.entry().name(), "init");
        assert_eq!(reader.entry().mode(), 0o100_755);
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut content).unwrap();
        assert_eq!(content, b"\x7fELF pretend agent");
        let rest = reader.finish().unwrap();
        assert!(cpio::NewcReader::new(rest).unwrap().entry().is_trailer());
        assert!(ensure(&cache, &dir.path().join("none")).is_err());
    }
}
