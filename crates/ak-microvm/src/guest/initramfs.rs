//! The initramfs: our static agent as `/init`, nothing else. The agent mounts the base
//! image itself (`--guest`), so images never carry it and an agent update needs no image
//! rebuild. Cached by the agent's hash.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{file_hash, publish};
use crate::error::MicrovmError;

/// What identifies one version of the agent's file without reading it: a rebuilt or
/// replaced agent has another inode, size, or change time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    path: PathBuf,
    device: u64,
    inode: u64,
    size: u64,
    changed: (i64, i64),
}

impl Stamp {
    fn of(path: &Path, meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            path: path.to_path_buf(),
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The initramfs found for the agent files seen by this process: hashing the agent (a few
/// MB) is milliseconds of every boot otherwise.
static KNOWN: Mutex<Vec<(Stamp, PathBuf)>> = Mutex::new(Vec::new());

/// The initramfs for `agent`, written into the cache if not there yet.
pub fn ensure(cache: &Path, agent: &Path) -> Result<PathBuf, MicrovmError> {
    let meta = std::fs::metadata(agent).ok().filter(|meta| meta.is_file());
    let Some(meta) = meta else {
        return Err(MicrovmError::Artifact(format!(
            "the agent {} is missing",
            agent.display()
        )));
    };
    let dir = cache.join("initramfs");
    let stamp = Stamp::of(agent, &meta);
    let known = KNOWN.lock().ok().and_then(|known| {
        known
            .iter()
            .find(|(seen, path)| *seen == stamp && path.starts_with(&dir))
            .map(|(_, path)| path.clone())
    });
    // The cache may have been pruned or cleared since.
    if let Some(path) = known.filter(|path| path.is_file()) {
        return Ok(path);
    }
    let path = dir.join(format!("agent-{}.cpio", file_hash(agent)?));
    if !path.is_file() {
        build(agent, &dir, &path)?;
    }
    if let Ok(mut known) = KNOWN.lock() {
        known.retain(|(seen, _)| seen.path != stamp.path);
        known.push((stamp, path.clone()));
    }
    Ok(path)
}

/// Writes the initramfs for `agent` at `path`, in `dir`.
fn build(agent: &Path, dir: &Path, path: &Path) -> Result<(), MicrovmError> {
    std::fs::create_dir_all(dir).map_err(MicrovmError::io(format!("create {}", dir.display())))?;
    let staged = dir.join(format!(".staged-{}.cpio", std::process::id()));
    let written = write(agent, &staged).and_then(|()| publish(&staged, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    prune(dir);
    written
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

    #[test]
    fn a_rebuilt_agent_or_a_pruned_archive_is_noticed_without_rehashing_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("ak-agent");
        let cache = dir.path().join("cache");
        std::fs::write(&agent, b"\x7fELF first build").unwrap();
        let first = ensure(&cache, &agent).unwrap();
        // Replaced the way a build does: another inode and size.
        std::fs::remove_file(&agent).unwrap();
        std::fs::write(&agent, b"\x7fELF second, longer build").unwrap();
        let second = ensure(&cache, &agent).unwrap();
        assert_ne!(first, second);
        std::fs::remove_file(&second).unwrap();
        assert_eq!(ensure(&cache, &agent).unwrap(), second);
        assert!(second.is_file());
    }
}
