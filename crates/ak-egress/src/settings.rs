//! What a backend needs to put the egress helper in front of a sandbox: where the helper
//! is, the resolver it asks, the state directory whose audit log gets its verdicts; one
//! set per host, shared by every backend that enforces allowlists.

use std::path::{Path, PathBuf};

use ak_core::egress::Allowlist;

use crate::{EgressError, PolicyFile};

#[derive(Debug, Clone)]
pub struct Egress {
    pub helper: PathBuf,
    /// The resolver the helper asks (default: the host's).
    pub upstream_dns: Option<std::net::SocketAddr>,
    pub audit_dir: Option<PathBuf>,
}

impl Egress {
    /// The helper beside `agent` (both are built into the same directory), the host's
    /// resolver, no audit log.
    pub fn beside(agent: &Path) -> Egress {
        Egress {
            helper: agent.with_file_name("ak-egress"),
            upstream_dns: None,
            audit_dir: None,
        }
    }

    /// Writes the helper's policy file for `allowlist` at `path`.
    pub fn write_policy(&self, path: &Path, allowlist: &Allowlist) -> Result<(), EgressError> {
        PolicyFile {
            allowlist: allowlist.clone(),
            upstream_dns: self.upstream_dns,
        }
        .write(path)
    }
}
