//! What the host's KVM can run: read by the native backend's `status` and by the microvm
//! backend, which picks hardware acceleration or emulation from it.

use std::fs;
use std::path::Path;

/// What `/dev/kvm` can do for this process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum KvmSupport {
    Absent,
    NotAccessible(String),
    /// Hardware virtualisation (vmx or svm): any guest kernel runs.
    Full,
    /// KVM without vmx/svm, e.g. `kvm_pvm`: only guests built for paravirtualisation run.
    ParavirtOnly,
}

impl KvmSupport {
    /// What `/dev/kvm` can do here.
    pub fn detect() -> KvmSupport {
        let dev = Path::new("/dev/kvm");
        if !dev.exists() {
            return KvmSupport::Absent;
        }
        if let Err(e) = fs::OpenOptions::new().read(true).write(true).open(dev) {
            return KvmSupport::NotAccessible(format!("cannot open /dev/kvm read-write: {e}"));
        }
        let (vmx, svm) = parse_cpu_flags(&fs::read_to_string("/proc/cpuinfo").unwrap_or_default());
        // Other architectures have no such flags; an openable /dev/kvm is the whole story there.
        if vmx || svm || !cfg!(any(target_arch = "x86_64", target_arch = "x86")) {
            return KvmSupport::Full;
        }
        let pvm = Path::new("/sys/module/kvm_pvm").exists()
            || fs::read_to_string("/proc/modules").is_ok_and(|m| parse_modules_has_pvm(&m));
        if !pvm {
            tracing::debug!(
                "/dev/kvm works without vmx/svm and without kvm_pvm; assuming paravirtual only"
            );
        }
        KvmSupport::ParavirtOnly
    }

    /// One line for `agentkernel status`.
    pub fn describe(&self) -> String {
        match self {
            KvmSupport::Absent => "absent (no /dev/kvm)".into(),
            KvmSupport::NotAccessible(reason) => format!("present but not usable: {reason}"),
            KvmSupport::Full => "hardware virtualisation (vmx/svm)".into(),
            KvmSupport::ParavirtOnly => {
                "KVM present but only for paravirtualised guests (kvm_pvm, no vmx/svm)".into()
            }
        }
    }
}

/// Whether the `flags` line of `/proc/cpuinfo` lists `(vmx, svm)`: Intel VT-x, AMD-V.
fn parse_cpu_flags(cpuinfo: &str) -> (bool, bool) {
    // Only the `flags` key: newer kernels add a `vmx flags` line with VMX sub-features.
    let flags = cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "flags").then_some(value)
    });
    let has = |flag: &str| flags.is_some_and(|f| f.split_whitespace().any(|f| f == flag));
    (has("vmx"), has("svm"))
}

/// Whether `/proc/modules` lists the `kvm_pvm` module.
fn parse_modules_has_pvm(modules: &str) -> bool {
    modules
        .lines()
        .any(|line| line.split_whitespace().next() == Some("kvm_pvm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme de pse tsc msr vmx sse2\nvmx flags\t: vnmi preemption_timer\n";
    const AMD: &str = "processor\t: 0\nflags\t\t: fpu vme svm sse2 lm\n";
    const GUEST: &str = "processor\t: 0\nflags\t\t: fpu vme hypervisor sse2\nvmx flags\t: vnmi\n";

    #[test]
    fn cpu_flags() {
        assert_eq!(parse_cpu_flags(INTEL), (true, false));
        assert_eq!(parse_cpu_flags(AMD), (false, true));
        // The `vmx flags` line alone must not count as vmx.
        assert_eq!(parse_cpu_flags(GUEST), (false, false));
        assert_eq!(parse_cpu_flags(""), (false, false));
        assert_eq!(parse_cpu_flags("flags : fpu vmxe svm2\n"), (false, false));
    }

    #[test]
    fn pvm_module() {
        let modules = "kvm_pvm 65536 0 - Live 0x0\nkvm 1212416 1 kvm_pvm, Live 0x0\n";
        assert!(parse_modules_has_pvm(modules));
        assert!(!parse_modules_has_pvm(
            "kvm_intel 1 0 - Live 0x0\nkvm 1 1 kvm_intel, Live 0x0\n"
        ));
    }

    #[test]
    fn kvm_descriptions() {
        assert_eq!(
            KvmSupport::ParavirtOnly.describe(),
            "KVM present but only for paravirtualised guests (kvm_pvm, no vmx/svm)"
        );
        assert!(
            KvmSupport::NotAccessible("EACCES".into())
                .describe()
                .contains("EACCES")
        );
    }
}
