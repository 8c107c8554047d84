//! Where the backend's programs and built artifacts live: the hypervisors and the vsock
//! daemon on the host, and the cache of guest kernels, base images and initramfs files.

use std::path::{Path, PathBuf};

use crate::error::MicrovmError;

/// Environment variable overriding the cache directory (tests, CI).
pub const CACHE_ENV: &str = "AGENTKERNEL_MICROVM_CACHE";

/// The cache of built guest artifacts: `$AGENTKERNEL_MICROVM_CACHE`, else
/// `/var/cache/agentkernel/microvm` for root and `~/.cache/agentkernel/microvm` for others.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_ENV) {
        return PathBuf::from(dir);
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/cache/agentkernel/microvm");
    }
    dirs_cache()
        .unwrap_or_else(std::env::temp_dir)
        .join("agentkernel/microvm")
}

fn dirs_cache() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
}

/// `program` on `PATH`, or in cargo's bin directory (where `cargo install` puts the vsock
/// daemon).
pub fn find_program(program: &str) -> Option<PathBuf> {
    ak_core::process::find_on_path(program).or_else(|| {
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))?;
        Some(cargo_home.join("bin").join(program))
            .filter(|candidate| ak_core::process::is_executable(candidate))
    })
}

/// `program`, or an error that says how to install it.
pub fn require_program(program: &str, hint: &str) -> Result<PathBuf, MicrovmError> {
    find_program(program).ok_or_else(|| MicrovmError::MissingTool {
        program: program.into(),
        hint: hint.into(),
    })
}

pub const QEMU: &str = "qemu-system-x86_64";
pub const QEMU_HINT: &str = "install Debian's qemu-system-x86 package";
pub const VSOCK_DAEMON: &str = "vhost-device-vsock";
pub const VSOCK_DAEMON_HINT: &str =
    "`agentkernel setup` installs it with `cargo install vhost-device-vsock`";
pub const FIRECRACKER: &str = "firecracker";
pub const FIRECRACKER_HINT: &str = "Firecracker is not a Debian package: put its release binary on PATH, or set [microvm] firecracker = \"/path/to/firecracker\"";

/// The host's TSC frequency in kHz, from `/proc/cpuinfo`: given to the guest kernel so
/// that it does not calibrate the TSC, which under emulation sometimes hangs.
pub fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find(|line| line.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}
