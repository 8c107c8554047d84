//! Configuration: the user's config file, the project's `agentkernel.toml`, environment and
//! flags, merged in one place (flags > environment > project file > user file > profile
//! defaults) and resolved into a [`SandboxSpec`]. Unknown keys are errors.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::egress::{Allowlist, AllowlistEntries};
use crate::error::ConfigError;
use crate::image::ImageRef;
use crate::policy::{NetworkMode, Profile};
use crate::resources::{parse_cpus, parse_duration, parse_memory_limit, parse_pids};
use crate::secrets::Secrets;
use crate::source::GitSource;
use crate::spec::{DEFAULT_WORKDIR, Mount, SandboxSpec, parse_env_entry, validate_workdir};
use crate::volume::VolumeMount;

/// Name of the per-project config file, looked up from the current directory upwards.
pub const PROJECT_FILE: &str = "agentkernel.toml";
/// The backend of a sandbox whose settings name none.
pub const DEFAULT_BACKEND: BackendKind = BackendKind::Native;

/// Environment variable naming the user config file (instead of the XDG location).
pub const USER_CONFIG_ENV: &str = "AGENTKERNEL_CONFIG";

/// One config file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub sandbox: SandboxOptions,
    /// Read from the user's file only: there is one daemon per user, whatever the project.
    #[serde(default)]
    pub daemon: DaemonOptions,
    /// `[docker]`: the Docker engine's socket (user's file only, like `[daemon]`).
    #[serde(default)]
    pub docker: EngineOptions,
    /// `[podman]`: the Podman engine's socket.
    #[serde(default)]
    pub podman: EngineOptions,
    /// `[gvisor]`: which `runsc`, and which platform (user's file only).
    #[serde(default)]
    pub gvisor: GvisorOptions,
    /// Read from the user's file only, like `[daemon]`.
    #[serde(default)]
    pub api: ApiOptions,
    /// `[microvm]`: which hypervisor, and the user's own kernel (user's file only). Kept
    /// as written and checked when the microvm backend is built
    /// ([`ConfigFile::microvm_options`]), so that a mistake there cannot break other
    /// backends' sandboxes.
    #[serde(default)]
    pub microvm: toml::Table,
    /// `[images]`: how the image store reaches registries (user's file only).
    #[serde(default)]
    pub images: crate::image_options::ImageOptions,
    /// `[network]`: how the host side of the allowlist network works (user's file only).
    #[serde(default)]
    pub network: NetworkOptions,
}

/// `[network]` in the user's config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOptions {
    /// The resolver the egress helper asks for allowed names (`IP:PORT`; default: the
    /// host's first `nameserver`). Tests point it at a resolver of their own.
    pub upstream_dns: Option<std::net::SocketAddr>,
    /// What a secret's placeholder sent to a host not its own leads to: `block` (the
    /// connection is refused and audited; the default) or `kill` (the sandbox is stopped
    /// too).
    #[serde(default)]
    pub on_leak: crate::secrets::OnLeak,
    /// A PEM file of root certificates trusted for secret hosts besides the host's own
    /// (a company proxy's CA; tests' own CA).
    pub upstream_ca: Option<PathBuf>,
}

/// The hypervisor of microVMs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MicrovmDriver {
    #[default]
    Qemu,
    Firecracker,
}

impl std::fmt::Display for MicrovmDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MicrovmDriver::Qemu => "qemu",
            MicrovmDriver::Firecracker => "firecracker",
        })
    }
}

/// The microvm backend's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MicrovmOptions {
    /// `qemu` (the default) or `firecracker`; anything else is an error when the file is
    /// read.
    pub driver: Option<MicrovmDriver>,
    /// An uncompressed x86_64 `vmlinux` to boot instead of the one `setup` builds.
    pub kernel: Option<PathBuf>,
    /// The firecracker executable, when not on PATH.
    pub firecracker: Option<PathBuf>,
    /// Whether one-shot VMs without network start from a template's memory state
    /// instead of booting (QEMU; default `true`).
    pub restore_one_shot: Option<bool>,
}

/// How gVisor's `runsc` intercepts the sandbox's system calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GvisorPlatform {
    Systrap,
    Ptrace,
    Kvm,
}

impl GvisorPlatform {
    pub fn as_str(self) -> &'static str {
        match self {
            GvisorPlatform::Systrap => "systrap",
            GvisorPlatform::Ptrace => "ptrace",
            GvisorPlatform::Kvm => "kvm",
        }
    }
}

impl std::fmt::Display for GvisorPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The gVisor backend's settings; unset means chosen per host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GvisorOptions {
    /// The `runsc` executable, when not the one on PATH.
    pub runsc: Option<PathBuf>,
    /// The platform, instead of the best one this host and `runsc` support.
    pub platform: Option<GvisorPlatform>,
}

/// Where a container engine listens (`socket = "/run/docker.sock"` or `unix:///…`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EngineOptions {
    pub socket: Option<String>,
}

impl ConfigFile {
    /// The `[microvm]` settings, checked.
    pub fn microvm_options(&self) -> Result<MicrovmOptions, ConfigError> {
        toml::Value::Table(self.microvm.clone())
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: user_config_file().unwrap_or_default(),
                message: format!("[microvm] {}", e.message()),
            })
    }
}

/// Settings of the API (`[api]` in the user's config file): its token, and what remote
/// callers (HTTP, MCP) may ask for.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiOptions {
    /// The bearer token clients must send; `AGENTKERNEL_API_KEY` overrides it.
    pub api_key: Option<String>,
    /// The least restrictive profile remote callers may use (default `moderate`).
    pub max_profile: Option<String>,
    /// The widest network remote callers' sandboxes may have: `"none"`, `"allowlist"` or
    /// `"open"`; the older booleans mean `"open"` (`true`) and `"none"` (`false`). Default
    /// `"open"`, or `"allowlist"` when `allow_hosts`, `allow_cidrs` or `allow_ports` is set.
    pub network: Option<NetworkSetting>,
    /// Host names, `*.domain` patterns or presets: a remote caller's allowlist may name
    /// only hosts these cover (unset: any host).
    pub allow_hosts: Option<Vec<String>>,
    /// CIDRs a remote caller's allowed CIDRs must lie within.
    pub allow_cidrs: Option<Vec<String>>,
    /// Ports a remote caller's allowlist may open (its ports must be among them).
    pub allow_ports: Option<Vec<u16>>,
    /// Most memory a remote caller's sandbox may have (default: the host's memory).
    pub max_memory: Option<String>,
    /// Most CPUs (default: the host's CPUs).
    pub max_cpus: Option<f64>,
    /// Most processes (default: the kernel's limit).
    pub max_pids: Option<u64>,
    /// The git protocols remote callers' `source_url`s may use (default `["https"]`; `ssh`
    /// would clone with this user's keys, `file` would read this host's repositories).
    pub source_protocols: Option<Vec<String>>,
    /// Whether remote callers' secrets may take values from the secret store (default
    /// false: the caller chooses where a secret goes).
    pub secrets_from_store: Option<bool>,
    /// Whether remote callers' secrets may take values from the serving process's
    /// environment (default false).
    pub secrets_from_env: Option<bool>,
}

/// Environment variable holding the API's bearer token.
pub const API_KEY_ENV: &str = "AGENTKERNEL_API_KEY";

impl ApiOptions {
    /// The API token: `$AGENTKERNEL_API_KEY`, else `api_key` from these options (the
    /// user's config file). An empty token is an error, never "no token".
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        let token = match std::env::var(API_KEY_ENV) {
            Ok(token) => Some(token),
            Err(std::env::VarError::NotPresent) => self.api_key.clone(),
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(ConfigError::InvalidApiKey("it is not valid UTF-8"));
            }
        };
        match token {
            Some(token) if token.trim().is_empty() => {
                Err(ConfigError::InvalidApiKey("it is empty"))
            }
            Some(token) if token.chars().any(|c| c.is_whitespace() || c.is_control()) => Err(
                ConfigError::InvalidApiKey("it contains whitespace or control characters"),
            ),
            other => Ok(other),
        }
    }
}

/// Warm pool sizes of the daemon (`[daemon]` in the user's config file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonOptions {
    /// Spares kept ready per pool.
    pub min_warm: Option<usize>,
    /// Spares a pool may hold at most.
    pub max_warm: Option<usize>,
    /// Pool sandboxes across all pools, spares and handed out.
    pub max_total: Option<usize>,
}

/// Largest pool size accepted in the config.
const MAX_POOL: usize = 4096;

impl DaemonOptions {
    /// These options (the user's config file's), checked: each at most 4096, `min_warm` not
    /// above `max_warm`, `max_total` at least 1.
    pub fn checked(self) -> Result<DaemonOptions, ConfigError> {
        let options = self;
        let invalid = |reason: String| ConfigError::Parse {
            path: user_config_file().unwrap_or_default(),
            message: format!("[daemon] {reason}"),
        };
        for (name, value) in [
            ("min_warm", options.min_warm),
            ("max_warm", options.max_warm),
            ("max_total", options.max_total),
        ] {
            if value.is_some_and(|v| v > MAX_POOL) {
                return Err(invalid(format!("{name} must be at most {MAX_POOL}")));
            }
        }
        if let (Some(min), Some(max)) = (options.min_warm, options.max_warm)
            && min > max
        {
            return Err(invalid(format!(
                "min_warm ({min}) is above max_warm ({max})"
            )));
        }
        if options.max_total == Some(0) {
            return Err(invalid("max_total must be at least 1".into()));
        }
        Ok(options)
    }
}

/// Sandbox settings as the user writes them, in a file or as flags. Every field is optional
/// so that layers can be merged; [`resolve`] validates them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxOptions {
    pub backend: Option<String>,
    pub image: Option<String>,
    pub profile: Option<String>,
    pub memory: Option<String>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    pub timeout: Option<String>,
    /// `false` or `"none"` gives the sandbox no network whatever its profile says; `true`
    /// or `"open"` outbound network to anywhere; `"allowlist"` only what `allow_hosts`,
    /// `allow_cidrs` and `allow_ports` name.
    pub network: Option<NetworkSetting>,
    /// Host names, `*.domain` patterns or presets (`pypi`, `npm`, `crates`, `github`,
    /// `debian`) an allowlist sandbox may reach; lists of every layer are joined.
    pub allow_hosts: Option<Vec<String>>,
    /// CIDRs (or single addresses) an allowlist sandbox may reach.
    pub allow_cidrs: Option<Vec<String>>,
    /// Destination ports an allowlist sandbox may connect to (default: any).
    pub allow_ports: Option<Vec<u16>>,
    /// `KEY=VALUE` entries; a higher layer's entry replaces a lower one's with the same key.
    pub env: Option<Vec<String>>,
    pub workdir: Option<String>,
    pub mount_cwd: Option<bool>,
    /// `NAME:/path[:ro|:rw|:shared]` entries. Flags and requests only: a config file (a
    /// project's may come with the repository) cannot hand a sandbox the user's volumes.
    #[serde(skip)]
    pub volumes: Option<Vec<String>>,
    /// A repository cloned into the workdir before the sandbox starts (flags and requests
    /// only, as volumes).
    #[serde(skip)]
    pub source: Option<GitSource>,
    /// `KEY=value:host`, `KEY:host` or `KEY:host:header` entries (flags and requests only:
    /// a config file is no place for a secret, and a project's could send the user's
    /// secrets to a host of its choosing).
    #[serde(skip)]
    pub secrets: Option<Vec<String>>,
    /// Keys whose values the sandbox gets as files (flags and requests only, as secrets).
    #[serde(skip)]
    pub secret_files: Option<Vec<String>>,
}

impl SandboxOptions {
    /// `self` over `lower`: each field set here wins; env lists are merged by key.
    pub fn over(self, lower: SandboxOptions) -> SandboxOptions {
        let env = match (lower.env, self.env) {
            (Some(mut base), Some(top)) => {
                base.extend(top);
                Some(base)
            }
            (base, top) => top.or(base),
        };
        fn join<T>(lower: Option<Vec<T>>, top: Option<Vec<T>>) -> Option<Vec<T>> {
            match (lower, top) {
                (Some(mut base), Some(top)) => {
                    base.extend(top);
                    Some(base)
                }
                (base, top) => top.or(base),
            }
        }
        SandboxOptions {
            allow_hosts: join(lower.allow_hosts, self.allow_hosts),
            allow_cidrs: join(lower.allow_cidrs, self.allow_cidrs),
            allow_ports: join(lower.allow_ports, self.allow_ports),
            backend: self.backend.or(lower.backend),
            image: self.image.or(lower.image),
            profile: self.profile.or(lower.profile),
            memory: self.memory.or(lower.memory),
            cpus: self.cpus.or(lower.cpus),
            pids: self.pids.or(lower.pids),
            timeout: self.timeout.or(lower.timeout),
            network: self.network.or(lower.network),
            env,
            workdir: self.workdir.or(lower.workdir),
            mount_cwd: self.mount_cwd.or(lower.mount_cwd),
            volumes: self.volumes.or(lower.volumes),
            source: self.source.or(lower.source),
            secrets: self.secrets.or(lower.secrets),
            secret_files: self.secret_files.or(lower.secret_files),
        }
    }
}

/// How a layer sets the network: a boolean (the older form: `false` is `none`, `true` is
/// `open`) or a mode's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum NetworkSetting {
    Enabled(bool),
    Mode(NetworkMode),
}

impl NetworkSetting {
    pub fn mode(self) -> NetworkMode {
        match self {
            NetworkSetting::Enabled(false) => NetworkMode::None,
            NetworkSetting::Enabled(true) => NetworkMode::Outbound,
            NetworkSetting::Mode(mode) => mode,
        }
    }
}

/// The allowlist the options name (presets expanded, every entry checked).
fn allowlist(options: &SandboxOptions) -> Result<Allowlist, ConfigError> {
    Allowlist::from_entries(&entries(
        &options.allow_hosts,
        &options.allow_cidrs,
        &options.allow_ports,
    ))
}

/// Optional entry lists (as config layers and requests hold them) as one set of entries.
pub fn entries(
    hosts: &Option<Vec<String>>,
    cidrs: &Option<Vec<String>>,
    ports: &Option<Vec<u16>>,
) -> AllowlistEntries {
    AllowlistEntries {
        hosts: hosts.clone().unwrap_or_default(),
        cidrs: cidrs.clone().unwrap_or_default(),
        ports: ports.clone().unwrap_or_default(),
    }
}

/// Reads and parses one config file.
pub fn read_config_file(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.message().to_string(),
    })
}

/// The user's config file, if there is one to read: `$AGENTKERNEL_CONFIG` (which must
/// exist) or `~/.config/agentkernel/config.toml` (which may not).
pub fn user_config_file() -> Option<PathBuf> {
    if let Some(named) = std::env::var_os(USER_CONFIG_ENV) {
        return Some(PathBuf::from(named));
    }
    dirs::config_dir()
        .map(|d| d.join("agentkernel").join("config.toml"))
        .filter(|path| path.is_file())
}

/// The config files that apply in `cwd`, lowest precedence first.
pub fn config_files(cwd: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = user_config_file().into_iter().collect();
    if let Some(project) = cwd
        .ancestors()
        .map(|dir| dir.join(PROJECT_FILE))
        .find(|candidate| candidate.is_file())
    {
        files.push(project);
    }
    files
}

/// Every config file that applies to a process, read once: the user's file (all its
/// tables) and the project's `[sandbox]`. Front ends load it once and take what they need
/// from it; flags and environment go over it ([`Settings::sandbox_options`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    /// The user's config file (the defaults when there is none).
    pub user: ConfigFile,
    /// The project's `[sandbox]`, when an `agentkernel.toml` applies.
    project: Option<SandboxOptions>,
}

impl Settings {
    /// Reads the user's file and the project file that applies in `cwd`. A project file
    /// holds only `[sandbox]`: the other tables configure this user's host (their daemon,
    /// engines, API policy, hypervisor), which a checked-out repository must not change;
    /// they are refused rather than dropped, so nobody believes they apply.
    pub fn load(cwd: &Path) -> Result<Settings, ConfigError> {
        let user_path = user_config_file();
        let user = match &user_path {
            Some(path) => read_config_file(path)?,
            None => ConfigFile::default(),
        };
        let project = match config_files(cwd)
            .into_iter()
            .find(|file| Some(file) != user_path.as_ref())
        {
            Some(path) => {
                let config = read_config_file(&path)?;
                refuse_user_tables(&path, &config)?;
                Some(config.sandbox)
            }
            None => None,
        };
        Ok(Settings { user, project })
    }

    /// The user's file only, without any project's (a daemon serves every project).
    pub fn user_only(&self) -> Settings {
        Settings {
            user: self.user.clone(),
            project: None,
        }
    }

    /// Sandbox options: `flags` over the project file over the user's file.
    pub fn sandbox_options(&self, flags: SandboxOptions) -> SandboxOptions {
        let merged = match &self.project {
            Some(project) => project.clone().over(self.user.sandbox.clone()),
            None => self.user.sandbox.clone(),
        };
        flags.over(merged)
    }

    /// The API's bearer token: `$AGENTKERNEL_API_KEY`, else `[api] api_key`.
    pub fn api_token(&self) -> Result<Option<String>, ConfigError> {
        self.user.api.token()
    }

    /// `[daemon]`, checked.
    pub fn daemon(&self) -> Result<DaemonOptions, ConfigError> {
        self.user.daemon.checked()
    }

    /// `[images]`, checked.
    pub fn images(&self) -> Result<crate::image_options::ImageOptions, ConfigError> {
        self.user.images.checked()
    }
}

/// Merges the config files that apply in `cwd` under `flags` (see [`Settings::load`]).
pub fn load_options(flags: SandboxOptions, cwd: &Path) -> Result<SandboxOptions, ConfigError> {
    Ok(Settings::load(cwd)?.sandbox_options(flags))
}

/// Fails when a project file sets a table that belongs in the user's config file.
fn refuse_user_tables(path: &Path, config: &ConfigFile) -> Result<(), ConfigError> {
    let tables = [
        ("daemon", config.daemon != DaemonOptions::default()),
        ("docker", config.docker != EngineOptions::default()),
        ("podman", config.podman != EngineOptions::default()),
        ("gvisor", config.gvisor != GvisorOptions::default()),
        ("api", config.api != ApiOptions::default()),
        ("microvm", !config.microvm.is_empty()),
        (
            "images",
            config.images != crate::image_options::ImageOptions::default(),
        ),
        ("network", config.network != NetworkOptions::default()),
    ];
    match tables.iter().find(|(_, set)| *set) {
        Some((table, _)) => Err(ConfigError::Parse {
            path: path.to_path_buf(),
            message: format!(
                "[{table}] belongs in the user's config file, not in a project's {PROJECT_FILE}"
            ),
        }),
        None => Ok(()),
    }
}

/// Validates merged options into a complete spec.
pub fn resolve(
    options: SandboxOptions,
    cwd: &Path,
    id: String,
) -> Result<SandboxSpec, ConfigError> {
    let profile: Profile = options.profile.as_deref().unwrap_or("moderate").parse()?;
    let backend: BackendKind = match options.backend.as_deref() {
        Some(name) => name.parse()?,
        None => DEFAULT_BACKEND,
    };
    // Backends that run OCI images choose one by the command when none is named.
    let image = match options.image.as_deref() {
        Some(image) => ImageRef::parse(image, cwd)?,
        // A VM boots a root file system of its own: the one `setup` builds.
        None if backend == BackendKind::Microvm => {
            ImageRef::Oci(crate::image::MICROVM_BASE_IMAGE.to_string())
        }
        None if backend.runs_oci_images() => ImageRef::Auto,
        None => ImageRef::Host,
    };

    let mut policy = profile.policy();
    let mut allowlist = allowlist(&options)?;
    let secrets = Secrets::parse(
        options.secrets.as_deref().unwrap_or_default(),
        options.secret_files.as_deref().unwrap_or_default(),
    )?;
    if !secrets.rules.is_empty() {
        // A placeholder may leave the sandbox only through the egress helper, which knows
        // where it may go: secrets imply the allowlist network, with their hosts on it.
        match options.network.map(NetworkSetting::mode) {
            Some(NetworkMode::Allowlist) | None => {}
            Some(mode) => return Err(ConfigError::SecretsWithoutAllowlist(mode.as_str())),
        }
        for rule in &secrets.rules {
            allowlist.add_host(&rule.host.to_string())?;
        }
    }
    let named = !allowlist.is_empty() || !allowlist.ports.is_empty();
    match options.network.map(NetworkSetting::mode) {
        Some(NetworkMode::Allowlist) if allowlist.is_empty() => {
            return Err(ConfigError::EmptyAllowlist);
        }
        // Allowed hosts with no mode named mean an allowlist, never the open network.
        Some(NetworkMode::Allowlist) | None if named => {
            policy.network = NetworkMode::Allowlist;
            if allowlist.is_empty() {
                return Err(ConfigError::EmptyAllowlist);
            }
            policy.allowlist = allowlist;
        }
        // Entries and the open network contradict each other: the user has a mistake to
        // hear about, not a wider network than they wrote down.
        Some(NetworkMode::Outbound) if named => {
            return Err(ConfigError::AllowlistWithoutMode(
                NetworkMode::Outbound.as_str(),
            ));
        }
        // `none` is narrower than any allowlist: entries from a lower layer just go unused.
        Some(mode) => policy.network = mode,
        // A microVM gets no network device unless asked for one.
        None if backend == BackendKind::Microvm => policy.network = NetworkMode::None,
        None => {}
    }

    if policy.network == NetworkMode::Allowlist && !backend.enforces_allowlist() {
        return Err(ConfigError::AllowlistUnsupported(backend.as_str()));
    }

    let mut resources = profile.default_resources();
    if let Some(memory) = &options.memory {
        resources.memory_bytes = parse_memory_limit(memory)?;
    }
    if let Some(cpus) = options.cpus {
        resources.cpus = Some(parse_cpus(cpus)?);
    }
    if let Some(pids) = options.pids {
        resources.pids = parse_pids(pids)?;
    }
    let timeout = options.timeout.as_deref().map(parse_duration).transpose()?;

    let mut env: Vec<(String, String)> = Vec::new();
    for entry in options.env.iter().flatten() {
        let (key, value) = parse_env_entry(entry)?;
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
    }
    // A secret's variable holds its placeholder, whatever `env` said, and TLS clients
    // trust the sandbox CA that intercepts the secret hosts.
    for rule in &secrets.rules {
        env.retain(|(k, _)| *k != rule.key);
        env.push((rule.key.clone(), rule.placeholder.clone()));
    }
    if !secrets.rules.is_empty() {
        for (key, value) in crate::secrets::trust_env() {
            env.retain(|(k, _)| *k != key);
            env.push((key, value));
        }
    }

    let mut mounts = Vec::new();
    let mut workdir = PathBuf::from(DEFAULT_WORKDIR);
    if options.mount_cwd == Some(true) {
        let host = cwd.canonicalize().map_err(ConfigError::CurrentDir)?;
        if host == Path::new("/") {
            return Err(ConfigError::InvalidPath {
                path: "/".into(),
                reason: "--mount-cwd would share the whole host root; run it from a project directory",
            });
        }
        mounts.push(Mount {
            host: host.clone(),
            target: host.clone(),
            writable: true,
        });
        workdir = host;
    }
    if let Some(dir) = &options.workdir {
        workdir = validate_workdir(dir)?;
    }
    let volumes = VolumeMount::parse_all(options.volumes.as_deref().unwrap_or_default())?;
    if let Some(volume) = volumes
        .iter()
        .find(|v| mounts.iter().any(|m| m.target == v.target))
    {
        return Err(ConfigError::InvalidVolume {
            entry: volume.to_string(),
            reason: format!("{} is already a host directory's", volume.target.display()),
        });
    }

    Ok(SandboxSpec {
        hostname: format!("ak-{}", &id[..id.len().min(12)]),
        root_dir: None,
        root_layer: None,
        id,
        backend,
        image,
        resources,
        policy,
        env,
        workdir,
        mounts,
        volumes,
        source: options.source,
        timeout,
        secrets: secrets.rules,
        secret_files: secrets.files,
        secret_values: secrets.values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn resolve_default(options: SandboxOptions) -> Result<SandboxSpec, ConfigError> {
        resolve(options, Path::new("/"), "0123456789abcdef".into())
    }

    #[test]
    fn a_project_file_may_not_set_the_users_tables() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join(PROJECT_FILE);
        std::fs::write(&project, "[sandbox]\nprofile = \"restrictive\"\n").unwrap();
        let options = load_options(SandboxOptions::default(), dir.path()).unwrap();
        assert_eq!(options.profile.as_deref(), Some("restrictive"));
        std::fs::write(&project, "[api]\nmax_profile = \"permissive\"\n").unwrap();
        let error = load_options(SandboxOptions::default(), dir.path()).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("[api] belongs in the user's config file"),
            "{error}"
        );
    }

    #[test]
    fn the_microvm_driver_is_one_of_the_known_ones() {
        let config: ConfigFile = toml::from_str("[microvm]\ndriver = \"firecracker\"\n").unwrap();
        let options = config.microvm_options().unwrap();
        assert_eq!(options.driver, Some(MicrovmDriver::Firecracker));
        // A bad [microvm] leaves the rest of the file usable; only its backend fails.
        let config: ConfigFile = toml::from_str(
            "[sandbox]\nprofile = \"restrictive\"\n[microvm]\ndriver = \"kvmtool\"\n",
        )
        .unwrap();
        assert_eq!(config.sandbox.profile.as_deref(), Some("restrictive"));
        let error = config.microvm_options().unwrap_err();
        assert!(error.to_string().contains("[microvm]"), "{error}");
    }

    #[test]
    fn defaults_are_moderate_native_host() {
        let spec = resolve_default(SandboxOptions::default()).unwrap();
        assert_eq!(spec.policy.profile, Profile::Moderate);
        assert_eq!(spec.backend, BackendKind::Native);
        assert_eq!(spec.image, ImageRef::Host);
        assert_eq!(spec.workdir, PathBuf::from(DEFAULT_WORKDIR));
        assert_eq!(spec.hostname, "ak-0123456789ab");
    }

    #[test]
    fn flags_override_profile_defaults() {
        let spec = resolve_default(SandboxOptions {
            profile: Some("restrictive".into()),
            memory: Some("64M".into()),
            pids: Some(32),
            timeout: Some("2s".into()),
            network: Some(NetworkSetting::Enabled(true)),
            env: Some(vec!["A=1".into(), "A=2".into(), "B=3".into()]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(spec.resources.memory_bytes, 64 << 20);
        assert_eq!(spec.resources.pids, 32);
        assert_eq!(spec.timeout, Some(Duration::from_secs(2)));
        assert_eq!(spec.policy.network, NetworkMode::Outbound);
        assert_eq!(
            spec.env,
            vec![("A".into(), "2".into()), ("B".into(), "3".into())]
        );
    }

    #[test]
    fn bad_values_are_errors_not_defaults() {
        let cases = [
            SandboxOptions {
                profile: Some("strict".into()),
                ..Default::default()
            },
            SandboxOptions {
                memory: Some("lots".into()),
                ..Default::default()
            },
            SandboxOptions {
                backend: Some("vmware".into()),
                ..Default::default()
            },
            SandboxOptions {
                workdir: Some("../x".into()),
                ..Default::default()
            },
            SandboxOptions {
                image: Some("/no/such/dir".into()),
                ..Default::default()
            },
        ];
        for case in cases {
            assert!(resolve_default(case.clone()).is_err(), "{case:?}");
        }
    }

    #[test]
    fn out_of_range_limits_are_refused() {
        let refused = |options: SandboxOptions| match resolve_default(options.clone()) {
            Err(error) => error.to_string(),
            Ok(_) => panic!("accepted: {options:?}"),
        };
        let message = refused(SandboxOptions {
            memory: Some("9999999T".into()),
            ..Default::default()
        });
        assert!(
            message.contains("invalid memory size '9999999T'"),
            "{message}"
        );
        let message = refused(SandboxOptions {
            memory: Some("1M".into()),
            ..Default::default()
        });
        assert!(message.contains("smallest workable"), "{message}");
        let message = refused(SandboxOptions {
            pids: Some(4_194_305),
            ..Default::default()
        });
        assert!(
            message.contains("invalid pids limit '4194305'"),
            "{message}"
        );
        let message = refused(SandboxOptions {
            cpus: Some(0.0001),
            ..Default::default()
        });
        assert!(message.contains("invalid CPU count '0.0001'"), "{message}");
        let message = refused(SandboxOptions {
            env: Some(vec!["MY VAR=1".into()]),
            ..Default::default()
        });
        assert!(message.contains("invalid environment entry"), "{message}");
        for workdir in ["/", "/usr/src", "/etc"] {
            let message = refused(SandboxOptions {
                workdir: Some(workdir.into()),
                ..Default::default()
            });
            assert!(message.contains("writable"), "{workdir}: {message}");
        }
        let spec = resolve_default(SandboxOptions {
            memory: Some("8M".into()),
            pids: Some(4_194_304),
            cpus: Some(0.001),
            workdir: Some("/srv/app".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(spec.resources.memory_bytes, 8 << 20);
        assert_eq!(spec.workdir, PathBuf::from("/srv/app"));
    }

    #[test]
    fn upper_layer_wins_and_env_merges() {
        let lower = SandboxOptions {
            profile: Some("permissive".into()),
            memory: Some("1G".into()),
            env: Some(vec!["A=1".into()]),
            ..Default::default()
        };
        let upper = SandboxOptions {
            profile: Some("restrictive".into()),
            env: Some(vec!["B=2".into()]),
            ..Default::default()
        };
        let merged = upper.over(lower);
        assert_eq!(merged.profile.as_deref(), Some("restrictive"));
        assert_eq!(merged.memory.as_deref(), Some("1G"));
        assert_eq!(merged.env, Some(vec!["A=1".into(), "B=2".into()]));
    }

    #[test]
    fn unknown_keys_and_bad_toml_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentkernel.toml");
        std::fs::write(&path, "[sandbox]\nprofil = \"moderate\"\n").unwrap();
        let err = read_config_file(&path).unwrap_err();
        assert!(err.to_string().contains("profil"), "{err}");
        std::fs::write(&path, "[sandbox\n").unwrap();
        assert!(read_config_file(&path).is_err());
        std::fs::write(&path, "[sandbox]\nmemory = \"256M\"\n").unwrap();
        assert_eq!(
            read_config_file(&path).unwrap().sandbox.memory.as_deref(),
            Some("256M")
        );
    }

    #[test]
    fn api_options_parse_strictly() {
        let file: ConfigFile = toml::from_str("[api]\napi_key = \"k\"\n").unwrap();
        assert_eq!(file.api.api_key.as_deref(), Some("k"));
        assert!(toml::from_str::<ConfigFile>("[api]\napikey = \"k\"\n").is_err());
    }

    #[test]
    fn daemon_options_parse_strictly() {
        let file: ConfigFile = toml::from_str("[daemon]\nmin_warm = 1\nmax_warm = 3\n").unwrap();
        assert_eq!(file.daemon.min_warm, Some(1));
        assert!(toml::from_str::<ConfigFile>("[daemon]\nmin_warmth = 1\n").is_err());
        assert!(toml::from_str::<ConfigFile>("[daemon]\nmin_warm = -1\n").is_err());
    }

    #[test]
    fn project_file_is_found_upwards() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(dir.path().join(PROJECT_FILE), "[sandbox]\npids = 77\n").unwrap();
        let options = load_options(SandboxOptions::default(), &nested).unwrap();
        assert_eq!(options.pids, Some(77));
    }

    #[test]
    fn secrets_imply_the_allowlist_and_never_serialize_their_value() {
        let with = |network: Option<&str>| {
            resolve_default(SandboxOptions {
                network: network.map(|m| NetworkSetting::Mode(m.parse().unwrap())),
                secrets: Some(vec!["TOKEN=hunter2:api.example.com".into()]),
                env: Some(vec!["TOKEN=overridden".into()]),
                ..Default::default()
            })
        };
        let spec = with(None).unwrap();
        assert_eq!(spec.policy.network, NetworkMode::Allowlist);
        assert!(spec.policy.allowlist.host_rule("api.example.com").is_some());
        let placeholder = &spec.secrets[0].placeholder;
        assert_eq!(
            spec.env[0],
            ("TOKEN".to_string(), placeholder.clone()),
            "the variable holds the placeholder"
        );
        assert!(
            spec.env
                .contains(&("SSL_CERT_FILE".into(), crate::secrets::CA_BUNDLE.into()))
        );
        assert_eq!(spec.secret_values.get("TOKEN").unwrap().expose(), "hunter2");
        let json = serde_json::to_string(&spec).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        let back: SandboxSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back.secrets, spec.secrets);
        assert!(!format!("{spec:?}").contains("hunter2"));
        assert!(with(Some("allowlist")).is_ok());
        for mode in ["open", "none"] {
            let error = with(Some(mode)).unwrap_err().to_string();
            assert!(
                error.contains("secrets need the allowlist network"),
                "{error}"
            );
        }
    }

    #[test]
    fn network_modes_and_allowlists() {
        let with = |network: Option<&str>, hosts: &[&str], cidrs: &[&str]| {
            resolve_default(SandboxOptions {
                network: network.map(|m| NetworkSetting::Mode(m.parse().unwrap())),
                allow_hosts: Some(hosts.iter().map(|h| h.to_string()).collect()),
                allow_cidrs: Some(cidrs.iter().map(|c| c.to_string()).collect()),
                ..Default::default()
            })
        };
        let spec = with(
            Some("allowlist"),
            &["pypi", "*.example.org"],
            &["10.0.0.0/8"],
        )
        .unwrap();
        assert_eq!(spec.policy.network, NetworkMode::Allowlist);
        assert!(spec.policy.allowlist.host_rule("pypi.org").is_some());
        // Allowed hosts without a mode mean an allowlist, never the open network.
        let spec = with(None, &["example.com"], &[]).unwrap();
        assert_eq!(spec.policy.network, NetworkMode::Allowlist);
        assert!(matches!(
            with(Some("allowlist"), &[], &[]),
            Err(ConfigError::EmptyAllowlist)
        ));
        assert!(matches!(
            with(Some("open"), &["example.com"], &[]),
            Err(ConfigError::AllowlistWithoutMode(_))
        ));
        assert!(with(Some("allowlist"), &["exa mple.com"], &[]).is_err());
        let spec = with(Some("none"), &["example.com"], &[]).unwrap();
        assert_eq!(spec.policy.network, NetworkMode::None);
        assert!(spec.policy.allowlist.is_empty());
        assert!("closed".parse::<NetworkMode>().is_err());
    }

    #[test]
    fn network_setting_takes_booleans_and_modes() {
        let file: ConfigFile = toml::from_str(
            "[sandbox]\nnetwork = \"allowlist\"\nallow_hosts = [\"pypi\"]\nallow_ports = [443]\n",
        )
        .unwrap();
        assert_eq!(
            file.sandbox.network,
            Some(NetworkSetting::Mode(NetworkMode::Allowlist))
        );
        let file: ConfigFile = toml::from_str("[sandbox]\nnetwork = false\n").unwrap();
        assert_eq!(
            file.sandbox.network.map(NetworkSetting::mode),
            Some(NetworkMode::None)
        );
        assert!(toml::from_str::<ConfigFile>("[sandbox]\nnetwork = \"everywhere\"\n").is_err());
        // Records written before `allowlist` existed keep their meaning.
        let old: NetworkMode = serde_json::from_str("\"outbound\"").unwrap();
        assert_eq!(old, NetworkMode::Outbound);
    }
}
