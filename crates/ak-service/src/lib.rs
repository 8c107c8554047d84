//! ak-service: the one set of operations every front end (CLI, HTTP, MCP) calls. It picks
//! the backend a spec names, provisions the sandbox, speaks to its agent and releases it.

mod error;
mod run;

use std::collections::BTreeMap;
use std::sync::Arc;

use ak_core::{Backend, BackendKind, BackendProbe};

pub use crate::error::ServiceError;
pub use crate::run::{RunOutcome, RunSession};

/// The service: the registered backends and the operations on them.
#[derive(Debug, Clone)]
pub struct Service {
    backends: BTreeMap<BackendKind, Arc<dyn Backend>>,
}

impl Service {
    /// A service over `backends` (the binary decides which exist in this build).
    pub fn new(backends: Vec<Arc<dyn Backend>>) -> Self {
        Service {
            backends: backends.into_iter().map(|b| (b.kind(), b)).collect(),
        }
    }

    /// The backend of that kind; an explicit choice never falls back to another.
    pub fn backend(&self, kind: BackendKind) -> Result<&Arc<dyn Backend>, ServiceError> {
        self.backends
            .get(&kind)
            .ok_or(ServiceError::BackendNotBuilt(kind))
    }

    /// Every known backend's probe; those not in this build say so.
    pub fn status(&self) -> Vec<BackendProbe> {
        BackendKind::ALL
            .into_iter()
            .map(|kind| match self.backends.get(&kind) {
                Some(backend) => backend.probe(),
                None => BackendProbe {
                    backend: kind,
                    usable: false,
                    reason: "not implemented in this version of agentkernel".into(),
                    details: Vec::new(),
                },
            })
            .collect()
    }
}
