//! The only place that names concrete backends: builds the service for this build.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::sync::Mutex;

use ak_core::BackendKind;
use ak_core::config::{ConfigFile, Settings};
use ak_docker::{DockerBackend, ProgressSink, PullProgress};
use ak_gvisor::GvisorBackend;
use ak_microvm::MicrovmBackend;
use ak_native::NativeBackend;
use ak_service::pool::PoolConfig;
use ak_service::{CallerPolicy, Service};
use indicatif::{ProgressBar, ProgressStyle};

/// The kernel features the native backend found on this host (for `status`).
pub use ak_native::probe::HostFeatures;

pub fn host_features() -> HostFeatures {
    HostFeatures::detect()
}

/// Environment variable naming the agent executable explicitly.
pub const AGENT_ENV: &str = "AGENTKERNEL_AGENT";

/// The directory of this executable, where its helpers are looked for. Worked out once per
/// process: every backend asks for the agent and the egress helper, and each `readlink` of
/// /proc/self/exe cost a pooled `run` about 30 µs (measured with perf).
fn exe_dir() -> Option<&'static Path> {
    static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(PathBuf::from))
    })
    .as_deref()
}

/// Set by a long-lived server (the daemon, `serve`, `mcp`) before it builds its service:
/// such a process builds sandboxes for many callers at once, and is wired for throughput
/// rather than for one cold start's latency.
pub static LONG_LIVED: AtomicBool = AtomicBool::new(false);

/// Set by a command that builds one sandbox at a time (`run`; not the servers or the
/// benchmark's throughput run), whose service then takes one set-up turn at a time.
pub static ONE_AT_A_TIME: AtomicBool = AtomicBool::new(false);

/// `ak-server` beside this executable: the position-independent build of this command
/// line that runs its long-lived servers (`agentkernel_cli::Executable`).
pub fn server_path() -> PathBuf {
    exe_dir().map_or_else(|| PathBuf::from("ak-server"), |dir| dir.join("ak-server"))
}

/// Hands this process's command line to `ak-server` (returns only if that fails).
pub fn exec_server() -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let server = server_path();
    let error = std::process::Command::new(&server)
        .args(std::env::args_os().skip(1))
        .exec();
    anyhow::Error::new(error).context(format!(
        "start {} (servers run from it; it is built and installed beside agentkernel)",
        server.display()
    ))
}

/// The static agent: `$AGENTKERNEL_AGENT`, else the one beside this executable that
/// [`agent_beside`] picks.
pub fn agent_path() -> PathBuf {
    if let Some(path) = std::env::var_os(AGENT_ENV) {
        return PathBuf::from(path);
    }
    static BESIDE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BESIDE
        .get_or_init(|| exe_dir().map_or_else(|| PathBuf::from(AGENT), agent_beside))
        .clone()
}

/// The agent `cargo build` links (static glibc).
const AGENT: &str = "ak-agent";
/// The agent `scripts/build-musl-agent.sh DIR` installs (static musl): its start skips
/// glibc's `cpuid` probing of the CPU's caches, which traps to the hypervisor in a VM, so a
/// cold `run` takes ~0.4 ms less (docs/benchmarks.md). It has a name of its own because
/// every `cargo build`, even one that builds nothing, links `ak-agent` back into place.
const MUSL_AGENT: &str = "ak-agent-musl";

/// In `dir`: the musl agent where it is at least as new as the glibc one, else the glibc
/// one. A musl agent older than a `cargo build`'s agent was built from older code, and the
/// newer code wins until the script builds it again.
fn agent_beside(dir: &Path) -> PathBuf {
    let glibc = dir.join(AGENT);
    let musl = dir.join(MUSL_AGENT);
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    match (modified(&musl), modified(&glibc)) {
        (Some(musl_time), Some(glibc_time)) if musl_time >= glibc_time => musl,
        (Some(_), None) => musl,
        _ => glibc,
    }
}

/// Environment variable naming the egress helper explicitly.
pub const EGRESS_ENV: &str = "AGENTKERNEL_EGRESS";

/// The egress helper: `$AGENTKERNEL_EGRESS`, else `ak-egress` beside this executable.
pub fn egress_path() -> PathBuf {
    if let Some(path) = std::env::var_os(EGRESS_ENV) {
        return PathBuf::from(path);
    }
    exe_dir().map_or_else(|| PathBuf::from("ak-egress"), |dir| dir.join("ak-egress"))
}

/// Environment variable naming the registry database (tests use private ones).
pub const REGISTRY_ENV: &str = "AGENTKERNEL_REGISTRY";

fn registry_path() -> PathBuf {
    std::env::var_os(REGISTRY_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(ak_service::Registry::default_path)
}

/// The directory of the registry, the daemon's socket and its log.
pub fn state_dir() -> PathBuf {
    let registry = registry_path();
    registry
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The process's settings: the config files that apply in its current directory, read
/// once. Bad settings end the process with a usage error (exit code 2).
pub fn settings() -> &'static Settings {
    static SETTINGS: std::sync::OnceLock<Settings> = std::sync::OnceLock::new();
    SETTINGS.get_or_init(|| {
        let loaded = std::env::current_dir()
            .map_err(ak_core::ConfigError::CurrentDir)
            .and_then(|cwd| Settings::load(&cwd));
        match loaded {
            Ok(settings) => settings,
            Err(e) => crate::exit::fail(crate::exit::USAGE, &e.into()),
        }
    })
}

pub fn service() -> Service {
    let service = service_with(&settings().user);
    // One set-up at a time, said outright: left to its default, the limit is sized by the
    // CPUs, which reads the cgroup's CPU quota (four files, ~75 µs of a cold `run`).
    if ONE_AT_A_TIME.load(Ordering::Relaxed) {
        service.with_setup_limit(1)
    } else {
        service
    }
}

/// The service of a long-lived host (`serve`, the daemon): remote callers get the `[api]`
/// policy, pools of `pools` serve pooled runs, and backend work stays off the async
/// workers.
pub fn serving_service(pools: PoolConfig) -> Result<Service, ak_core::ConfigError> {
    let config = &settings().user;
    let policy = CallerPolicy::from_options(&config.api)?;
    Ok(service_with(config).with_policy(policy).serving(pools))
}

fn service_with(config: &ConfigFile) -> Service {
    let container = |kind: BackendKind, socket: Option<String>| {
        Arc::new(
            DockerBackend::new(kind, agent_path(), socket)
                .with_pull_progress(pull_progress())
                .with_egress(ak_docker::EgressSetup(egress_settings(config))),
        )
    };
    // A bad [microvm] section makes only that backend unusable (saying why), never the
    // others' sandboxes.
    let microvm: Arc<dyn ak_core::Backend> = match microvm_backend(config) {
        Ok(backend) => Arc::new(backend),
        Err(error) => Arc::new(UnusableBackend {
            kind: BackendKind::Microvm,
            reason: format!("{error:#}"),
            // A bad [microvm] section is the user's input: reported as such (exit 2, 400).
            settings: config.microvm_options().is_err().then(|| config.clone()),
        }),
    };
    let egress = egress_settings(config);
    Service::new(
        vec![
            Arc::new(
                NativeBackend::new(agent_path())
                    .with_egress(egress.clone())
                    .with_netns_ahead(!LONG_LIVED.load(Ordering::Relaxed)),
            ),
            Arc::new(GvisorBackend::new(agent_path(), config.gvisor.clone()).with_egress(egress)),
            container(BackendKind::Docker, config.docker.socket.clone()),
            container(BackendKind::Podman, config.podman.socket.clone()),
            microvm,
        ],
        registry_path(),
    )
    .with_images(image_setup(config))
}

/// The image store under the state directory. Its layers are owned as the native
/// backend's user namespace maps them: from root, the range mapped to uid 0 of root-run
/// sandboxes; unprivileged, this user's own uid (every owner collapses to it).
fn image_setup(config: &ConfigFile) -> ak_service::ImageSetup {
    let uid = rustix::process::geteuid();
    let ids = if uid.is_root() {
        ak_image::IdShift {
            base: ak_native::ROOT_MAPPED_BASE,
            range: 65536,
        }
    } else {
        ak_image::IdShift {
            base: uid.as_raw(),
            range: 1,
        }
    };
    ak_service::ImageSetup {
        dir: state_dir().join("images"),
        ids,
        options: ak_service::pull_options(&config.images, dirs::home_dir().as_deref())
            .map_err(|e| e.to_string()),
    }
}

/// The egress helper and what it is told, for every backend that enforces allowlists.
fn egress_settings(config: &ConfigFile) -> ak_egress::Egress {
    ak_egress::Egress {
        helper: egress_path(),
        upstream_dns: config.network.upstream_dns,
        audit_dir: Some(state_dir()),
        on_leak: config.network.on_leak,
        upstream_ca: config.network.upstream_ca.clone(),
    }
}

/// The microvm backend as the user's config sets it up.
pub fn microvm_backend(config: &ConfigFile) -> anyhow::Result<MicrovmBackend> {
    let options = config.microvm_options()?;
    let docker = DockerBackend::new(
        BackendKind::Docker,
        agent_path(),
        config.docker.socket.clone(),
    )
    .with_pull_progress(pull_progress());
    Ok(MicrovmBackend::new(agent_path(), &options)?
        .with_image_exporter(Arc::new(EngineImages(docker)))
        .with_egress(egress_settings(config)))
}

/// A backend this build has but the settings make unusable: every use says why.
#[derive(Debug)]
struct UnusableBackend {
    kind: BackendKind,
    reason: String,
    /// The settings whose backend section is wrong, when that is why.
    settings: Option<ConfigFile>,
}

impl UnusableBackend {
    fn error(&self) -> ak_core::BackendError {
        if let Some(Err(error)) = self.settings.as_ref().map(ConfigFile::microvm_options) {
            return ak_core::BackendError::Misconfigured(error);
        }
        ak_core::BackendError::Unavailable {
            backend: self.kind.to_string(),
            reason: self.reason.clone(),
        }
    }
}

#[async_trait::async_trait]
impl ak_core::Backend for UnusableBackend {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn probe(&self) -> ak_core::BackendProbe {
        ak_core::BackendProbe {
            backend: self.kind,
            usable: false,
            reason: self.reason.clone(),
            details: Vec::new(),
        }
    }

    async fn create(
        &self,
        _spec: &ak_core::SandboxSpec,
        _lifetime: ak_core::backend::Lifetime,
    ) -> Result<Box<dyn ak_core::Sandbox>, ak_core::BackendError> {
        Err(self.error())
    }

    async fn attach(
        &self,
        _handle: &ak_core::backend::SandboxHandle,
    ) -> Result<Box<dyn ak_core::Sandbox>, ak_core::BackendError> {
        Err(self.error())
    }

    async fn release(
        &self,
        _handle: &ak_core::backend::SandboxHandle,
    ) -> Result<(), ak_core::BackendError> {
        Err(self.error())
    }
}

/// Container images for microVMs, exported through the Docker engine's API.
#[derive(Debug)]
struct EngineImages(DockerBackend);

#[async_trait::async_trait]
impl ak_microvm::ImageExporter for EngineImages {
    async fn image_id(&self, image: &str) -> Result<String, String> {
        self.0.image_id(image).await.map_err(|e| e.to_string())
    }

    async fn export(&self, image: &str, into: &std::path::Path) -> Result<(), String> {
        self.0
            .export_root(image, into)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Draws image pulls as a progress bar on stderr (hidden when stderr is not a terminal).
fn pull_progress() -> ProgressSink {
    let bar: Mutex<Option<ProgressBar>> = Mutex::new(None);
    Arc::new(move |progress: &PullProgress| {
        let mut bar = bar.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let bar = bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(0).with_message(format!("pulling {}", progress.image));
            if let Ok(style) =
                ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {wide_msg}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        bar.set_length(progress.total);
        bar.set_position(progress.current);
        if progress.done {
            bar.finish_and_clear();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn the_musl_agent_is_chosen_unless_a_newer_build_replaced_the_glibc_one() {
        let earlier = SystemTime::now() - Duration::from_secs(60);
        let later = SystemTime::now();
        // (the agents in the directory and when each was written, the one chosen); with
        // neither, the glibc name, so that the error names what `cargo build` makes.
        let cases: [(&[(&str, SystemTime)], &str); 5] = [
            (&[(AGENT, later)], AGENT),
            (&[(AGENT, earlier), (MUSL_AGENT, later)], MUSL_AGENT),
            (&[(MUSL_AGENT, earlier), (AGENT, later)], AGENT),
            (&[(MUSL_AGENT, earlier)], MUSL_AGENT),
            (&[], AGENT),
        ];
        for (agents, chosen) in cases {
            let dir = tempfile::tempdir().unwrap();
            for (name, modified) in agents {
                let file = std::fs::File::create(dir.path().join(name)).unwrap();
                file.set_modified(*modified).unwrap();
            }
            assert_eq!(
                agent_beside(dir.path()),
                dir.path().join(chosen),
                "{agents:?}"
            );
        }
    }
}
