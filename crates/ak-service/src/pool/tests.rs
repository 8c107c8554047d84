//! Pool behaviour against a backend whose sandboxes the test ends at will.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use ak_core::backend::{BackendProbe, SandboxHandle, SandboxUsage, Transport};
use ak_core::config::{SandboxOptions, resolve};
use ak_core::spec::new_sandbox_id;
use ak_core::{Backend, BackendError, BackendKind};

use super::*;

/// Sandboxes that "run" until the test flips their flag.
#[derive(Debug, Default)]
struct FakeBackend {
    created: AtomicUsize,
    running: Mutex<Vec<Arc<AtomicBool>>>,
    /// Creations never finish while set (a slow backend whose caller gives up).
    hang: AtomicBool,
    /// Creations fail while set (an image that cannot be used); counts the attempts.
    fail: AtomicBool,
    attempts: AtomicUsize,
    /// Each creation takes this long (a real backend's build time).
    delay_ms: AtomicU64,
    /// The next this many creations fail.
    fail_next: AtomicUsize,
}

#[derive(Debug)]
struct FakeSandbox {
    id: String,
    running: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Backend for FakeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Native
    }
    fn probe(&self) -> BackendProbe {
        unreachable!("not probed by the pools")
    }
    async fn create(
        &self,
        spec: &SandboxSpec,
        _: Lifetime,
    ) -> Result<Box<dyn Sandbox>, BackendError> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let fail_once = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail_once || self.fail.load(Ordering::SeqCst) {
            return Err(BackendError::Setup("no such image".into()));
        }
        self.created.fetch_add(1, Ordering::SeqCst);
        let running = Arc::new(AtomicBool::new(true));
        self.running.lock().unwrap().push(running.clone());
        Ok(Box::new(FakeSandbox {
            id: spec.id.clone(),
            running,
        }))
    }
    async fn attach(&self, _: &SandboxHandle) -> Result<Box<dyn Sandbox>, BackendError> {
        unreachable!("pools never attach")
    }
    async fn release(&self, _: &SandboxHandle) -> Result<(), BackendError> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sandbox for FakeSandbox {
    fn id(&self) -> &str {
        &self.id
    }
    fn handle(&self) -> SandboxHandle {
        unreachable!("pool sandboxes are ephemeral")
    }
    async fn connect(&mut self) -> Result<Box<dyn Transport>, BackendError> {
        unreachable!("pools hand out the transport fd")
    }
    async fn destroy(&mut self) -> Result<SandboxUsage, BackendError> {
        self.running.store(false, Ordering::SeqCst);
        Ok(SandboxUsage::default())
    }
    fn take_transport_fd(&mut self) -> Result<OwnedFd, BackendError> {
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        Ok(ours.into())
    }
    fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }
    fn detach(self: Box<Self>) {}
}

fn setup(config: PoolConfig) -> (Arc<FakeBackend>, Arc<Service>, Arc<Pools>, SandboxSpec) {
    let backend = Arc::new(FakeBackend::default());
    let service = Arc::new(Service::new(
        vec![backend.clone() as Arc<dyn Backend>],
        std::env::temp_dir().join("unused-registry.db"),
    ));
    let spec = resolve(
        SandboxOptions::default(),
        std::path::Path::new("/"),
        new_sandbox_id(),
    )
    .unwrap();
    (backend, service, Arc::new(Pools::new(config)), spec)
}

#[tokio::test]
async fn a_burst_past_max_total_waits_for_room_instead_of_failing() {
    let config = PoolConfig {
        min_warm: 0,
        max_warm: 0,
        max_total: 2,
    };
    let (backend, service, pools, spec) = setup(config);
    let first = pools.acquire(&service, &spec).await.unwrap();
    let second = pools.acquire(&service, &spec).await.unwrap();
    assert_ne!(first.sandbox_id, second.sandbox_id);

    let third = tokio::spawn({
        let (service, pools, spec) = (service.clone(), pools.clone(), spec.clone());
        async move { pools.acquire(&service, &spec).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!third.is_finished(), "a third sandbox would pass max_total");
    assert_eq!(backend.created.load(Ordering::SeqCst), 2);

    // The first command ends; maintenance releases its sandbox and the waiter gets room.
    backend.running.lock().unwrap()[0].store(false, Ordering::SeqCst);
    pools.maintain(&service).await;
    let third = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the waiter got room")
        .unwrap()
        .unwrap();
    assert!(!third.hit);
    assert_eq!(backend.created.load(Ordering::SeqCst), 3);
    let status = pools.status();
    assert_eq!(status[0].in_use, 2);
    assert_eq!(status[0].misses, 3);
}

#[tokio::test]
async fn refills_stay_within_max_total() {
    let config = PoolConfig {
        min_warm: 4,
        max_warm: 4,
        max_total: 3,
    };
    let (backend, service, pools, spec) = setup(config);
    let handed = pools.acquire(&service, &spec).await.unwrap();
    assert!(!handed.hit, "the pool learns the spec at its first request");
    pools.maintain(&service).await;
    assert_eq!(backend.created.load(Ordering::SeqCst), 3);
    let status = pools.status();
    assert_eq!((status[0].warm, status[0].in_use), (2, 1));
    assert!(pools.acquire(&service, &spec).await.unwrap().hit);
}

#[tokio::test]
async fn a_spare_that_ended_is_not_handed_out() {
    let config = PoolConfig {
        min_warm: 2,
        max_warm: 2,
        max_total: 8,
    };
    let (backend, service, pools, spec) = setup(config);
    let first = pools.acquire(&service, &spec).await.unwrap();
    pools.maintain(&service).await;
    assert_eq!(pools.status()[0].warm, 2);
    // Both spares end while they wait (a VM killed from outside); the first request
    // after that gets neither, but a sandbox of its own.
    for running in backend.running.lock().unwrap().iter().skip(1) {
        running.store(false, Ordering::SeqCst);
    }
    let handed = pools.acquire(&service, &spec).await.unwrap();
    assert!(!handed.hit, "an ended spare was handed out");
    assert_ne!(handed.sandbox_id, first.sandbox_id);
    assert_eq!(backend.created.load(Ordering::SeqCst), 4);
    assert_eq!(pools.status()[0].warm, 0);
}

#[tokio::test]
async fn a_caller_that_gives_up_mid_build_gives_its_room_back() {
    let config = PoolConfig {
        min_warm: 0,
        max_warm: 0,
        max_total: 1,
    };
    let (backend, service, pools, spec) = setup(config);
    backend.hang.store(true, Ordering::SeqCst);
    let stuck = tokio::spawn({
        let (service, pools, spec) = (service.clone(), pools.clone(), spec.clone());
        async move { pools.acquire(&service, &spec).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    stuck.abort();
    let _ = stuck.await;
    backend.hang.store(false, Ordering::SeqCst);
    let handed = tokio::time::timeout(Duration::from_secs(2), pools.acquire(&service, &spec))
        .await
        .expect("the room of the abandoned build was given back")
        .unwrap();
    assert!(!handed.hit);
}

#[tokio::test]
async fn a_sandbox_with_host_mounts_is_built_per_caller_and_never_kept() {
    let config = PoolConfig {
        min_warm: 2,
        max_warm: 2,
        max_total: 8,
    };
    let (backend, service, pools, mut spec) = setup(config);
    spec.mounts.push(ak_core::Mount {
        host: std::env::temp_dir(),
        target: "/project".into(),
        writable: true,
    });
    let first = pools.acquire(&service, &spec).await.unwrap();
    let second = pools.acquire(&service, &spec).await.unwrap();
    assert!(!first.hit && !second.hit);
    assert_ne!(first.sandbox_id, second.sandbox_id);
    pools.maintain(&service).await;
    assert_eq!(
        backend.created.load(Ordering::SeqCst),
        2,
        "no spare is built for a spec with host mounts"
    );
    let status = pools.status();
    assert_eq!(status[0].pool, super::ONE_OFF_POOL);
    assert_eq!((status[0].warm, status[0].in_use), (0, 2));
    // Released like any handed-out sandbox once its command is done.
    for running in backend.running.lock().unwrap().iter() {
        running.store(false, Ordering::SeqCst);
    }
    pools.maintain(&service).await;
    assert_eq!(pools.status()[0].in_use, 0);
    assert_eq!(backend.created.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_pool_that_cannot_build_backs_off_and_says_why() {
    let config = PoolConfig {
        min_warm: 1,
        max_warm: 1,
        max_total: 4,
    };
    let (backend, service, pools, spec) = setup(config);
    // The pool learns the spec from a hand-out, then the image stops working.
    drop(pools.acquire(&service, &spec).await.unwrap());
    backend.fail.store(true, Ordering::SeqCst);
    let before = backend.attempts.load(Ordering::SeqCst);
    for _ in 0..20 {
        pools.maintain(&service).await;
    }
    // One try, then the pool waits instead of retrying at full speed.
    assert_eq!(backend.attempts.load(Ordering::SeqCst), before + 1);
    let status = pools.status();
    let failing = status.iter().find(|s| s.last_error.is_some()).unwrap();
    assert!(
        failing
            .last_error
            .as_deref()
            .unwrap()
            .contains("no such image"),
        "{failing:?}"
    );
    assert!(failing.retry_in_ms.unwrap() > 0, "{failing:?}");
    // Each failure in a row doubles the wait, up to a minute.
    assert_eq!(backoff(1), Duration::from_millis(500));
    assert_eq!(backoff(2), Duration::from_secs(1));
    assert_eq!(backoff(40), MAX_BACKOFF);
}

#[tokio::test]
async fn a_taken_sandbox_holds_its_room_until_the_slot_goes() {
    let config = PoolConfig {
        min_warm: 0,
        max_warm: 0,
        max_total: 1,
    };
    let (_backend, service, pools, spec) = setup(config);
    let taken = pools.take(&service, &spec, None).await.unwrap();
    assert!(!taken.hit);
    assert_eq!(pools.status()[0].in_use, 1);
    let waiting = tokio::spawn({
        let (service, pools, spec) = (service.clone(), pools.clone(), spec.clone());
        async move { pools.take(&service, &spec, None).await.map(|t| t.hit) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "max_total is 1");
    drop(taken);
    let second = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the released room is given to the waiting caller")
        .unwrap();
    assert!(second.is_ok(), "{second:?}");
}

#[tokio::test]
async fn a_caller_takes_a_spare_being_built_instead_of_building_another() {
    let config = PoolConfig {
        min_warm: 1,
        max_warm: 1,
        max_total: 8,
    };
    let (backend, service, pools, spec) = setup(config);
    let first = pools.acquire(&service, &spec).await.unwrap();
    assert!(!first.hit, "the pool learns the spec at its first request");
    backend.delay_ms.store(200, Ordering::SeqCst);
    let maintenance = tokio::spawn({
        let (service, pools) = (service.clone(), pools.clone());
        async move { pools.maintain(&service).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(pools.status()[0].building, 1, "the spare is being built");
    let second = tokio::time::timeout(Duration::from_secs(5), pools.acquire(&service, &spec))
        .await
        .expect("the spare being built was handed out")
        .unwrap();
    assert!(second.hit);
    maintenance.await.unwrap();
    let status = &pools.status()[0];
    assert_eq!(
        (status.hits, status.joined, status.misses),
        (0, 1, 1),
        "{status:?}"
    );
    // One sandbox for the first request, the spare the second got, and its replacement.
    assert_eq!(backend.attempts.load(Ordering::SeqCst), 3);
    assert_eq!((status.refills, status.warm), (2, 1));
    assert!(status.refill_ms.unwrap() >= 200.0, "{status:?}");
}

#[tokio::test]
async fn a_caller_whose_spare_fails_to_build_builds_its_own() {
    let config = PoolConfig {
        min_warm: 1,
        max_warm: 1,
        max_total: 8,
    };
    let (backend, service, pools, spec) = setup(config);
    drop(pools.acquire(&service, &spec).await.unwrap());
    backend.delay_ms.store(100, Ordering::SeqCst);
    backend.fail_next.store(1, Ordering::SeqCst);
    let maintenance = tokio::spawn({
        let (service, pools) = (service.clone(), pools.clone());
        async move { pools.maintain(&service).await }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let waiting = tokio::spawn({
        let (service, pools, spec) = (service.clone(), pools.clone(), spec.clone());
        async move { pools.acquire(&service, &spec).await.map(|h| h.hit) }
    });
    // The spare's build fails; the caller that waited for it builds one of its own.
    maintenance.await.unwrap();
    let hit = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the caller did not wait forever")
        .unwrap()
        .unwrap();
    assert!(!hit);
    assert_eq!(pools.status()[0].misses, 2);
}

#[tokio::test]
async fn a_burst_raises_the_spares_and_an_idle_pool_shrinks_back() {
    let config = PoolConfig {
        min_warm: 1,
        max_warm: 4,
        max_total: 64,
    };
    let start = Instant::now();
    let offset_ms = Arc::new(AtomicU64::new(0));
    let clock = {
        let offset_ms = offset_ms.clone();
        move || start + Duration::from_millis(offset_ms.load(Ordering::SeqCst))
    };
    let (backend, service, _, spec) = setup(config);
    let pools = Arc::new(
        Pools::new(config)
            .with_clock(clock)
            .with_refill_parallelism(2),
    );
    // 50 requests within 100 ms of the pool's clock: 500/s.
    for i in 0..50 {
        offset_ms.store(i * 2, Ordering::SeqCst);
        drop(pools.acquire(&service, &spec).await.unwrap());
    }
    backend.delay_ms.store(10, Ordering::SeqCst);
    pools.maintain(&service).await;
    let status = &pools.status()[0];
    // 500/s × 20 ms (the first guess of a build's time) × 2 = 20, capped at max_warm.
    assert_eq!((status.target, status.warm), (4, 4), "{status:?}");

    // A second past the burst the target is the minimum again, but the spares stay
    // until the pool has been idle for a while.
    offset_ms.store(100 + 1_100, Ordering::SeqCst);
    pools.maintain(&service).await;
    let status = &pools.status()[0];
    assert_eq!((status.target, status.warm), (1, 4), "{status:?}");
    offset_ms.store(
        100 + demand::IDLE_AFTER.as_millis() as u64,
        Ordering::SeqCst,
    );
    pools.maintain(&service).await;
    let status = &pools.status()[0];
    assert_eq!((status.target, status.warm), (1, 1), "{status:?}");
    let running = backend
        .running
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.load(Ordering::SeqCst))
        .count();
    // The 50 handed out still run (their commands are the test's); 1 spare is left.
    assert_eq!(running, 51);
}

#[tokio::test]
async fn spares_wait_while_callers_build_their_own() {
    let config = PoolConfig {
        min_warm: 2,
        max_warm: 2,
        max_total: 8,
    };
    let (backend, service, _, spec) = setup(config);
    let pools = Arc::new(Pools::new(config).with_refill_parallelism(1));
    // The pool learns the spec; then a caller's build is in progress.
    drop(pools.acquire(&service, &spec).await.unwrap());
    backend.delay_ms.store(200, Ordering::SeqCst);
    let caller = tokio::spawn({
        let (service, pools) = (service.clone(), pools.clone());
        let mut other = spec.clone();
        other.resources.pids += 1;
        async move { pools.acquire(&service, &other).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Its one CPU is the caller's: no spare is started.
    pools.maintain(&service).await;
    assert_eq!(backend.attempts.load(Ordering::SeqCst), 1);
    caller.await.unwrap().unwrap();
    backend.delay_ms.store(0, Ordering::SeqCst);
    pools.maintain(&service).await;
    assert!(
        pools.status().iter().all(|s| s.warm == 2),
        "{:?}",
        pools.status()
    );
}

#[tokio::test]
async fn a_busy_pool_wakes_its_maintenance_at_once_and_a_paused_one_waits_for_the_tick() {
    let config = PoolConfig {
        min_warm: 1,
        max_warm: 4,
        max_total: 64,
    };
    let start = Instant::now();
    let offset_ms = Arc::new(AtomicU64::new(0));
    let clock = {
        let offset_ms = offset_ms.clone();
        move || start + Duration::from_millis(offset_ms.load(Ordering::SeqCst))
    };
    let (_backend, service, _, spec) = setup(config);
    let pools = Arc::new(Pools::new(config).with_clock(clock));
    let woken = |pools: &Arc<Pools>| {
        let pools = pools.clone();
        tokio::spawn(async move { pools.short().await })
    };

    // Requests 150 ms apart (under 20/s): the replacement waits for the tick.
    let wake = woken(&pools);
    tokio::task::yield_now().await;
    for i in 0..3 {
        offset_ms.store(i * 150, Ordering::SeqCst);
        drop(pools.acquire(&service, &spec).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!wake.is_finished(), "a paused pool woke its maintenance");

    // Two requests 10 ms apart: busy, so the maintenance is woken at once.
    offset_ms.store(2_000, Ordering::SeqCst);
    drop(pools.acquire(&service, &spec).await.unwrap());
    offset_ms.store(2_010, Ordering::SeqCst);
    drop(pools.acquire(&service, &spec).await.unwrap());
    tokio::time::timeout(Duration::from_secs(2), wake)
        .await
        .expect("a busy pool wakes its maintenance")
        .unwrap();
}

#[test]
fn spares_of_one_allowlist_never_serve_another() {
    let spec = |hosts: &[&str]| {
        resolve(
            SandboxOptions {
                allow_hosts: Some(hosts.iter().map(|h| h.to_string()).collect()),
                ..SandboxOptions::default()
            },
            std::path::Path::new("/"),
            "0123456789abcdef0123456789abcdef".into(),
        )
        .unwrap()
    };
    let a = pool_key(&spec(&["a.example"])).unwrap();
    assert_ne!(a, pool_key(&spec(&["b.example"])).unwrap());
    assert_ne!(a, pool_key(&spec(&["a.example", "b.example"])).unwrap());
    assert_eq!(a, pool_key(&spec(&["a.example"])).unwrap());
}
