//! Pool behaviour against a backend whose sandboxes the test ends at will.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ak_core::backend::{BackendProbe, SandboxHandle, SandboxUsage, Transport};
use ak_core::config::{SandboxOptions, resolve};
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
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
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
