//! Warm pools: sandboxes created ahead of time, never used, handed out once. A handed-out
//! sandbox is destroyed when its command is done (its agent exits when the caller closes
//! the connection) and replaced in the background; it is never given to anyone else.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ak_core::backend::Lifetime;
use ak_core::spec::new_sandbox_id;
use ak_core::{Sandbox, SandboxSpec};
use serde::{Deserialize, Serialize};

use crate::Service;
use crate::error::ServiceError;

/// Sizes of the pools; defaults that suit a laptop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Spares kept ready per pool.
    pub min_warm: usize,
    /// Spares a pool may hold at most.
    pub max_warm: usize,
    /// Sandboxes (spares and handed out) across all pools, so a burst cannot exhaust the host.
    pub max_total: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            min_warm: 2,
            max_warm: 4,
            max_total: 64,
        }
    }
}

/// What `daemon status` shows of one pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// The pool's key: backend, image, profile and limits.
    pub pool: String,
    pub warm: usize,
    pub in_use: usize,
    pub created: u64,
    pub hits: u64,
    pub misses: u64,
    /// Mean time to hand a sandbox out, in milliseconds.
    pub average_handout_ms: f64,
    /// Why the last spare could not be built, while the pool backs off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the pool tries to build a spare again, in milliseconds from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
}

/// A sandbox handed out: the connection to its agent and its id.
#[derive(Debug)]
pub struct HandedOut {
    pub sandbox_id: String,
    pub transport: OwnedFd,
    pub hit: bool,
}

#[derive(Debug, Default)]
struct Pool {
    template: Option<SandboxSpec>,
    spares: VecDeque<Box<dyn Sandbox>>,
    /// Handed out to another process (the daemon's CLI clients): released once their
    /// agent has exited.
    in_use: Vec<Box<dyn Sandbox>>,
    /// Taken by a command session in this process, which releases it (see [`Slot`]).
    taken: usize,
    /// Failures to build a spare in a row, and when to try again: a pool that cannot
    /// build (an image that cannot be used) backs off instead of retrying at full speed.
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
    /// Sandboxes being built for this pool right now: they count against `max_total`
    /// from the moment the decision to build them is taken.
    building: usize,
    created: u64,
    hits: u64,
    misses: u64,
    handout_total: Duration,
}

/// The warm pools of one service.
#[derive(Debug)]
pub struct Pools {
    config: PoolConfig,
    pools: Mutex<HashMap<String, Pool>>,
    /// Woken when sandboxes are released, for callers waiting on `max_total`.
    released: tokio::sync::Notify,
}

/// Room for one sandbox being built for pool `key`, counted against `max_total` until
/// dropped: also when the build's future is dropped half-way (a caller gone), so room is
/// never lost.
struct Reservation<'a> {
    pools: &'a Pools,
    key: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(pool) = lock(&self.pools.pools).get_mut(&self.key) {
            pool.building = pool.building.saturating_sub(1);
        }
    }
}

/// Room that a sandbox taken by a command session of this process holds in its pool,
/// counted against `max_total` until the session has released the sandbox.
#[derive(Debug)]
pub struct Slot {
    pools: Arc<Pools>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(pool) = lock(&self.pools.pools).get_mut(&self.key) {
            pool.taken = pool.taken.saturating_sub(1);
        }
        self.pools.released.notify_waiters();
    }
}

/// A never-used sandbox taken from a pool by this process; see [`Pools::take`].
#[derive(Debug)]
pub struct Taken {
    pub sandbox: Box<dyn Sandbox>,
    pub slot: Slot,
    pub hit: bool,
}

/// The first wait after a pool failed to build a spare; it doubles with each failure in a
/// row, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// Where sandboxes with host mounts are counted: built per caller, never kept as spares.
pub const ONE_OFF_POOL: &str = "one-off (host mounts; built per run)";

/// How long a caller waits for room when all `max_total` sandboxes exist: a burst queues
/// for a while rather than failing at once, yet an overloaded host still says so.
const CAPACITY_WAIT: Duration = Duration::from_secs(30);

/// Whether a sandbox for `spec` can be prepared ahead in a warm pool (it has no host
/// mounts).
pub fn poolable(spec: &SandboxSpec) -> bool {
    pool_key(spec).is_some()
}

/// The pool a spec belongs to, or `None` when it cannot be prepared ahead (host mounts).
/// Environment and timeout are per command, so they are not part of it.
pub fn pool_key(spec: &SandboxSpec) -> Option<String> {
    if !spec.mounts.is_empty() {
        return None;
    }
    let resources = &spec.resources;
    Some(format!(
        "{}/{}/{}/{}/mem={}/pids={}/cpus={}/workdir={}",
        spec.backend,
        spec.image,
        spec.policy.profile,
        spec.policy.network.as_str(),
        resources.memory_bytes,
        resources.pids,
        resources.cpus.map_or("unlimited".into(), |c| c.to_string()),
        spec.workdir.display()
    ))
}

fn lock(pools: &Mutex<HashMap<String, Pool>>) -> std::sync::MutexGuard<'_, HashMap<String, Pool>> {
    // Every critical section leaves the map consistent, so a poisoned lock is still usable.
    pools
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A new sandbox's spec from a pool's template: a fresh id, and none of the requesting
/// run's environment or timeout (they go with that run's command, never into a spare
/// another caller may get).
fn fresh(template: &SandboxSpec) -> SandboxSpec {
    let mut spec = template.clone();
    spec.env.clear();
    spec.timeout = None;
    spec.id = new_sandbox_id();
    spec.hostname = format!("ak-{}", &spec.id[..12]);
    spec
}

impl Pools {
    pub fn new(config: PoolConfig) -> Self {
        Pools {
            config,
            pools: Mutex::new(HashMap::new()),
            released: tokio::sync::Notify::new(),
        }
    }

    fn total(pools: &HashMap<String, Pool>) -> usize {
        pools
            .values()
            .map(|p| p.spares.len() + p.in_use.len() + p.taken + p.building)
            .sum()
    }

    /// Reserves room for one new sandbox of pool `key` if the total allows it.
    fn try_reserve(&self, key: &str) -> Option<Reservation<'_>> {
        let mut pools = lock(&self.pools);
        if Self::total(&pools) >= self.config.max_total {
            return None;
        }
        pools.entry(key.to_string()).or_default().building += 1;
        Some(Reservation {
            pools: self,
            key: key.to_string(),
        })
    }

    /// Waits until room for a new sandbox of pool `key` is reserved, or fails after
    /// `CAPACITY_WAIT`.
    async fn reserve(&self, key: &str) -> Result<Reservation<'_>, ServiceError> {
        let deadline = tokio::time::Instant::now() + CAPACITY_WAIT;
        loop {
            // Registered before the check, so a release between the check and the wait
            // still wakes this caller.
            let released = self.released.notified();
            if let Some(reservation) = self.try_reserve(key) {
                return Ok(reservation);
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(ServiceError::Unavailable(format!(
                    "all {} pool sandboxes stayed in use for {}s; try again later or raise [daemon] max_total",
                    self.config.max_total,
                    CAPACITY_WAIT.as_secs()
                )));
            }
        }
    }

    /// A never-used sandbox for `spec`: a spare when one is ready (a hit), else a new one
    /// (a miss), with the room it takes reserved. The pool learns `spec` and keeps spares
    /// for it from now on, unless it has host mounts (see [`ONE_OFF_POOL`]).
    async fn obtain(
        &self,
        service: &Service,
        spec: &SandboxSpec,
        setups: Option<&tokio::sync::Semaphore>,
    ) -> Result<(String, Box<dyn Sandbox>, bool, Option<Reservation<'_>>), ServiceError> {
        let mut spec = spec.clone();
        crate::run::settle_image(&mut spec, None);
        let spec = &spec;
        // A sandbox with host mounts cannot be prepared ahead: it is built for this caller,
        // handed out and released like a pool's, and never kept as a spare (its pool has
        // no template).
        let (key, poolable) = match pool_key(spec) {
            Some(key) => (key, true),
            None => (ONE_OFF_POOL.to_string(), false),
        };
        let spare = if poolable {
            let mut pools = lock(&self.pools);
            let pool = pools.entry(key.clone()).or_default();
            pool.template.get_or_insert_with(|| fresh(spec));
            pool.spares.pop_front()
        } else {
            None
        };
        match spare {
            Some(sandbox) => Ok((key, sandbox, true, None)),
            None => {
                let reservation = self.reserve(&key).await?;
                // A set-up turn only once there is room: waiting for room must not hold
                // up set-ups that have it.
                let _turn = match setups {
                    Some(setups) => Some(setups.acquire().await.map_err(|e| {
                        ServiceError::Unavailable(format!("sandbox set-up queue: {e}"))
                    })?),
                    None => None,
                };
                let sandbox = service
                    .create_sandbox(&fresh(spec), Lifetime::Ephemeral)
                    .await?;
                lock(&self.pools).entry(key.clone()).or_default().created += 1;
                Ok((key, sandbox, false, Some(reservation)))
            }
        }
    }

    fn count_handout(
        &self,
        key: &str,
        hit: bool,
        started: Instant,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Pool>> {
        let mut pools = lock(&self.pools);
        let pool = pools.entry(key.to_string()).or_default();
        if hit {
            pool.hits += 1;
        } else {
            pool.misses += 1;
        }
        pool.handout_total += started.elapsed();
        pools
    }

    /// Hands out a never-used sandbox for `spec` to another process: the connection to
    /// its agent goes with it; the pool keeps the sandbox and releases it once its agent
    /// has exited (the other process closed the connection).
    pub async fn acquire(
        &self,
        service: &Service,
        spec: &SandboxSpec,
    ) -> Result<HandedOut, ServiceError> {
        let started = Instant::now();
        // A reservation for a sandbox built here lasts until it is counted in `in_use`.
        let (key, mut sandbox, hit, _reservation) = self.obtain(service, spec, None).await?;
        let transport = sandbox.take_transport_fd()?;
        let sandbox_id = sandbox.id().to_string();
        let mut pools = self.count_handout(&key, hit, started);
        pools.entry(key).or_default().in_use.push(sandbox);
        Ok(HandedOut {
            sandbox_id,
            transport,
            hit,
        })
    }

    /// Takes a never-used sandbox for `spec` for a command session of this process, which
    /// owns it from now on and releases it when its command ends. A sandbox built for it
    /// (a miss) waits for a turn of `setups` once there is room for it.
    pub async fn take(
        self: &Arc<Self>,
        service: &Service,
        spec: &SandboxSpec,
        setups: Option<&tokio::sync::Semaphore>,
    ) -> Result<Taken, ServiceError> {
        let started = Instant::now();
        let (key, sandbox, hit, _reservation) = self.obtain(service, spec, setups).await?;
        let mut pools = self.count_handout(&key, hit, started);
        pools.entry(key.clone()).or_default().taken += 1;
        drop(pools);
        Ok(Taken {
            sandbox,
            slot: Slot {
                pools: self.clone(),
                key,
            },
            hit,
        })
    }

    /// Destroys handed-out sandboxes whose command is done and tops every pool up to
    /// `min_warm`, within `max_total`. Call it periodically.
    pub async fn maintain(&self, service: &Service) {
        let finished: Vec<Box<dyn Sandbox>> = {
            let mut pools = lock(&self.pools);
            pools
                .values_mut()
                .flat_map(|pool| {
                    let (done, running): (Vec<_>, Vec<_>) =
                        pool.in_use.drain(..).partition(|s| !s.is_running());
                    pool.in_use = running;
                    done
                })
                .collect()
        };
        let released_any = !finished.is_empty();
        for mut sandbox in finished {
            if let Err(e) = sandbox.destroy().await {
                tracing::warn!(id = sandbox.id(), "releasing a used pool sandbox: {e}");
            }
        }
        if released_any {
            self.released.notify_waiters();
        }
        loop {
            let wanted = {
                let pools = lock(&self.pools);
                let now = Instant::now();
                pools
                    .iter()
                    .filter(|(_, p)| {
                        p.spares.len() + p.building < self.config.min_warm.min(self.config.max_warm)
                            && p.retry_at.is_none_or(|at| at <= now)
                    })
                    .find_map(|(key, p)| p.template.clone().map(|t| (key.clone(), t)))
            };
            let Some((key, template)) = wanted else {
                return;
            };
            // Within `max_total`, counted with what callers are building right now.
            let Some(_reservation) = self.try_reserve(&key) else {
                return;
            };
            let created = service
                .create_sandbox(&fresh(&template), Lifetime::Ephemeral)
                .await;
            let mut pools = lock(&self.pools);
            let pool = pools.entry(key.clone()).or_default();
            match created {
                Ok(sandbox) => {
                    pool.created += 1;
                    pool.failures = 0;
                    pool.retry_at = None;
                    pool.last_error = None;
                    pool.spares.push_back(sandbox);
                }
                Err(e) => {
                    pool.failures = pool.failures.saturating_add(1);
                    let wait = backoff(pool.failures);
                    pool.retry_at = Some(Instant::now() + wait);
                    pool.last_error = Some(e.to_string());
                    tracing::warn!(
                        "pool {key}: cannot create a spare (failure {} in a row; next try in {wait:?}): {e}",
                        pool.failures
                    );
                    // Other pools may still build.
                    continue;
                }
            }
        }
    }

    pub fn status(&self) -> Vec<PoolStatus> {
        let pools = lock(&self.pools);
        let mut status: Vec<PoolStatus> = pools
            .iter()
            .map(|(key, pool)| {
                let handed = pool.hits + pool.misses;
                PoolStatus {
                    pool: key.clone(),
                    warm: pool.spares.len(),
                    in_use: pool.in_use.len() + pool.taken,
                    created: pool.created,
                    hits: pool.hits,
                    misses: pool.misses,
                    average_handout_ms: if handed == 0 {
                        0.0
                    } else {
                        pool.handout_total.as_secs_f64() * 1000.0 / handed as f64
                    },
                    last_error: pool.last_error.clone(),
                    retry_in_ms: pool
                        .retry_at
                        .map(|at| at.saturating_duration_since(Instant::now()).as_millis() as u64),
                }
            })
            .collect();
        status.sort_by(|a, b| a.pool.cmp(&b.pool));
        status
    }

    /// Destroys every spare; waits up to `grace` for handed-out commands, then ends them.
    pub async fn shutdown(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        loop {
            let busy = lock(&self.pools)
                .values()
                .any(|p| p.in_use.iter().any(|s| s.is_running()));
            if !busy || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let all: Vec<Box<dyn Sandbox>> = lock(&self.pools)
            .values_mut()
            .flat_map(|p| {
                p.spares
                    .drain(..)
                    .chain(p.in_use.drain(..))
                    .collect::<Vec<_>>()
            })
            .collect();
        for mut sandbox in all {
            if let Err(e) = sandbox.destroy().await {
                tracing::warn!(id = sandbox.id(), "releasing a pool sandbox: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
