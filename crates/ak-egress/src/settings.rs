//! What a backend needs to put the egress helper in front of a sandbox: where the helper
//! is, the resolver it asks, the state directory whose audit log gets its verdicts; one
//! set per host, shared by every backend that enforces allowlists.

use std::path::{Path, PathBuf};

use ak_core::egress::Allowlist;
use ak_core::secrets::OnLeak;

use crate::secrets::SecretPolicy;
use crate::{EgressError, PolicyFile};

#[derive(Debug, Clone)]
pub struct Egress {
    pub helper: PathBuf,
    /// The resolver the helper asks (default: the host's).
    pub upstream_dns: Option<std::net::SocketAddr>,
    pub audit_dir: Option<PathBuf>,
    /// What a secret's leak leads to (`[network] on_leak`).
    pub on_leak: OnLeak,
    /// A PEM file of roots trusted for secret hosts besides the host's (`[network]
    /// upstream_ca`).
    pub upstream_ca: Option<PathBuf>,
}

impl Egress {
    /// The helper beside `agent` (both are built into the same directory), the host's
    /// resolver, no audit log.
    pub fn beside(agent: &Path) -> Egress {
        Egress {
            helper: agent.with_file_name("ak-egress"),
            upstream_dns: None,
            audit_dir: None,
            on_leak: OnLeak::default(),
            upstream_ca: None,
        }
    }

    /// Writes the helper's policy file for `allowlist` (and `secrets`, with their values:
    /// the file is its owner's only) at `path`.
    pub fn write_policy(
        &self,
        path: &Path,
        allowlist: &Allowlist,
        secrets: Option<SecretPolicy>,
    ) -> Result<(), EgressError> {
        PolicyFile {
            allowlist: allowlist.clone(),
            upstream_dns: self.upstream_dns,
            secrets,
        }
        .write(path)
    }
}
