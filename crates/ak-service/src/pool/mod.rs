//! Warm pools: sandboxes created ahead of time, never used, handed out once. A handed-out
//! sandbox is destroyed when its command is done (its agent exits when the caller closes
//! the connection) and replaced in the background; it is never given to anyone else.
//!
//! Each pool holds as many spares as its recent requests call for (see [`demand`]):
//! more during a burst, back to `min_warm` once idle. Builds take one of a slot per CPU;
//! callers that must build their own queue for slots ahead of spares, and spares use only
//! the CPUs that handed-out sandboxes' commands leave free. A caller that finds no spare
//! ready takes one that is being built rather than building another.

mod demand;
mod key;

use key::fresh;
pub use key::{pool_key, poolable};

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::oneshot;

use ak_core::backend::Lifetime;
use ak_core::{Sandbox, SandboxSpec};
use serde::{Deserialize, Serialize};

use crate::Service;
use crate::error::ServiceError;
use crate::pool::demand::Demand;

/// Sizes of the pools; defaults that suit a laptop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Spares kept ready per pool, also when idle.
    pub min_warm: usize,
    /// Spares a pool may hold at most, during a burst.
    pub max_warm: usize,
    /// Sandboxes (spares and handed out) across all pools, so a burst cannot exhaust the host.
    pub max_total: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            min_warm: 2,
            max_warm: 8,
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
    /// Spares the pool aims to hold now, from its recent requests.
    #[serde(default)]
    pub target: usize,
    /// Spares being built right now.
    #[serde(default)]
    pub building: usize,
    pub in_use: usize,
    pub created: u64,
    /// Requests given a ready spare.
    pub hits: u64,
    /// Requests given a spare that was still being built when they came.
    #[serde(default)]
    pub joined: u64,
    /// Requests for which a sandbox was built from scratch.
    pub misses: u64,
    /// `hits` over all requests, 0 to 1.
    #[serde(default)]
    pub hit_rate: f64,
    /// Requests per second over the last second.
    #[serde(default)]
    pub requests_per_s: f64,
    /// Mean time to hand a sandbox out, in milliseconds.
    pub average_handout_ms: f64,
    /// Moving average of the time a spare takes to build, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill_ms: Option<f64>,
    /// Spares built so far.
    #[serde(default)]
    pub refills: u64,
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
    /// Of those, spares being built by the maintenance (callers may join them).
    refilling: usize,
    /// Callers that found no spare ready and wait for one being built, first come first
    /// served; never more than `refilling`.
    waiters: VecDeque<oneshot::Sender<Box<dyn Sandbox>>>,
    demand: Demand,
    created: u64,
    hits: u64,
    joined: u64,
    misses: u64,
    handout_total: Duration,
}

impl Pool {
    /// Spares to hold now.
    fn target(&self, config: &PoolConfig, now: Instant) -> usize {
        self.demand.target(now, config.min_warm, config.max_warm)
    }

    /// Spares to start building now: the target less what is ready and what is being built
    /// for no caller in particular.
    fn shortfall(&self, config: &PoolConfig, now: Instant) -> usize {
        if self.template.is_none() || self.retry_at.is_some_and(|at| at > now) {
            return 0;
        }
        // Every waiter takes one of the spares being built.
        let unclaimed = self.refilling.saturating_sub(self.waiters.len());
        self.target(config, now)
            .saturating_sub(self.spares.len() + unclaimed)
    }

    /// Gives a freshly built spare to the first caller still waiting, or keeps it.
    fn deliver(&mut self, mut sandbox: Box<dyn Sandbox>) {
        while let Some(waiter) = self.waiters.pop_front() {
            match waiter.send(sandbox) {
                Ok(()) => return,
                // That caller went away; the next one may still wait.
                Err(returned) => sandbox = returned,
            }
        }
        self.spares.push_back(sandbox);
    }
}

/// The warm pools of one service.
#[derive(Debug)]
pub struct Pools {
    config: PoolConfig,
    pools: Mutex<HashMap<String, Pool>>,
    /// Woken when sandboxes are released, for callers waiting on `max_total`.
    released: tokio::sync::Notify,
    /// Sandboxes built at once, callers' and spares together: one per CPU (more at once
    /// only makes each slower). Callers wait for a slot in turn; a spare is only started
    /// when a slot is free and no caller waits for one.
    build_slots: tokio::sync::Semaphore,
    cpus: usize,
    /// Callers waiting for a build slot right now.
    callers_queued: AtomicUsize,
    /// Woken when a busy pool hands out a spare, so that a burst is answered at once
    /// rather than at the next maintenance tick.
    short: tokio::sync::Notify,
    /// What pool sizing takes as the time: the real clock, or a test's.
    clock: Clock,
}

/// The time as pool sizing sees it.
#[derive(Clone)]
struct Clock(Arc<dyn Fn() -> Instant + Send + Sync>);

impl Clock {
    fn now(&self) -> Instant {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// Counts a caller in [`Pools::callers_queued`] while it waits for a build slot.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Queued(count)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a request was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    /// A ready spare.
    Hit,
    /// A spare that was being built when the request came.
    Joined,
    /// A sandbox built for this request.
    Miss,
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

/// How long one maintenance pass keeps starting builds.
const MAX_PASS: Duration = Duration::from_secs(1);

/// Where sandboxes with host mounts are counted: built per caller, never kept as spares.
pub const ONE_OFF_POOL: &str = "one-off (host mounts; built per run)";

/// How long a caller waits for room when all `max_total` sandboxes exist: a burst queues
/// for a while rather than failing at once, yet an overloaded host still says so.
const CAPACITY_WAIT: Duration = Duration::from_secs(30);

fn lock(pools: &Mutex<HashMap<String, Pool>>) -> std::sync::MutexGuard<'_, HashMap<String, Pool>> {
    // Every critical section leaves the map consistent, so a poisoned lock is still usable.
    pools
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Pools {
    pub fn new(config: PoolConfig) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Pools {
            config,
            pools: Mutex::new(HashMap::new()),
            released: tokio::sync::Notify::new(),
            build_slots: tokio::sync::Semaphore::new(cpus),
            cpus,
            callers_queued: AtomicUsize::new(0),
            short: tokio::sync::Notify::new(),
            clock: Clock(Arc::new(Instant::now)),
        }
    }

    /// The same pools reading the time from `clock` (tests move it forward at will).
    #[cfg(test)]
    fn with_clock(mut self, clock: impl Fn() -> Instant + Send + Sync + 'static) -> Self {
        self.clock = Clock(Arc::new(clock));
        self
    }

    /// The same pools building at most `parallelism` spares at once (at least one).
    #[cfg(test)]
    fn with_refill_parallelism(mut self, parallelism: usize) -> Self {
        self.build_slots = tokio::sync::Semaphore::new(parallelism.max(1));
        self.cpus = parallelism.max(1);
        self
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

    /// A never-used sandbox for `spec`: a spare when one is ready (a hit), else one being
    /// built that no other caller waits for (joined), else a new one (a miss), with the
    /// room it takes reserved. The pool learns `spec` and keeps spares for it from now on,
    /// unless it has host mounts (see [`ONE_OFF_POOL`]).
    async fn obtain(
        &self,
        service: &Service,
        spec: &SandboxSpec,
        setups: Option<&tokio::sync::Semaphore>,
    ) -> Result<(String, Box<dyn Sandbox>, Served, Option<Reservation<'_>>), ServiceError> {
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
        if poolable {
            let waiting = {
                let mut pools = lock(&self.pools);
                let pool = pools.entry(key.clone()).or_default();
                pool.template.get_or_insert_with(|| fresh(spec));
                let now = self.clock.now();
                pool.demand.record_request(now);
                // During a burst the replacement must not wait for the next tick.
                if pool.demand.busy(now) {
                    self.short.notify_one();
                }
                // A spare that ended while it waited (killed from outside, its VM gone)
                // is not handed out: the next one is, or the caller builds its own.
                let mut ended = Vec::new();
                let spare = loop {
                    match pool.spares.pop_front() {
                        Some(sandbox) if sandbox.is_running() => break Some(sandbox),
                        Some(sandbox) => ended.push(sandbox),
                        None => break None,
                    }
                };
                if !ended.is_empty() {
                    tracing::warn!(
                        pool = key,
                        count = ended.len(),
                        "spares had ended; released"
                    );
                    tokio::spawn(async move {
                        for mut sandbox in ended {
                            if let Err(e) = sandbox.destroy().await {
                                tracing::warn!(id = sandbox.id(), "releasing an ended spare: {e}");
                            }
                        }
                    });
                }
                if let Some(sandbox) = spare {
                    return Ok((key, sandbox, Served::Hit, None));
                }
                // Callers that went away no longer wait.
                pool.waiters.retain(|waiter| !waiter.is_closed());
                (pool.refilling > pool.waiters.len()).then(|| {
                    let (sender, receiver) = oneshot::channel();
                    pool.waiters.push_back(sender);
                    receiver
                })
            };
            // A build that fails drops its waiters' senders: they build their own.
            if let Some(receiver) = waiting
                && let Ok(sandbox) = receiver.await
            {
                return Ok((key, sandbox, Served::Joined, None));
            }
        }
        let reservation = self.reserve(&key).await?;
        // A set-up turn only once there is room: waiting for room must not hold up
        // set-ups that have it.
        let _turn =
            match setups {
                Some(setups) => Some(setups.acquire().await.map_err(|e| {
                    ServiceError::Unavailable(format!("sandbox set-up queue: {e}"))
                })?),
                None => None,
            };
        let _slot = {
            let _queued = Queued::start(&self.callers_queued);
            self.build_slots
                .acquire()
                .await
                .map_err(|e| ServiceError::Unavailable(format!("sandbox build slots: {e}")))?
        };
        let sandbox = service
            .create_sandbox(&fresh(spec), Lifetime::Ephemeral, None)
            .await?;
        lock(&self.pools).entry(key.clone()).or_default().created += 1;
        Ok((key, sandbox, Served::Miss, Some(reservation)))
    }

    fn count_handout(
        &self,
        key: &str,
        served: Served,
        started: Instant,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Pool>> {
        let mut pools = lock(&self.pools);
        let pool = pools.entry(key.to_string()).or_default();
        match served {
            Served::Hit => pool.hits += 1,
            Served::Joined => pool.joined += 1,
            Served::Miss => pool.misses += 1,
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
        let (key, mut sandbox, served, _reservation) = self.obtain(service, spec, None).await?;
        let transport = sandbox.take_transport_fd()?;
        let sandbox_id = sandbox.id().to_string();
        let mut pools = self.count_handout(&key, served, started);
        pools.entry(key).or_default().in_use.push(sandbox);
        Ok(HandedOut {
            sandbox_id,
            transport,
            hit: served != Served::Miss,
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
        let (key, sandbox, served, _reservation) = self.obtain(service, spec, setups).await?;
        let mut pools = self.count_handout(&key, served, started);
        pools.entry(key.clone()).or_default().taken += 1;
        drop(pools);
        Ok(Taken {
            sandbox,
            slot: Slot {
                pools: self.clone(),
                key,
            },
            hit: served != Served::Miss,
        })
    }

    /// Destroys handed-out sandboxes whose command is done, releases the spares an idle
    /// pool no longer needs, and builds spares up to each pool's target, within
    /// `max_total`, several at once (see [`Pools::refill_budget`]). Call it periodically,
    /// and when [`Pools::short`] wakes.
    pub async fn maintain(&self, service: &Service) {
        let started = Instant::now();
        let mut builds = FuturesUnordered::new();
        loop {
            self.release_finished().await;
            // A pass ends after a while even under steady demand, so that a stop request
            // (taken between passes) is not held up; the next pass carries on.
            while started.elapsed() < MAX_PASS
                && self.callers_queued.load(Ordering::SeqCst) == 0
                && builds.len() < self.refill_budget()
            {
                let Ok(slot) = self.build_slots.try_acquire() else {
                    break;
                };
                let Some((key, template, reservation)) = self.next_refill() else {
                    break;
                };
                builds.push(self.refill(service, key, template, reservation, slot));
            }
            if builds.next().await.is_none() {
                return;
            }
        }
    }

    /// Spares that may be built at once: the CPUs that the commands of handed-out sandboxes
    /// leave free, but always one (such commands may well be idle).
    fn refill_budget(&self) -> usize {
        let running: usize = lock(&self.pools)
            .values()
            .map(|pool| pool.in_use.len() + pool.taken)
            .sum();
        self.cpus.saturating_sub(running).max(1)
    }

    /// Destroys handed-out sandboxes whose command is done, and the spares beyond its
    /// target of a pool that has been idle for a while (oldest first).
    async fn release_finished(&self) {
        let now = self.clock.now();
        let finished: Vec<Box<dyn Sandbox>> = {
            let mut pools = lock(&self.pools);
            pools
                .values_mut()
                .flat_map(|pool| {
                    let (mut done, running): (Vec<_>, Vec<_>) =
                        pool.in_use.drain(..).partition(|s| !s.is_running());
                    pool.in_use = running;
                    if pool.demand.idle(now) {
                        let surplus = pool
                            .spares
                            .len()
                            .saturating_sub(pool.target(&self.config, now));
                        done.extend(pool.spares.drain(..surplus));
                    }
                    done
                })
                .collect()
        };
        if finished.is_empty() {
            return;
        }
        for mut sandbox in finished {
            if let Err(e) = sandbox.destroy().await {
                tracing::warn!(id = sandbox.id(), "releasing a pool sandbox: {e}");
            }
        }
        self.released.notify_waiters();
    }

    /// Wakes when a busy pool hands out a spare (see `Demand::busy`).
    pub async fn short(&self) {
        self.short.notified().await
    }

    /// The pool whose spares fall furthest short of its target, with room reserved for
    /// one more and that spare counted as being built.
    fn next_refill(&self) -> Option<(String, SandboxSpec, Reservation<'_>)> {
        let now = self.clock.now();
        let mut pools = lock(&self.pools);
        if Self::total(&pools) >= self.config.max_total {
            return None;
        }
        let (key, pool) = pools
            .iter_mut()
            .map(|(key, pool)| (pool.shortfall(&self.config, now), key, pool))
            .filter(|(shortfall, ..)| *shortfall > 0)
            .max_by_key(|(shortfall, ..)| *shortfall)
            .map(|(_, key, pool)| (key.clone(), pool))?;
        let template = pool.template.clone()?;
        pool.building += 1;
        pool.refilling += 1;
        drop(pools);
        Some((key.clone(), template, Reservation { pools: self, key }))
    }

    /// Builds one spare for pool `key` and gives it to a waiting caller or keeps it.
    async fn refill(
        &self,
        service: &Service,
        key: String,
        template: SandboxSpec,
        reservation: Reservation<'_>,
        slot: tokio::sync::SemaphorePermit<'_>,
    ) {
        let started = Instant::now();
        let created = service
            .create_sandbox(&fresh(&template), Lifetime::Ephemeral, None)
            .await;
        let took = started.elapsed();
        drop(slot);
        let mut pools = lock(&self.pools);
        let pool = pools.entry(key.clone()).or_default();
        pool.refilling = pool.refilling.saturating_sub(1);
        match created {
            Ok(sandbox) => {
                pool.created += 1;
                pool.failures = 0;
                pool.retry_at = None;
                pool.last_error = None;
                pool.demand.record_refill(took);
                pool.deliver(sandbox);
            }
            Err(e) => {
                // Callers waiting for spares that will not come build their own.
                pool.waiters.truncate(pool.refilling);
                pool.failures = pool.failures.saturating_add(1);
                let wait = backoff(pool.failures);
                pool.retry_at = Some(self.clock.now() + wait);
                pool.last_error = Some(e.to_string());
                tracing::warn!(
                    "pool {key}: cannot create a spare (failure {} in a row; next try in {wait:?}): {e}",
                    pool.failures
                );
            }
        }
        drop(pools);
        drop(reservation);
    }

    pub fn status(&self) -> Vec<PoolStatus> {
        let now = self.clock.now();
        let pools = lock(&self.pools);
        let mut status: Vec<PoolStatus> = pools
            .iter()
            .map(|(key, pool)| {
                let handed = pool.hits + pool.joined + pool.misses;
                let per_handout = |total: f64| {
                    if handed == 0 {
                        0.0
                    } else {
                        total / handed as f64
                    }
                };
                PoolStatus {
                    pool: key.clone(),
                    warm: pool.spares.len(),
                    target: if pool.template.is_some() {
                        pool.target(&self.config, now)
                    } else {
                        0
                    },
                    building: pool.building,
                    in_use: pool.in_use.len() + pool.taken,
                    created: pool.created,
                    hits: pool.hits,
                    joined: pool.joined,
                    misses: pool.misses,
                    hit_rate: per_handout(pool.hits as f64),
                    requests_per_s: pool.demand.rate(now),
                    average_handout_ms: per_handout(pool.handout_total.as_secs_f64() * 1000.0),
                    refill_ms: pool.demand.refill_time().map(|t| t.as_secs_f64() * 1000.0),
                    refills: pool.demand.refills(),
                    last_error: pool.last_error.clone(),
                    retry_in_ms: pool.retry_at.map(|at| {
                        at.saturating_duration_since(self.clock.now()).as_millis() as u64
                    }),
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
                // Callers still waiting for a spare build their own (and are refused).
                p.waiters.clear();
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
