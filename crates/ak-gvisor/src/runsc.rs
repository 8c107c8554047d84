//! The `runsc` executable: finding it, what it supports (probed once per binary and cached
//! on disk, since asking costs ~20 ms a question and every cold `run` would ask), and the
//! command lines this backend runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use ak_core::config::{GvisorOptions, GvisorPlatform};
use ak_core::kvm::KvmSupport;
use serde::{Deserialize, Serialize};

use crate::error::GvisorError;

/// The oldest runsc release this backend accepts (a date, as runsc numbers its releases).
/// Measured: Debian 12's runsc 20221219 rejects `statx` with `AT_NO_AUTOMOUNT`, so Debian's
/// own `ls` fails inside it; Debian 13's 20240729 runs everything our tests run.
pub const MIN_RELEASE: u32 = 20230101;

/// What one runsc binary is and supports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunscInfo {
    /// As `runsc --version` prints its first line.
    pub version: String,
    /// The release date in the version (`20240729`), when there is one.
    pub release: Option<u32>,
    pub platforms: Vec<GvisorPlatform>,
}

/// A usable runsc, with the platform chosen for this host.
#[derive(Debug, Clone)]
pub struct Runsc {
    pub path: PathBuf,
    pub info: RunscInfo,
    pub platform: GvisorPlatform,
    /// Why that platform, for `status`.
    pub platform_reason: String,
}

/// The configured runsc, else `runsc` on PATH.
pub fn locate(options: &GvisorOptions) -> Result<PathBuf, GvisorError> {
    match &options.runsc {
        Some(path) if ak_core::process::is_executable(path) => Ok(path.clone()),
        Some(path) => Err(GvisorError::Unavailable(format!(
            "[gvisor] runsc = {} is not an executable file",
            path.display()
        ))),
        None => ak_core::process::find_on_path("runsc").ok_or_else(|| {
            GvisorError::Unavailable(
                "runsc is not installed (Debian 13: apt install runsc; or gVisor's release \
                 binary on PATH, or [gvisor] runsc = PATH in the config)"
                    .into(),
            )
        }),
    }
}

impl Runsc {
    /// Finds runsc, learns what it supports (from `cache_dir` when it has not changed since)
    /// and chooses the platform.
    pub fn discover(options: &GvisorOptions, cache_dir: &Path) -> Result<Runsc, GvisorError> {
        let path = locate(options)?;
        let info = cached_info(&path, cache_dir)?;
        match info.release {
            Some(release) if release < MIN_RELEASE => {
                return Err(GvisorError::Unavailable(format!(
                    "{} is runsc {release}, older than {MIN_RELEASE}: its system call \
                     emulation breaks ordinary programs (`ls` fails); install a newer runsc \
                     (Debian 13's package, or gVisor's release binary)",
                    path.display()
                )));
            }
            _ => {}
        }
        let (platform, platform_reason) = choose_platform(&info, options.platform)?;
        Ok(Runsc {
            path,
            info,
            platform,
            platform_reason,
        })
    }

    /// `runsc` with the flags every command of ours passes: its state under `state_root`.
    pub fn command(&self, state_root: &Path) -> Command {
        let mut command = Command::new(&self.path);
        command.arg(format!("--root={}", state_root.display()));
        command
    }
}

/// Chooses the platform: the configured one if this runsc has it (and, for `kvm`, if KVM
/// runs ordinary guests here), else systrap where this runsc has it, else ptrace.
fn choose_platform(
    info: &RunscInfo,
    configured: Option<GvisorPlatform>,
) -> Result<(GvisorPlatform, String), GvisorError> {
    if let Some(platform) = configured {
        if !info.platforms.contains(&platform) {
            return Err(GvisorError::Unavailable(format!(
                "[gvisor] platform = \"{platform}\" is not supported by runsc {}",
                info.version
            )));
        }
        if platform == GvisorPlatform::Kvm && KvmSupport::detect() != KvmSupport::Full {
            return Err(GvisorError::Unavailable(format!(
                "[gvisor] platform = \"kvm\" needs KVM that runs ordinary guests; here KVM is {}",
                KvmSupport::detect().describe()
            )));
        }
        return Ok((platform, "set in [gvisor] platform".into()));
    }
    if info.platforms.contains(&GvisorPlatform::Systrap) {
        return Ok((
            GvisorPlatform::Systrap,
            "the fastest platform without KVM; set [gvisor] platform = \"kvm\" where KVM runs \
             ordinary guests"
                .into(),
        ));
    }
    Ok((
        GvisorPlatform::Ptrace,
        format!("runsc {} has no systrap platform", info.version),
    ))
}

/// What the cache file records: the binary it describes, by identity, and its info.
#[derive(Debug, Serialize, Deserialize)]
struct CacheEntry {
    path: PathBuf,
    identity: (u64, u64, i64, i64),
    info: RunscInfo,
}

/// The binary's identity for the cache: a replaced or upgraded runsc has another one.
fn identity(path: &Path) -> std::io::Result<(u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino(), meta.mtime(), meta.mtime_nsec()))
}

fn cached_info(path: &Path, cache_dir: &Path) -> Result<RunscInfo, GvisorError> {
    let identity = identity(path).map_err(GvisorError::io(format!("stat {}", path.display())))?;
    let cache = cache_dir.join("runsc.json");
    if let Ok(text) = std::fs::read_to_string(&cache)
        && let Ok(entry) = serde_json::from_str::<CacheEntry>(&text)
        && entry.path == path
        && entry.identity == identity
    {
        return Ok(entry.info);
    }
    let info = ask(path)?;
    let entry = CacheEntry {
        path: path.to_path_buf(),
        identity,
        info: info.clone(),
    };
    // Best effort: without the cache the next process asks again.
    if let Ok(text) = serde_json::to_string(&entry) {
        let staged = cache_dir.join(format!(".runsc.json.{}", std::process::id()));
        if std::fs::write(&staged, text).is_ok() {
            let _ = std::fs::rename(&staged, &cache);
        }
    }
    Ok(info)
}

/// Asks the binary for its version and platforms.
fn ask(path: &Path) -> Result<RunscInfo, GvisorError> {
    let output = |args: &[&str]| -> Result<String, GvisorError> {
        let out = Command::new(path)
            .args(args)
            .output()
            .map_err(GvisorError::io(format!("run {}", path.display())))?;
        if !out.status.success() {
            return Err(GvisorError::Runsc {
                command: args.join(" "),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        // `flags` writes to stderr, `--version` to stdout.
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok(text)
    };
    let version_text = output(&["--version"])?;
    let flags = output(&["flags"])?;
    Ok(parse_info(&version_text, &flags))
}

/// Parses `runsc --version` and `runsc flags` output.
fn parse_info(version_text: &str, flags: &str) -> RunscInfo {
    let version = version_text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("runsc version")
        .trim()
        .to_string();
    RunscInfo {
        release: release_date(&version),
        platforms: platforms(flags),
        version,
    }
}

/// The first run of eight digits that reads as a date (`0.0~20240729.0`,
/// `release-20240729.0`).
fn release_date(version: &str) -> Option<u32> {
    let bytes = version.as_bytes();
    (0..bytes.len().saturating_sub(7)).find_map(|start| {
        let digits = &version[start..start + 8];
        let bounded = (start == 0 || !bytes[start - 1].is_ascii_digit())
            && bytes.get(start + 8).is_none_or(|b| !b.is_ascii_digit());
        (bounded && digits.bytes().all(|b| b.is_ascii_digit()) && digits.starts_with("20"))
            .then(|| digits.parse().ok())
            .flatten()
    })
}

/// The platforms `runsc flags` lists for `-platform` ("specifies which platform to use:
/// systrap (default), ptrace, kvm.").
fn platforms(flags: &str) -> Vec<GvisorPlatform> {
    let mut lines = flags.lines();
    let mut found = Vec::new();
    while let Some(line) = lines.next() {
        if line.trim_start().starts_with("-platform ") {
            let description = lines.next().unwrap_or_default();
            for (name, platform) in [
                ("systrap", GvisorPlatform::Systrap),
                ("ptrace", GvisorPlatform::Ptrace),
                ("kvm", GvisorPlatform::Kvm),
            ] {
                if description.contains(name) {
                    found.push(platform);
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS_2024: &str = "  -pidfile string\n  -platform string\n    \tspecifies which platform to use: systrap (default), ptrace, kvm. (default \"systrap\")\n  -platform_device_path string\n";
    const FLAGS_2022: &str = "  -platform string\n    \tspecifies which platform to use: ptrace (default), kvm. (default \"ptrace\")\n";

    #[test]
    fn versions_and_platforms_are_read() {
        let info = parse_info("runsc version 0.0~20240729.0\nspec: 1.2.0\n", FLAGS_2024);
        assert_eq!(info.version, "0.0~20240729.0");
        assert_eq!(info.release, Some(20240729));
        assert_eq!(
            info.platforms,
            [
                GvisorPlatform::Systrap,
                GvisorPlatform::Ptrace,
                GvisorPlatform::Kvm
            ]
        );
        let old = parse_info("runsc version release-20221219.0\n", FLAGS_2022);
        assert_eq!(old.release, Some(20221219));
        assert_eq!(old.platforms, [GvisorPlatform::Ptrace, GvisorPlatform::Kvm]);
        assert_eq!(release_date("custom-build"), None);
        assert_eq!(release_date("1234567890"), None);
    }

    #[test]
    fn systrap_is_preferred_then_ptrace_and_kvm_only_when_asked() {
        let info = parse_info("runsc version 0.0~20240729.0", FLAGS_2024);
        assert_eq!(
            choose_platform(&info, None).unwrap().0,
            GvisorPlatform::Systrap
        );
        let old = parse_info("runsc version 0.0~20221219.0", FLAGS_2022);
        assert_eq!(
            choose_platform(&old, None).unwrap().0,
            GvisorPlatform::Ptrace
        );
        let refused = choose_platform(&old, Some(GvisorPlatform::Systrap)).unwrap_err();
        assert!(refused.to_string().contains("not supported"), "{refused}");
        assert_eq!(
            choose_platform(&info, Some(GvisorPlatform::Ptrace))
                .unwrap()
                .0,
            GvisorPlatform::Ptrace
        );
    }
}
