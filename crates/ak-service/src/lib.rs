//! ak-service: the one set of operations every front end (CLI, HTTP, MCP) calls. It picks
//! the backend a spec names, provisions the sandbox, speaks to its agent and releases it.

pub mod audit;
mod components;
mod error;
mod expiry;
mod files;
pub mod pool;
pub mod registry;
mod run;
mod sandboxes;
mod session;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ak_core::{Backend, BackendKind, BackendProbe};

pub use crate::audit::{AuditEntry, AuditLog, Outcome};
pub use crate::components::ComponentTimes;
pub use crate::error::ServiceError;
pub use crate::registry::{Registry, SandboxRecord};
pub use crate::run::settle_image;
pub use crate::session::{CommandSession, RunOutcome, connect_agent};

/// The service: the registered backends, the registry of named sandboxes, and the
/// operations on them.
#[derive(Debug)]
pub struct Service {
    backends: BTreeMap<BackendKind, Arc<dyn Backend>>,
    registry_path: PathBuf,
    /// Opened on first use, so one-shot runs never pay for the database.
    registry: OnceLock<Result<Registry, String>>,
    /// Who the audit log names as the caller (`cli`, `api`, `mcp`).
    audit_source: &'static str,
}

impl Service {
    /// A service over `backends` (the binary decides which exist in this build) whose
    /// named sandboxes are recorded in the database at `registry_path`.
    pub fn new(backends: Vec<Arc<dyn Backend>>, registry_path: PathBuf) -> Self {
        Service {
            backends: backends.into_iter().map(|b| (b.kind(), b)).collect(),
            registry_path,
            registry: OnceLock::new(),
            audit_source: "cli",
        }
    }

    /// The same service, naming `source` as the caller in the audit log.
    pub fn with_audit_source(mut self, source: &'static str) -> Self {
        self.audit_source = source;
        self
    }

    /// The audit log beside the registry.
    pub fn audit_log(&self) -> Result<AuditLog, ServiceError> {
        Ok(AuditLog::in_dir(self.state_dir()?))
    }

    /// Appends an entry to the audit log. A log that cannot be written is reported in the
    /// process's log rather than failing the operation it describes, which already happened.
    pub fn record_audit(
        &self,
        action: &str,
        sandbox: Option<&str>,
        outcome: Outcome,
        detail: Option<String>,
    ) {
        let entry = AuditEntry::new(self.audit_source, action, sandbox, outcome, detail);
        let written = self.audit_log().and_then(|log| {
            log.append(&entry)
                .map_err(|e| ServiceError::State(e.to_string()))
        });
        if let Err(error) = written {
            tracing::error!("cannot write the audit log: {error}");
        }
    }

    /// Records how `result` of `action` ended and passes it on.
    pub(crate) fn audited<T>(
        &self,
        action: &str,
        sandbox: Option<&str>,
        detail: Option<String>,
        result: Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        match &result {
            Ok(_) => self.record_audit(action, sandbox, Outcome::Ok, detail),
            Err(error) => {
                let outcome = if error.is_refusal() {
                    Outcome::Refused
                } else {
                    Outcome::Error
                };
                let detail = match detail {
                    Some(detail) => format!("{detail}: {error}"),
                    None => error.to_string(),
                };
                self.record_audit(action, sandbox, outcome, Some(detail));
            }
        }
        result
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

    /// What the backend of that kind can do; nothing when it is not in this build.
    pub fn capabilities(&self, kind: BackendKind) -> ak_core::backend::Capabilities {
        self.backends
            .get(&kind)
            .map(|backend| backend.capabilities())
            .unwrap_or_default()
    }

    /// Whether this build has the backend of that kind.
    pub fn has_backend(&self, kind: BackendKind) -> bool {
        self.backends.contains_key(&kind)
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
