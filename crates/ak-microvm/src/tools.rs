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
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>());
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .map(|dir| dir.join("bin"));
    on_path
        .chain(cargo_bin)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    rustix::fs::access(path, rustix::fs::Access::EXEC_OK).is_ok() && path.is_file()
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

/// How the host's KVM can serve our guests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kvm {
    /// `/dev/kvm` opens and the CPU has hardware virtualisation: ordinary guests run.
    Usable,
    /// `/dev/kvm` exists but is the PVM module, which runs only paravirtualised guests.
    ParavirtOnly,
    /// No usable KVM, with the reason.
    Absent(String),
}

impl Kvm {
    pub fn detect() -> Kvm {
        let kvm = Path::new("/dev/kvm");
        if !kvm.exists() {
            return Kvm::Absent("/dev/kvm does not exist".into());
        }
        if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(kvm) {
            return Kvm::Absent(format!("/dev/kvm cannot be opened: {e}"));
        }
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let hardware = cpuinfo
            .lines()
            .filter(|line| line.starts_with("flags"))
            .any(|line| line.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        if hardware {
            Kvm::Usable
        } else if Path::new("/sys/module/kvm_pvm").exists() {
            Kvm::ParavirtOnly
        } else {
            Kvm::Absent("the CPU shows no vmx or svm flag".into())
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Kvm::Usable => "usable".into(),
            Kvm::ParavirtOnly => {
                "present but only for paravirtualised guests (the kvm_pvm module; no vmx/svm flag): QEMU emulates (TCG)".into()
            }
            Kvm::Absent(reason) => format!("not usable ({reason}): QEMU emulates (TCG)"),
        }
    }
}

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
