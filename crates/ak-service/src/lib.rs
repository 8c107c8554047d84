//! ak-service: the one set of operations every front end (CLI, HTTP, MCP) calls. It picks
//! the backend a spec names, provisions the sandbox, speaks to its agent and releases it.

mod action;
mod attach;
pub mod audit;
mod caller;
mod components;
pub mod detached;
mod error;
mod expiry;
mod files;
mod guest;
mod image_config;
mod images;
mod memory;
mod name_lock;
mod network;
pub mod output;
mod pause;
pub mod pool;
pub mod registry;
mod run;
mod sandboxes;
mod secrets;
mod session;
mod snapshot;
mod snapshots;
mod source;
mod volume_quota;
mod volumes;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ak_core::{Backend, BackendKind, BackendProbe};

pub use crate::action::{Action, Answer};
pub use crate::audit::{AuditEntry, AuditLog, Outcome};
pub use crate::caller::{Caller, CallerPolicy};
pub use crate::components::ComponentTimes;
pub use crate::error::{ErrorClass, ServiceError};
pub use crate::expiry::{MAX_TTL, check_ttl};
pub use crate::images::{ImageSetup, pull_options};
pub use crate::pool::{PoolConfig, PoolStatus, poolable};
pub use crate::registry::{Registry, SandboxRecord};
pub use crate::run::{Placement, settle_image};
pub use crate::session::{Collected, CommandSession, RunOutcome, TIMED_OUT_CODE, connect_agent};
pub use crate::snapshot::{SnapshotError, SnapshotInfo};
pub use crate::volumes::{VolumeInfo, VolumeUser};

/// The service: the registered backends, the registry of named sandboxes, and the
/// operations on them. One per process; every operation names its [`Caller`].
#[derive(Debug)]
pub struct Service {
    backends: BTreeMap<BackendKind, Arc<dyn Backend>>,
    registry_path: PathBuf,
    /// Opened on first use, so one-shot runs never pay for the database.
    registry: OnceLock<Result<Registry, String>>,
    /// What remote callers may ask for.
    policy: CallerPolicy,
    /// Warm pools, in hosts that keep them (the daemon, `serve`).
    pools: Option<Arc<pool::Pools>>,
    /// One-shot sandboxes being set up at once; sized apart from the async workers, which
    /// never do the set-up themselves in a long-lived host (see `offload_blocking`). Made
    /// on first use: sizing it by the CPUs reads the cgroup's CPU quota (~75 µs, perf), which
    /// a pooled `run`'s CLI, which sets nothing up, need not pay.
    setups: OnceLock<tokio::sync::Semaphore>,
    /// `setups`' size when set explicitly; else one per CPU.
    setup_limit: Option<usize>,
    /// Whether backend work (clone, mounts, cgroup writes) runs on blocking threads, so that
    /// a burst of set-ups cannot stall the async workers (`/health` keeps answering).
    /// Long-lived hosts turn it on; a one-shot CLI run does the work inline (no thread hop).
    offload_blocking: bool,
    /// Commands started detached, held until they end or their sandbox goes.
    detached: detached::Detached,
    /// Output held for callers at once, across every request of this service.
    output_budget: Arc<output::ByteBudget>,
    /// Where the image store is, when this service has one.
    images: Option<images::ImageSetup>,
    /// Opened on first use, like the registry.
    image_store: OnceLock<Result<ak_image::Store, String>>,
}

impl Service {
    /// A service over `backends` (the binary decides which exist in this build) whose
    /// named sandboxes are recorded in the database at `registry_path`.
    pub fn new(backends: Vec<Arc<dyn Backend>>, registry_path: PathBuf) -> Self {
        Service {
            backends: backends.into_iter().map(|b| (b.kind(), b)).collect(),
            registry_path,
            registry: OnceLock::new(),
            policy: CallerPolicy::host_default(),
            pools: None,
            setups: OnceLock::new(),
            setup_limit: None,
            offload_blocking: false,
            detached: detached::Detached::default(),
            output_budget: Arc::new(output::ByteBudget::new(output::SERVICE_OUTPUT_BUDGET)),
            images: None,
            image_store: OnceLock::new(),
        }
    }

    /// The same service with the image store `setup` describes.
    pub fn with_images(mut self, setup: images::ImageSetup) -> Self {
        self.images = Some(setup);
        self
    }

    /// The same service with `policy` for remote callers.
    pub fn with_policy(mut self, policy: CallerPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The same service as a long-lived host runs it: warm pools of `config` serve pooled
    /// runs, and backend work runs on blocking threads.
    pub fn serving(mut self, config: pool::PoolConfig) -> Self {
        self.pools = Some(Arc::new(pool::Pools::new(config)));
        self.offload_blocking = true;
        self
    }

    /// The same service with at most `limit` one-shot set-ups at once (at least one).
    pub fn with_setup_limit(mut self, limit: usize) -> Self {
        self.setup_limit = Some(limit.max(1));
        self.setups = OnceLock::new();
        self
    }

    /// The turns for one-shot set-ups (see `setups`).
    fn setups(&self) -> &tokio::sync::Semaphore {
        self.setups.get_or_init(|| {
            tokio::sync::Semaphore::new(self.setup_limit.unwrap_or_else(default_setup_limit))
        })
    }

    /// The budgets one request's captured output draws on: its own (shared by every
    /// command of the request, a batch included) and this service's.
    pub fn request_budgets(&self) -> Vec<Arc<output::ByteBudget>> {
        vec![
            Arc::new(output::ByteBudget::new(output::REQUEST_OUTPUT_BUDGET)),
            self.output_budget.clone(),
        ]
    }

    /// The warm pools, when this host keeps them.
    pub fn pools(&self) -> Option<&Arc<pool::Pools>> {
        self.pools.as_ref()
    }

    /// Runs `work` where backend work belongs: on a blocking thread in a long-lived host
    /// (it makes system calls that block: clone, mounts, cgroup writes, waits), inline
    /// otherwise.
    pub(crate) async fn offload<T, F>(&self, work: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        run_blocking(self.offload_blocking, work).await
    }

    /// A sandbox for `spec` from its backend, built where backend work belongs (see
    /// [`Service::offload`]).
    pub(crate) async fn create_sandbox(
        &self,
        spec: &ak_core::SandboxSpec,
        lifetime: ak_core::backend::Lifetime,
        named: Option<&str>,
    ) -> Result<Box<dyn ak_core::Sandbox>, ServiceError> {
        let backend = self.backend(spec.backend)?.clone();
        let mut spec = spec.clone();
        self.load_secret_values(&mut spec)?;
        let attachments = self.attach(&mut spec, lifetime, named).await?;
        // A caller that goes away while its sandbox is built (a client that hangs up) drops
        // this future, but an offloaded build goes on: the sandbox leaves the build owned, so
        // one nobody takes is destroyed rather than left running where nobody can reach it.
        let offload = self.offload_blocking;
        let owned = self
            .offload(async move {
                let sandbox = backend.create(&spec, lifetime).await?;
                Ok::<_, ak_core::BackendError>(session::Owned::new(sandbox, None, offload))
            })
            .await??;
        Ok(attach::Attached::wrap(owned.into_sandbox(), attachments))
    }

    /// Keeps pools topped up, releases used sandboxes and removes expired ones until the
    /// returned task is aborted or `stop` is notified (between passes, never inside one:
    /// a pass cut off mid-way could leave a sandbox half built that nobody releases).
    pub async fn maintain_until(
        self: Arc<Self>,
        every: std::time::Duration,
        reap_every: std::time::Duration,
        stop: Arc<tokio::sync::Notify>,
    ) {
        let mut tick = tokio::time::interval(every);
        let mut last_reap = std::time::Instant::now();
        loop {
            let short = async {
                match &self.pools {
                    Some(pools) => pools.short().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => {}
                () = short => {}
                () = stop.notified() => break,
            }
            if let Some(pools) = &self.pools {
                pools.maintain(&self).await;
            }
            if last_reap.elapsed() >= reap_every {
                last_reap = std::time::Instant::now();
                for name in self.reap_expired().await {
                    tracing::info!(%name, "removed the sandbox: its time to live ran out");
                }
            }
        }
    }

    /// Ends what a long-lived host holds: detached commands, then the pools (handed-out
    /// sandboxes get `grace` to finish).
    pub async fn shutdown(&self, grace: std::time::Duration) {
        self.detached.kill_all().await;
        if let Some(pools) = &self.pools {
            pools.shutdown(grace).await;
        }
    }

    /// The audit log beside the registry.
    pub fn audit_log(&self) -> Result<AuditLog, ServiceError> {
        Ok(AuditLog::in_dir(self.state_dir()?))
    }

    /// Appends an entry to the audit log. A log that cannot be written is reported in the
    /// process's log rather than failing the operation it describes, which already happened.
    pub fn record_audit(
        &self,
        caller: Caller,
        action: &str,
        sandbox: Option<&str>,
        outcome: Outcome,
        detail: Option<String>,
    ) {
        let entry = AuditEntry::new(caller.as_str(), action, sandbox, outcome, detail);
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
        caller: Caller,
        action: &str,
        sandbox: Option<&str>,
        detail: Option<String>,
        result: Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        match &result {
            Ok(_) => self.record_audit(caller, action, sandbox, Outcome::Ok, detail),
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
                self.record_audit(caller, action, sandbox, outcome, Some(detail));
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

/// Runs `work` on a blocking thread when `offload` is set (see [`Service::offload`]), inline
/// otherwise.
pub(crate) async fn run_blocking<T, F>(offload: bool, work: F) -> Result<T, ServiceError>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    if !offload {
        return Ok(work.await);
    }
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || runtime.block_on(work))
        .await
        .map_err(|e| ServiceError::State(format!("a blocking task failed: {e}")))
}

/// One-shot set-ups at once by default: one per CPU. Setting a sandbox up is CPU work, much
/// of it in the kernel, and more at once only makes each slower: with 64 clients on two
/// cores, 40 runs/s unlimited, 62 with twice the CPUs, 120 with one per CPU (see
/// docs/benchmarks.md). Further requests wait their turn, in order.
fn default_setup_limit() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
