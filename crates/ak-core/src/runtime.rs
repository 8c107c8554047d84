//! Where backends keep runtime state on the host (sockets, locks): one rule for all.

use std::path::{Path, PathBuf};

use crate::backend::BackendKind;

/// The program that gives native sandboxes outbound network: host processes of this name
/// are the native backend's network helpers (leak checks look for them too).
pub const NATIVE_NETWORK_HELPER: &str = "slirp4netns";

/// The cgroup (in every hierarchy) under which runsc makes each gVisor sandbox's cgroup
/// (leak checks look there too).
pub const GVISOR_CGROUP_PARENT: &str = "agentkernel-gvisor";

/// Where `kind`'s sandboxes keep their runtime directories: `agentkernel` for the native
/// backend, `agentkernel-<backend>` for the others (see [`runtime_base`]).
pub fn backend_runtime_base(kind: BackendKind) -> PathBuf {
    match kind {
        BackendKind::Native => runtime_base("agentkernel"),
        other => runtime_base(&format!("agentkernel-{other}")),
    }
}

/// The base directory named `name` for this user's runtime state: `/run/NAME` for root,
/// `$XDG_RUNTIME_DIR/NAME` for others, or `/tmp/NAME-UID` without a runtime directory.
pub fn runtime_base(name: &str) -> PathBuf {
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        return Path::new("/run").join(name);
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if Path::new(&dir).is_dir() => PathBuf::from(dir).join(name),
        _ => std::env::temp_dir().join(format!("{name}-{}", uid.as_raw())),
    }
}
