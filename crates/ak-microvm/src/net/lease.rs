//! Which /30 of the VM network a VM has: one lease per VM, a symbolic link
//! `SLOT -> SANDBOX_ID` in a directory shared by every agentkernel process. Creating a link
//! is atomic and fails when the name exists, so two processes never get the same slot, and
//! the link names its owner, so a lease whose VM is gone (its creator was killed) is found
//! and released by the sweep.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::MicrovmError;

/// How many /30 networks the VM range (a /16) holds.
pub const SLOTS: u32 = 1 << 14;

/// The lease directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leases {
    pub dir: PathBuf,
}

impl Leases {
    /// The leases in `dir`, created (mode 0700: only root takes leases) if missing.
    pub fn open(dir: PathBuf) -> Result<Leases, MicrovmError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(MicrovmError::io(format!("create {}", dir.display())))?;
        Ok(Leases { dir })
    }

    fn path(&self, slot: u32) -> PathBuf {
        self.dir.join(slot.to_string())
    }

    /// Takes the lowest free slot for `owner`.
    pub fn acquire(&self, owner: &str) -> Result<u32, MicrovmError> {
        for slot in 0..SLOTS {
            match std::os::unix::fs::symlink(owner, self.path(slot)) {
                Ok(()) => return Ok(slot),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(MicrovmError::io(format!(
                        "take a network lease in {}",
                        self.dir.display()
                    ))(e));
                }
            }
        }
        Err(MicrovmError::Unsupported(format!(
            "all {SLOTS} VM networks are in use"
        )))
    }

    /// The owner of `slot`, if it is leased.
    pub fn owner(&self, slot: u32) -> Option<String> {
        std::fs::read_link(self.path(slot))
            .ok()
            .map(|target| target.to_string_lossy().into_owned())
    }

    /// Gives `slot` back if `owner` holds it; whether it did.
    pub fn release(&self, slot: u32, owner: &str) -> Result<bool, MicrovmError> {
        if self.owner(slot).as_deref() != Some(owner) {
            return Ok(false);
        }
        match std::fs::remove_file(self.path(slot)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(MicrovmError::io(format!("remove the network lease {slot}"))(e)),
        }
    }

    /// Every lease: slot and owner.
    pub fn list(&self) -> Vec<(u32, String)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let slot = entry.file_name().to_str()?.parse::<u32>().ok()?;
                Some((slot, self.owner(slot)?))
            })
            .collect()
    }

    /// The leases whose owner has no runtime directory in `run_base` any more: its VM
    /// ended without releasing them (a VM's lease is taken after its directory is made
    /// and given back before the directory is removed).
    pub fn orphans(&self, run_base: &Path) -> Vec<(u32, String)> {
        self.list()
            .into_iter()
            .filter(|(_, owner)| !run_base.join(owner).is_dir())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_unique_under_concurrency_and_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let leases = Leases::open(dir.path().join(".net")).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let leases = leases.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|i| leases.acquire(&format!("vm{t}-{i}")).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut slots: Vec<u32> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        slots.sort_unstable();
        assert_eq!(slots, (0..200).collect::<Vec<_>>(), "unique and dense");
        assert!(leases.owner(0).is_some());
        // Only its owner gives a slot back; the freed slot is the next one taken.
        let owner = leases.owner(17).unwrap();
        assert!(!leases.release(17, "someone-else").unwrap());
        assert!(leases.release(17, &owner).unwrap());
        assert!(!leases.release(17, &owner).unwrap(), "released once");
        assert_eq!(leases.acquire("next").unwrap(), 17);
        assert_eq!(leases.list().len(), 200);
    }

    #[test]
    fn leases_of_vms_without_a_directory_are_orphans() {
        let run = tempfile::tempdir().unwrap();
        let leases = Leases::open(run.path().join(".net")).unwrap();
        std::fs::create_dir(run.path().join("alive")).unwrap();
        assert_eq!(leases.acquire("alive").unwrap(), 0);
        assert_eq!(leases.acquire("gone").unwrap(), 1);
        assert_eq!(leases.orphans(run.path()), vec![(1, "gone".to_string())]);
        assert!(leases.release(1, "gone").unwrap());
        assert!(leases.orphans(run.path()).is_empty());
        // Files that are no leases are ignored.
        std::fs::write(leases.dir.join("lock"), b"").unwrap();
        assert_eq!(leases.list(), vec![(0, "alive".to_string())]);
    }
}
