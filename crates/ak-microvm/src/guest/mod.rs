//! What a microVM boots: our guest kernel, the initramfs holding the agent, and the
//! sandbox image as a read-only base disk. All are built once and cached by content hash.

pub mod image;
pub mod initramfs;
pub mod kernel;
pub mod layer_disk;
pub mod layers;

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::MicrovmError;

/// What a long build reports, for a progress bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub message: String,
    pub position: u64,
    /// The expected end of `position`, when known.
    pub length: Option<u64>,
}

/// Receives build progress (the CLI draws it).
pub type ProgressSink<'a> = &'a (dyn Fn(&Progress) + Send + Sync);

/// The first 16 hex digits of the SHA-256 of `parts`: cache keys.
pub(crate) fn short_hash<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hex(&hasher.finalize()[..8])
}

/// SHA-256 of a file's contents, first 16 hex digits.
pub(crate) fn file_hash(path: &Path) -> Result<String, MicrovmError> {
    let mut file =
        std::fs::File::open(path).map_err(MicrovmError::io(format!("open {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(MicrovmError::io(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()[..8]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `path` through a temporary file in the same directory renamed into place, so a
/// cache entry is either whole or absent (a build killed half-way leaves no entry).
pub(crate) fn publish(staged: &Path, path: &Path) -> Result<(), MicrovmError> {
    std::fs::rename(staged, path).map_err(MicrovmError::io(format!(
        "move {} to {}",
        staged.display(),
        path.display()
    )))
}

/// Runs a build command, failing with its last output lines.
pub(crate) fn run_build(
    what: &str,
    command: &mut std::process::Command,
) -> Result<(), MicrovmError> {
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(MicrovmError::io(format!("run {what}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(MicrovmError::Build {
        what: what.into(),
        detail: format!(
            "{}\n{}",
            output.status,
            tail(&output.stderr, &output.stdout)
        ),
    })
}

/// The last lines of a command's output.
pub(crate) fn tail(stderr: &[u8], stdout: &[u8]) -> String {
    let text = if stderr.trim_ascii().is_empty() {
        stdout
    } else {
        stderr
    };
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_separate_their_parts() {
        assert_ne!(
            short_hash([b"ab".as_slice(), b"c"]),
            short_hash([b"a".as_slice(), b"bc"])
        );
        assert_eq!(short_hash([b"x".as_slice()]).len(), 16);
    }
}
