//! The outbound network of a gVisor sandbox: a fresh network namespace that the native
//! backend's helper (`slirp4netns`) gives a NAT'ed `tap0` before runsc starts, so runsc's
//! `--network=sandbox` finds the interface, its address and default route there and runs
//! its own network stack over it. The host's loopback stays out of reach
//! (`--disable-host-loopback`), as on the native backend.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use ak_native::network::{HelperKind, HelperTarget, NetworkHelper, SANDBOX_NAMESERVER};

use crate::error::GvisorError;

/// A network namespace made for one sandbox, held open until runsc has joined it.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
}

impl Netns {
    /// A new, empty network namespace. Made on a thread of its own: a thread's `unshare`
    /// of the network namespace changes only that thread, which then ends; the namespace
    /// lives on through the descriptor.
    pub fn new() -> Result<Netns, GvisorError> {
        let made = std::thread::spawn(|| -> std::io::Result<OwnedFd> {
            // SAFETY: only NEWNET: no file descriptor table is unshared.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }?;
            Ok(std::fs::File::open("/proc/thread-self/ns/net")?.into())
        })
        .join()
        .map_err(|_| GvisorError::Network("the namespace thread panicked".into()))?
        .map_err(|e| GvisorError::Network(format!("cannot make a network namespace: {e}")))?;
        Ok(Netns { fd: made })
    }

    /// A path that names the namespace while this value lives.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.fd.as_raw_fd()
        ))
    }
}

/// The helper of a one-shot sandbox: it ends when this value is dropped (its exit pipe
/// closes), also when this process is killed.
#[derive(Debug)]
pub struct OutboundNetwork {
    helper: NetworkHelper,
}

impl OutboundNetwork {
    /// Starts the helper `kind` for `netns` and waits until the interface is configured.
    pub fn start(netns: &Netns, kind: HelperKind<'_>) -> Result<OutboundNetwork, GvisorError> {
        let mut helper =
            NetworkHelper::start(HelperTarget::Netns(&netns.path()), kind).map_err(helper_error)?;
        helper.wait_ready().map_err(helper_error)?;
        Ok(OutboundNetwork { helper })
    }

    pub fn stop(self) {
        self.helper.stop();
    }
}

/// Starts the helper of a persistent sandbox, which outlives this process; returns its
/// `pid:start-time` for the release to end it.
pub fn start_detached(
    netns: &Netns,
    kind: HelperKind<'_>,
    log: &Path,
) -> Result<String, GvisorError> {
    let pid =
        ak_native::network::start_detached_in(&netns.path(), kind, log).map_err(helper_error)?;
    ak_core::process::identity(pid)
        .ok_or_else(|| GvisorError::Network("the network helper ended at once".into()))
}

/// The resolver configuration inside the sandbox: the helper's DNS forwarder.
pub fn resolv_conf() -> String {
    format!("nameserver {SANDBOX_NAMESERVER}\n")
}

fn helper_error(error: ak_native::NativeError) -> GvisorError {
    match error {
        ak_native::NativeError::Unavailable(reason) => GvisorError::Unavailable(reason),
        other => GvisorError::Network(other.to_string()),
    }
}
