//! A named sandbox's writable layer disk: an ext4 file system in a sparse file, in the
//! directory the service keeps beside the sandbox's workdir (`SandboxSpec::root_dir`).
//! The guest mounts it as its overlay's upper layer (`--layer-disk`), so the root's
//! changes outlive a stop, and the host copies the file for a snapshot (holes stay
//! holes: an unused disk costs the file system's metadata only).

use std::path::{Path, PathBuf};

use crate::error::MicrovmError;
use crate::tools;

/// The disk's file, in the sandbox's root directory.
pub const LAYER_DISK: &str = "layer.ext4";
/// Its size as the guest sees it. Sparse: only what the guest writes takes host disk.
pub const LAYER_DISK_BYTES: u64 = 8 << 30;

/// The layer disk in `dir`, made (empty) when it is not there yet: a restored sandbox
/// finds the snapshot's copy there instead.
pub fn ensure(dir: &Path) -> Result<PathBuf, MicrovmError> {
    let disk = dir.join(LAYER_DISK);
    match std::fs::symlink_metadata(&disk) {
        Ok(meta) if meta.is_file() => return Ok(disk),
        Ok(_) => {
            return Err(MicrovmError::Artifact(format!(
                "{} is not a regular file",
                disk.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(MicrovmError::io(format!("stat {}", disk.display()))(e)),
    }
    let mkfs = tools::require_program("mkfs.ext4", "install Debian's e2fsprogs package")?;
    let staged = dir.join(format!(".{LAYER_DISK}.{}", std::process::id()));
    let made = std::fs::File::create(&staged)
        .and_then(|file| file.set_len(LAYER_DISK_BYTES))
        .map_err(MicrovmError::io(format!("create {}", staged.display())))
        .and_then(|()| {
            // With a journal: a snapshot of a paused VM is its disk as after a power
            // cut, which the journal recovers at the next mount.
            super::run_build(
                "making the layer disk",
                std::process::Command::new(mkfs)
                    .args(["-q", "-F", "-m", "0", "-L", "agentkernel-layer"])
                    .arg(&staged),
            )
        })
        .and_then(|()| super::publish(&staged, &disk));
    if made.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    made.map(|()| disk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_sparse_ext4_disk_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let disk = ensure(dir.path()).unwrap();
        let meta = std::fs::metadata(&disk).unwrap();
        assert_eq!(meta.len(), LAYER_DISK_BYTES);
        // Sparse: the file system's metadata only.
        assert!(meta.blocks() * 512 < 256 << 20, "{} blocks", meta.blocks());
        let magic = {
            use std::io::{Read, Seek};
            let mut file = std::fs::File::open(&disk).unwrap();
            file.seek(std::io::SeekFrom::Start(1024 + 0x38)).unwrap();
            let mut magic = [0u8; 2];
            file.read_exact(&mut magic).unwrap();
            magic
        };
        assert_eq!(magic, [0x53, 0xef], "an ext4 superblock");
        // Kept as it is on the next start (a restore puts the snapshot's copy there).
        std::fs::OpenOptions::new()
            .write(true)
            .open(&disk)
            .unwrap()
            .set_len(LAYER_DISK_BYTES + 4096)
            .unwrap();
        assert_eq!(ensure(dir.path()).unwrap(), disk);
        assert_eq!(
            std::fs::metadata(&disk).unwrap().len(),
            LAYER_DISK_BYTES + 4096
        );
        assert!(
            std::fs::read_dir(dir.path()).unwrap().count() == 1,
            "no staged file left"
        );
    }

    #[test]
    fn something_else_in_its_place_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(LAYER_DISK)).unwrap();
        let error = ensure(dir.path()).unwrap_err().to_string();
        assert!(error.contains("not a regular file"), "{error}");
    }
}
