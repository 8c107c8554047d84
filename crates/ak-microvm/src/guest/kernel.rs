//! The guest kernel: built from Debian's `linux-source-6.1` with the option list kept in
//! `guest/kernel.config`, cached by the hash of that list and the source's version; or a
//! user's own uncompressed `vmlinux`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Progress, ProgressSink, publish, run_build, short_hash};
use crate::error::MicrovmError;

/// The options merged over `make allnoconfig`.
pub const CONFIG: &str = include_str!("../../guest/kernel.config");
const SOURCE_PACKAGE: &str = "linux-source-6.1";
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";
/// About how many files the build compiles (measured: 6.1 with this config), for the
/// progress bar; the bar stops short if the real count differs.
const EXPECTED_COMPILES: u64 = 820;

fn config_hash() -> String {
    short_hash([CONFIG.as_bytes()])
}

fn kernels(cache: &Path) -> PathBuf {
    cache.join("kernel")
}

/// The kernel built from the current option list (any source version, the newest build
/// first), if there is one.
pub fn find_built(cache: &Path) -> Option<PathBuf> {
    let prefix = format!("{}-", config_hash());
    let mut built: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(kernels(cache))
        .ok()?
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path().join("vmlinux"))
        .filter_map(|path| Some((path.metadata().ok()?.modified().ok()?, path)))
        .collect();
    built.sort();
    built.pop().map(|(_, path)| path)
}

/// Checks that `path` is an uncompressed 64-bit x86 ELF kernel (what PVH boot loads).
pub fn check_vmlinux(path: &Path) -> Result<(), MicrovmError> {
    let bad = |why: String| {
        MicrovmError::Artifact(format!(
            "the guest kernel {} {why}; give an uncompressed x86_64 vmlinux (ELF), not a bzImage",
            path.display()
        ))
    };
    let mut file = std::fs::File::open(path).map_err(|e| bad(format!("cannot be opened ({e})")))?;
    let mut header = [0u8; 20];
    file.read_exact(&mut header)
        .map_err(|_| bad("is too short to be a kernel".into()))?;
    // ELF magic, ELFCLASS64, machine EM_X86_64 (62).
    if &header[..4] != b"\x7fELF" {
        return Err(bad("is not an ELF file".into()));
    }
    if header[4] != 2 || u16::from_le_bytes([header[18], header[19]]) != 62 {
        return Err(bad("is not a 64-bit x86 ELF file".into()));
    }
    Ok(())
}

/// The installed kernel source's package version.
fn source_version() -> Result<String, MicrovmError> {
    let missing = || MicrovmError::MissingTool {
        program: SOURCE_PACKAGE.into(),
        hint: format!(
            "install Debian's {SOURCE_PACKAGE} package (and make, gcc, flex, bison, bc, libelf-dev)"
        ),
    };
    if !Path::new(SOURCE_TARBALL).is_file() {
        return Err(missing());
    }
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", SOURCE_PACKAGE])
        .output()
        .map_err(|_| missing())?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || version.is_empty() {
        return Err(missing());
    }
    Ok(version)
}

/// Builds the guest kernel unless the current option list was already built from the
/// installed source; returns the `vmlinux`.
pub fn build(cache: &Path, progress: ProgressSink) -> Result<PathBuf, MicrovmError> {
    let version = source_version()?;
    let dir = kernels(cache).join(format!("{}-{}", config_hash(), sanitize(&version)));
    let vmlinux = dir.join("vmlinux");
    if vmlinux.is_file() {
        return Ok(vmlinux);
    }
    std::fs::create_dir_all(&dir).map_err(MicrovmError::io(format!("create {}", dir.display())))?;
    let staging = kernels(cache).join(format!(".build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)
        .map_err(MicrovmError::io(format!("create {}", staging.display())))?;
    let built = build_in(&staging, &version, progress).and_then(|built| {
        let staged = dir.join(format!(".vmlinux.{}", std::process::id()));
        std::fs::copy(&built, &staged)
            .map_err(MicrovmError::io(format!("copy {}", built.display())))?;
        publish(&staged, &vmlinux)
    });
    if let Err(e) = std::fs::remove_dir_all(&staging) {
        tracing::warn!("cannot remove {}: {e}", staging.display());
    }
    built.map(|()| vmlinux)
}

fn build_in(
    staging: &Path,
    version: &str,
    progress: ProgressSink,
) -> Result<PathBuf, MicrovmError> {
    let say = |message: String| {
        progress(&Progress {
            message,
            position: 0,
            length: None,
        })
    };
    say(format!("unpacking {SOURCE_PACKAGE} {version}"));
    run_build(
        "unpacking the kernel source",
        Command::new("tar")
            .arg("-xf")
            .arg(SOURCE_TARBALL)
            .arg("-C")
            .arg(staging),
    )?;
    let source = staging.join(SOURCE_PACKAGE);
    let fragment = staging.join("agentkernel.config");
    std::fs::write(&fragment, CONFIG).map_err(MicrovmError::io("write the kernel options"))?;
    say("configuring the kernel".into());
    run_build(
        "make allnoconfig",
        Command::new("make")
            .arg("-C")
            .arg(&source)
            .arg("allnoconfig")
            .env("KCONFIG_ALLCONFIG", &fragment),
    )?;
    check_config(&source.join(".config"))?;
    compile(&source, progress)?;
    Ok(source.join("vmlinux"))
}

/// Fails if an option of the list did not make it into `.config` (a dependency missing
/// from the list silently drops it).
fn check_config(config: &Path) -> Result<(), MicrovmError> {
    let written = std::fs::read_to_string(config)
        .map_err(MicrovmError::io(format!("read {}", config.display())))?;
    let missing: Vec<&str> = CONFIG
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("CONFIG_"))
        .filter(|line| !written.lines().any(|w| w.trim() == *line))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(MicrovmError::Build {
        what: "configuring the kernel".into(),
        detail: format!(
            "options not set (a dependency is missing from guest/kernel.config): {}",
            missing.join(" ")
        ),
    })
}

fn compile(source: &Path, progress: ProgressSink) -> Result<(), MicrovmError> {
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut child = Command::new("make")
        .arg("-C")
        .arg(source)
        .arg(format!("-j{jobs}"))
        .arg("vmlinux")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(MicrovmError::io("run make"))?;
    // stderr is drained on its own thread so a chatty compiler cannot block make.
    let stderr = child.stderr.take().map(|mut stderr| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stderr.read_to_end(&mut text);
            text
        })
    });
    let mut compiled = 0;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.trim_start().starts_with("CC ") {
                compiled += 1;
                progress(&Progress {
                    message: "compiling the guest kernel".into(),
                    position: compiled.min(EXPECTED_COMPILES),
                    length: Some(EXPECTED_COMPILES),
                });
            }
        }
    }
    let status = child.wait().map_err(MicrovmError::io("wait for make"))?;
    let errors = stderr
        .and_then(|thread| thread.join().ok())
        .unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    Err(MicrovmError::Build {
        what: "compiling the guest kernel".into(),
        detail: format!("{status}\n{}", super::tail(&errors, b"")),
    })
}

/// A package version as a directory name part.
fn sanitize(version: &str) -> String {
    version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_x86_64_elf_files_pass_as_kernels() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("text");
        std::fs::write(&text, "not a kernel at all, just text").unwrap();
        let error = check_vmlinux(&text).unwrap_err().to_string();
        assert!(error.contains("not an ELF file"), "{error}");
        let short = dir.path().join("short");
        std::fs::write(&short, "\x7fELF").unwrap();
        assert!(
            check_vmlinux(&short)
                .unwrap_err()
                .to_string()
                .contains("too short")
        );
        let mut elf32 = b"\x7fELF\x01".to_vec();
        elf32.resize(20, 0);
        let arm = dir.path().join("arm");
        std::fs::write(&arm, &elf32).unwrap();
        assert!(
            check_vmlinux(&arm)
                .unwrap_err()
                .to_string()
                .contains("64-bit x86")
        );
        let mut good = b"\x7fELF\x02\x01\x01".to_vec();
        good.resize(18, 0);
        good.extend_from_slice(&62u16.to_le_bytes());
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, &good).unwrap();
        check_vmlinux(&kernel).unwrap();
        assert!(
            check_vmlinux(&dir.path().join("missing"))
                .unwrap_err()
                .to_string()
                .contains("cannot be opened")
        );
    }

    #[test]
    fn every_option_line_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join(".config");
        std::fs::write(&config, "CONFIG_64BIT=y\n").unwrap();
        let error = check_config(&config).unwrap_err().to_string();
        assert!(error.contains("CONFIG_PVH=y"), "{error}");
        assert!(!error.contains("CONFIG_64BIT=y"), "{error}");
    }

    #[test]
    fn versions_become_directory_names() {
        assert_eq!(sanitize("6.1.192-3"), "6.1.192-3");
        assert_eq!(sanitize("1:6.1+x/y"), "1_6.1_x_y");
    }
}
