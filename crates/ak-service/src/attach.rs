//! What the service adds to a sandbox just before its backend builds it: its volumes as
//! mounts, and for a one-shot sandbox with a source, a workdir of its own holding the
//! clone. A one-shot sandbox carries these along ([`Attached`]) and lets go of them when
//! it ends: the volumes' locks, then the cloned workdir.

use std::path::PathBuf;

use ak_core::backend::{Lifetime, SandboxHandle, SandboxUsage};
use ak_core::{BackendError, Mount, Sandbox, SandboxSpec, Transport};

use crate::Service;
use crate::error::ServiceError;
use crate::volumes::VolumeLease;

/// What a one-shot sandbox holds on to while it lives.
#[derive(Debug, Default)]
pub(crate) struct Attachments {
    volumes: VolumeLease,
    /// The sandbox's own directory under the state directory, holding its cloned
    /// workdir: removed once the sandbox is gone.
    scratch: Option<PathBuf>,
}

impl Attachments {
    fn is_empty(&self) -> bool {
        self.volumes.is_empty() && self.scratch.is_none()
    }
}

impl Drop for Attachments {
    fn drop(&mut self) {
        if let Some(dir) = self.scratch.take()
            && let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {e}", dir.display());
        }
    }
}

impl Service {
    /// Adds `spec`'s volumes (and, for a one-shot sandbox, its cloned source) to its
    /// mounts. `named`: the named sandbox being started (its source was cloned when it was
    /// created).
    pub(crate) async fn attach(
        &self,
        spec: &mut SandboxSpec,
        lifetime: Lifetime,
        named: Option<&str>,
    ) -> Result<Attachments, ServiceError> {
        let backend = self.backend(spec.backend)?.clone();
        let root_owner = backend.root_owner_of(spec);
        let mut attachments = Attachments {
            volumes: self.attach_volumes(spec, named, root_owner)?,
            scratch: None,
        };
        if lifetime == Lifetime::Ephemeral
            && let Some(source) = spec.source.clone()
        {
            let (workspace, _) = self.make_workspace(&spec.id, root_owner, false)?;
            attachments.scratch = Some(self.host_dir_of(&spec.id)?);
            crate::source::clone_into(&source, &workspace, root_owner).await?;
            spec.mounts.retain(|m| m.target != spec.workdir);
            spec.mounts.push(Mount {
                host: workspace,
                target: spec.workdir.clone(),
                writable: true,
            });
        }
        Ok(attachments)
    }
}

/// A one-shot sandbox and what it holds on to; everything else is the sandbox's own.
#[derive(Debug)]
pub(crate) struct Attached {
    // Declared first: dropped (the sandbox ended) before its attachments go.
    sandbox: Box<dyn Sandbox>,
    attachments: Attachments,
}

impl Attached {
    /// `sandbox` as it is when it holds nothing, else wrapped with what it holds.
    pub(crate) fn wrap(sandbox: Box<dyn Sandbox>, attachments: Attachments) -> Box<dyn Sandbox> {
        if attachments.is_empty() {
            sandbox
        } else {
            Box::new(Attached {
                sandbox,
                attachments,
            })
        }
    }
}

#[async_trait::async_trait]
impl Sandbox for Attached {
    fn id(&self) -> &str {
        self.sandbox.id()
    }

    fn handle(&self) -> SandboxHandle {
        self.sandbox.handle()
    }

    async fn connect(&mut self) -> Result<Box<dyn Transport>, BackendError> {
        self.sandbox.connect().await
    }

    async fn destroy(&mut self) -> Result<SandboxUsage, BackendError> {
        let usage = self.sandbox.destroy().await?;
        // Gone for good: what it held goes now rather than when the value is dropped.
        self.attachments = Attachments::default();
        Ok(usage)
    }

    fn take_transport_fd(&mut self) -> Result<std::os::fd::OwnedFd, BackendError> {
        self.sandbox.take_transport_fd()
    }

    fn is_running(&self) -> bool {
        self.sandbox.is_running()
    }

    fn boot_phases(&self) -> Vec<(&'static str, std::time::Duration)> {
        self.sandbox.boot_phases()
    }

    fn detach(self: Box<Self>) {
        // Only persistent sandboxes detach, and they hold nothing: the attachments go.
        let Attached { sandbox, .. } = *self;
        sandbox.detach();
    }
}
