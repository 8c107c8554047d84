//! ak-service: the one set of operations every front end (CLI, HTTP, MCP) calls. It picks
//! the backend a spec names, provisions the sandbox, speaks to its agent and releases it.

mod components;
mod error;
pub mod pool;
pub mod registry;
mod run;
mod sandboxes;
mod session;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ak_core::{Backend, BackendKind, BackendProbe};

pub use crate::components::ComponentTimes;
pub use crate::error::ServiceError;
pub use crate::registry::{Registry, SandboxRecord};
pub use crate::run::settle_image;
pub use crate::session::{CommandSession, RunOutcome};

/// The service: the registered backends, the registry of named sandboxes, and the
/// operations on them.
#[derive(Debug)]
pub struct Service {
    backends: BTreeMap<BackendKind, Arc<dyn Backend>>,
    registry_path: PathBuf,
    /// Opened on first use, so one-shot runs never pay for the database.
    registry: OnceLock<Result<Registry, String>>,
}

impl Service {
    /// A service over `backends` (the binary decides which exist in this build) whose
    /// named sandboxes are recorded in the database at `registry_path`.
    pub fn new(backends: Vec<Arc<dyn Backend>>, registry_path: PathBuf) -> Self {
        Service {
            backends: backends.into_iter().map(|b| (b.kind(), b)).collect(),
            registry_path,
            registry: OnceLock::new(),
        }
    }

    /// The registry of named sandboxes.
    pub fn registry(&self) -> Result<&Registry, ServiceError> {
        self.registry
            .get_or_init(|| Registry::open(&self.registry_path).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| ServiceError::State(e.clone()))
    }

    /// The directory holding the registry, locks and service-owned sandbox directories.
    pub fn state_dir(&self) -> Result<&Path, ServiceError> {
        self.registry_path.parent().ok_or_else(|| {
            ServiceError::State(format!(
                "{} has no parent directory",
                self.registry_path.display()
            ))
        })
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
