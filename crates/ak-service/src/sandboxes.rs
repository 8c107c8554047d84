//! Named sandboxes: create, start, exec, stop, remove, list and inspect, for every backend
//! alike. Every operation checks the state machine first, holds a per-name lock so that
//! concurrent callers (several CLIs, the daemon) cannot interleave, and records its result
//! in the registry before returning.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ak_core::backend::{Backend, Lifetime, SandboxHandle, Transport};
use ak_core::spec::validate_name;
use ak_core::{BackendError, ExecSpec, Mount, SandboxSpec, SandboxState};

use crate::image_config::Entry;
use ak_protocol::AgentClient;

use crate::error::ServiceError;
use crate::registry::{RegistryError, SandboxRecord, now_unix};
use crate::session::{CommandSession, connect_agent};
use crate::{Caller, Service};

/// Where a named sandbox's workdir lives inside it when the service provides one.
const NAMED_WORKDIR: &str = "/workspace";

impl Service {
    /// Fails unless a named sandbox `name` exists (in any state).
    pub fn require_named(&self, name: &str) -> Result<(), ServiceError> {
        self.record(name).map(|_| ())
    }

    pub(crate) fn record(&self, name: &str) -> Result<SandboxRecord, ServiceError> {
        validate_name(name)?;
        self.registry()?
            .get(name)?
            .ok_or_else(|| ServiceError::NotFound(name.to_string()))
    }

    /// The state directory and its `sandboxes` directory get the search bits for everyone
    /// (the state directory is created 0700, so it becomes 0711): a sandbox's first process
    /// runs as the sandbox's (unprivileged) root and must pass through them to bind its
    /// workdir; the registry file itself stays 0600. The directories above the state
    /// directory are not ours to change: when the sandbox's root (`root_owner`, a host uid
    /// and gid) cannot pass through one of them, that is an error naming it, rather than a
    /// sandbox that fails to start with a broken pipe.
    fn make_traversable(&self, root_owner: Option<(u32, u32)>) -> Result<(), ServiceError> {
        let state = self.state_dir()?;
        let sandboxes = state.join("sandboxes");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&sandboxes)
            .map_err(|e| ServiceError::State(format!("create {}: {e}", sandboxes.display())))?;
        for dir in [state, sandboxes.as_path()] {
            // Only adds the search bits: the state directory may be one the user named
            // (`AGENTKERNEL_REGISTRY=/tmp/x.db` makes it /tmp), whose other bits (sticky,
            // world-writable) are not ours to take away.
            let mode = std::fs::metadata(dir)
                .map_err(|e| ServiceError::State(format!("stat {}: {e}", dir.display())))?
                .permissions()
                .mode();
            if mode & 0o111 != 0o111 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o111))
                    .map_err(|e| ServiceError::State(format!("chmod {}: {e}", dir.display())))?;
            }
        }
        if let Some(owner) = foreign_root(root_owner) {
            let state = state
                .canonicalize()
                .map_err(|e| ServiceError::State(format!("resolve {}: {e}", state.display())))?;
            unreachable_ancestor(&state, owner)?.map_or(Ok(()), |blocked| {
                Err(ServiceError::State(format!(
                    "the sandbox's root user (host uid {}) cannot reach the state directory {}: {blocked}; \
                     or set AGENTKERNEL_REGISTRY to a registry in a directory it can reach",
                    owner.0,
                    state.display()
                )))
            })?;
        }
        Ok(())
    }

    pub(crate) fn host_dir_of(&self, record_uuid: &str) -> Result<PathBuf, ServiceError> {
        Ok(self.state_dir()?.join("sandboxes").join(record_uuid))
    }

    /// Makes the service-owned workdir of sandbox `id` on the host: private to the
    /// sandbox, owned by its root (`root_owner`), which no other local user may read or
    /// list. The sandbox's own directory only lets others pass (0711) when the sandbox's
    /// root is another uid and must pass through. `with_root`: also the directory that
    /// holds the root's writable layer (for backends that snapshot), returned second.
    pub(crate) fn make_workspace(
        &self,
        id: &str,
        root_owner: Option<(u32, u32)>,
        with_root: bool,
    ) -> Result<(PathBuf, Option<PathBuf>), ServiceError> {
        self.make_traversable(root_owner)?;
        let sandbox_dir = self.host_dir_of(id)?;
        let host = sandbox_dir.join(crate::snapshots::WORKSPACE_DIR);
        let root = with_root.then(|| sandbox_dir.join(crate::snapshots::ROOT_DIR));
        let sandbox_dir_mode = if foreign_root(root_owner).is_some() {
            0o711
        } else {
            0o700
        };
        let mut dirs = vec![(&sandbox_dir, sandbox_dir_mode), (&host, 0o700)];
        if let Some(root) = &root {
            dirs.push((root, 0o755));
        }
        for (dir, mode) in dirs {
            std::fs::DirBuilder::new()
                .mode(mode)
                .create(dir)
                .map_err(|e| ServiceError::State(format!("create {}: {e}", dir.display())))?;
            // Exactly this mode: the umask may have taken the search bit away.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .map_err(|e| ServiceError::State(format!("chmod {}: {e}", dir.display())))?;
        }
        if let Some((uid, gid)) = root_owner {
            for dir in [Some(&host), root.as_ref()].into_iter().flatten() {
                rustix::fs::chown(
                    dir,
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                )
                .map_err(|e| ServiceError::State(format!("chown {}: {e}", dir.display())))?;
            }
        }
        Ok((host, root))
    }

    /// [`Service::create_named`] without its audit entry.
    pub(crate) async fn create_unaudited(
        &self,
        name: &str,
        spec: SandboxSpec,
        dir: Option<&Path>,
    ) -> Result<SandboxRecord, ServiceError> {
        validate_name(name)?;
        let backend = self.backend(spec.backend)?.clone();
        let lock = self.lock_new_name(name).await?;
        let created = self.create_locked(name, spec, dir, &backend).await;
        if created.is_err() {
            self.record_or_remove_lock_file(&lock, name)?;
        }
        created
    }

    /// The rest of [`Service::create_unaudited`], with `name` locked.
    async fn create_locked(
        &self,
        name: &str,
        mut spec: SandboxSpec,
        dir: Option<&Path>,
        backend: &Arc<dyn Backend>,
    ) -> Result<SandboxRecord, ServiceError> {
        if self.registry()?.get(name)?.is_some() {
            return Err(ServiceError::Duplicate(name.to_string()));
        }
        if let (Some(source), Some(dir)) = (&spec.source, dir) {
            return Err(ServiceError::InvalidInput(format!(
                "a source ({source}) is cloned into the workdir the service keeps for the \
                 sandbox, so it cannot come with a host directory ({}) as the workdir",
                dir.display()
            )));
        }
        // The image first: a bad one is refused before anything is made, and the stored
        // image decides who the sandbox's root is on some backends (see `root_owner_of`).
        self.prepare_image(&mut spec, None, ak_image::PullPolicy::Missing)
            .await?;
        // Only the service decides where a sandbox's root lives (below, for its own).
        spec.root_dir = None;
        let workdir_host = match dir {
            Some(dir) => dir.canonicalize().map_err(|e| {
                ServiceError::InvalidInput(format!("workdir {}: {e}", dir.display()))
            })?,
            None => {
                let root_owner = backend.root_owner_of(&spec);
                // A backend that snapshots keeps the root's writable layer beside the
                // workspace, where it outlives a stop and the host can copy it.
                let root_on_host = backend.capabilities().snapshots
                    && backend.root_layer() != ak_core::backend::RootLayer::Backend;
                let (workspace, root) = self.make_workspace(&spec.id, root_owner, root_on_host)?;
                if let Some(source) = &spec.source
                    && let Err(error) =
                        crate::source::clone_into(source, &workspace, root_owner).await
                {
                    let sandbox_dir = self.host_dir_of(&spec.id)?;
                    if let Err(e) = std::fs::remove_dir_all(&sandbox_dir) {
                        tracing::warn!("removing {}: {e}", sandbox_dir.display());
                    }
                    return Err(error);
                }
                spec.root_dir = root;
                workspace
            }
        };
        // A directory the user named must be reachable by the sandbox's root too.
        if dir.is_some()
            && let Some(owner) = foreign_root(backend.root_owner_of(&spec))
            && let Some(blocked) = unreachable_ancestor(&workdir_host, owner)?
        {
            return Err(ServiceError::InvalidInput(format!(
                "the sandbox's root user (host uid {}) cannot reach {}: {blocked}",
                owner.0,
                workdir_host.display()
            )));
        }
        let target = if dir.is_some() {
            workdir_host.clone()
        } else {
            PathBuf::from(NAMED_WORKDIR)
        };
        spec.mounts.retain(|m| m.target != target);
        // The backend's own workdir in the root's layer (the agent makes it): nothing
        // from the host to share, the service's directory stays empty.
        let in_root = dir.is_none()
            && spec.source.is_none()
            && spec.root_dir.is_some()
            && backend.workdir_in_root_layer();
        if !in_root {
            spec.mounts.push(Mount {
                host: workdir_host,
                target: target.clone(),
                writable: true,
            });
        }
        spec.workdir = target;
        let record = SandboxRecord {
            name: name.to_string(),
            uuid: spec.id.clone(),
            backend: spec.backend,
            state: SandboxState::Stopped,
            spec,
            handle: None,
            created_at: now_unix(),
            updated_at: now_unix(),
            error: None,
            expires_at: None,
        };
        match self.registry()?.insert(&record) {
            Ok(()) => Ok(record),
            Err(RegistryError::Duplicate(name)) => Err(ServiceError::Duplicate(name)),
            Err(e) => Err(e.into()),
        }
    }

    /// [`Service::start_named`] without its audit entry.
    async fn start_unaudited(&self, name: &str) -> Result<SandboxRecord, ServiceError> {
        let (_lock, record) = self.lock_name(name).await?;
        require(&record, &[SandboxState::Stopped], "start")?;
        let backend = self.backend(record.backend)?.clone();
        // A failed start leaves the sandbox stopped (and its workdir untouched): the cause
        // may be passing, and `failed` would only allow removing it.
        let sandbox = self
            .create_sandbox(&record.spec, Lifetime::Persistent, Some(name))
            .await?;
        let handle = sandbox.handle();
        sandbox.detach();
        self.record_running(name, SandboxState::Stopped, &backend, &handle)
            .await
    }

    /// Records sandbox `name` (in state `from`) running with `handle`. One that cannot be
    /// recorded is released: nobody could reach or stop it.
    pub(crate) async fn record_running(
        &self,
        name: &str,
        from: SandboxState,
        backend: &Arc<dyn Backend>,
        handle: &SandboxHandle,
    ) -> Result<SandboxRecord, ServiceError> {
        let recorded = serde_json::to_string(handle)
            .map_err(|e| ServiceError::State(format!("encode handle: {e}")))
            .and_then(|encoded| {
                Ok(self.registry()?.transition(
                    name,
                    from,
                    SandboxState::Running,
                    Some(encoded),
                    None,
                )?)
            });
        if recorded.is_err() {
            let _ = backend.release(handle).await;
        }
        recorded
    }

    /// [`Service::stop_named`] without its audit entry.
    async fn stop_unaudited(&self, name: &str) -> Result<SandboxRecord, ServiceError> {
        let (_lock, record) = self.lock_name(name).await?;
        require(
            &record,
            &[
                SandboxState::Running,
                SandboxState::Paused,
                SandboxState::Saved,
            ],
            "stop",
        )?;
        // A saved sandbox's processes are gone already; its memory state goes.
        if record.state == SandboxState::Saved {
            self.discard_memory_state(&record)?;
        }
        self.release_record(&record).await?;
        Ok(self
            .registry()?
            .transition(name, record.state, SandboxState::Stopped, None, None)?)
    }

    /// [`Service::remove_named`] without its audit entry.
    async fn remove_unaudited(&self, name: &str, force: bool) -> Result<(), ServiceError> {
        let (lock, mut record) = self.lock_name(name).await?;
        if record.state.is_up() || record.state == SandboxState::Saved {
            if !force {
                return Err(ServiceError::WrongState {
                    name: name.to_string(),
                    state: record.state,
                    hint: "stop it first, or remove it forcibly".into(),
                });
            }
            self.release_record(&record).await?;
            record = self.registry()?.transition(
                name,
                record.state,
                SandboxState::Stopped,
                None,
                None,
            )?;
        }
        require(
            &record,
            &[SandboxState::Stopped, SandboxState::Failed],
            "remove",
        )?;
        self.release_record(&record).await?;
        let host_dir = self.host_dir_of(&record.uuid)?;
        if host_dir.exists() {
            std::fs::remove_dir_all(&host_dir)
                .map_err(|e| ServiceError::State(format!("remove {}: {e}", host_dir.display())))?;
        }
        self.registry()?.remove(name)?;
        lock.remove_file();
        self.forget_secret_values(&record.spec.id);
        // A root layer the backend saved for a snapshot may have been kept for this
        // sandbox alone (its snapshot removed since, or a fork's).
        if let Some(layer) = &record.spec.root_layer
            && let Err(e) = self.release_layer_if_unused(record.backend, layer).await
        {
            tracing::warn!(name, layer, "letting go of the sandbox's root layer: {e}");
        }
        Ok(())
    }

    /// Every named sandbox, after reconciling running ones with reality.
    pub async fn list_named(&self) -> Result<Vec<SandboxRecord>, ServiceError> {
        self.reconcile().await?;
        Ok(self.registry()?.list()?)
    }

    /// The named sandbox with `uuid` (with or without dashes), after reconciling it.
    pub async fn inspect_by_uuid(&self, uuid: &str) -> Result<SandboxRecord, ServiceError> {
        let simple: String = uuid.chars().filter(|c| *c != '-').collect();
        let well_formed = simple.len() == 32 && simple.chars().all(|c| c.is_ascii_hexdigit());
        if !well_formed {
            return Err(ServiceError::InvalidInput(format!(
                "invalid sandbox uuid '{}'",
                uuid.escape_default()
            )));
        }
        let found = self.registry()?.get_by_uuid(&simple.to_ascii_lowercase())?;
        let Some(record) = found else {
            return Err(ServiceError::NoSuch(format!("sandbox with uuid {uuid}")));
        };
        self.inspect_named(&record.name).await
    }

    /// One named sandbox, after reconciling it with reality.
    pub async fn inspect_named(&self, name: &str) -> Result<SandboxRecord, ServiceError> {
        let record = self.record(name)?;
        if !record.state.is_up() {
            return Ok(record);
        }
        let (_lock, record) = self.lock_name_checked(name).await?;
        Ok(record)
    }

    /// [`Service::exec_named`] without its audit entry.
    async fn exec_unaudited(
        &self,
        name: &str,
        mut exec: ExecSpec,
    ) -> Result<CommandSession, ServiceError> {
        let spec = &self.record(name)?.spec;
        crate::image_config::apply(spec, &mut exec, Entry::Exec)?;
        crate::run::with_spec_env(spec, &mut exec);
        ak_core::exec::validate_argv(&exec.argv, &[])?;
        let started = CommandSession::over(self.connect_named(name).await?, exec).await;
        self.settled(name, started).await
    }

    /// `result` of a request to `name`'s agent, a failed connection looked into (see
    /// [`Service::connection_failed`]).
    pub(crate) async fn settled<T>(
        &self,
        name: &str,
        result: Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        match result {
            Err(error) => Err(self.connection_failed(name, error).await),
            done => done,
        }
    }

    /// What a request to `name`'s agent that failed with `error` answers. A failed
    /// connection is looked into: a sandbox whose processes died just now is found failed
    /// (and released) here rather than left recorded as running, and the caller learns
    /// that (its state, or that it is gone); only a sandbox still running leaves the
    /// connection's own error, a fault. Other errors are the agent's answer, unchanged.
    async fn connection_failed(&self, name: &str, error: ServiceError) -> ServiceError {
        if !matches!(error, ServiceError::Protocol(_)) {
            return error;
        }
        match self.inspect_named(name).await {
            Ok(record) if record.state == SandboxState::Running => error,
            Ok(record) => ServiceError::WrongState {
                name: name.to_string(),
                state: record.state,
                hint: "it stopped while the request ran".into(),
            },
            Err(gone @ ServiceError::NotFound(_)) => gone,
            Err(e) => {
                tracing::debug!(%name, "reconciling after a failed connection: {e}");
                error
            }
        }
    }

    /// A connected, handshaken client of a running sandbox's agent (for files, execs).
    pub async fn client_named(&self, name: &str) -> Result<AgentClient, ServiceError> {
        connect_agent(self.connect_named(name).await?).await
    }

    /// A new connection to a running sandbox's agent, not yet handshaken: what the daemon
    /// hands to a CLI, which then speaks to the agent itself.
    pub async fn connect_named(&self, name: &str) -> Result<Box<dyn Transport>, ServiceError> {
        let record = self.record(name)?;
        require(&record, &[SandboxState::Running], "reach")?;
        let mut sandbox = match self.attach_record(&record).await {
            Ok(sandbox) => sandbox,
            Err(ServiceError::Backend(BackendError::Gone(_))) => {
                let (_lock, record) = self.lock_name(name).await?;
                self.check_alive(&record).await?;
                return Err(ServiceError::WrongState {
                    name: name.to_string(),
                    state: SandboxState::Failed,
                    hint: "it stopped unexpectedly; remove it".into(),
                });
            }
            Err(e) => return Err(e),
        };
        let transport = sandbox.connect().await?;
        sandbox.detach();
        Ok(transport)
    }

    /// Marks running sandboxes whose processes are gone as failed and releases what they
    /// left behind. Returns the names that failed.
    pub async fn reconcile(&self) -> Result<Vec<String>, ServiceError> {
        let mut failed = Vec::new();
        for record in self.registry()?.list()? {
            if !record.state.is_up() {
                continue;
            }
            // Removed since it was listed (by another caller): nothing to reconcile, and
            // not a reason to fail the whole list.
            let (_lock, current) = match self.lock_name(&record.name).await {
                Ok(locked) => locked,
                Err(ServiceError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            if !self.check_alive(&current).await? {
                failed.push(record.name.clone());
            }
        }
        Ok(failed)
    }

    /// With the name locked: true if alive; otherwise marks it failed and releases it.
    pub(crate) async fn check_alive(&self, record: &SandboxRecord) -> Result<bool, ServiceError> {
        if !record.state.is_up() {
            return Ok(true);
        }
        match self.attach_record(record).await {
            Ok(sandbox) => {
                sandbox.detach();
                Ok(true)
            }
            Err(ServiceError::Backend(BackendError::Gone(reason))) => {
                tracing::warn!(name = %record.name, "sandbox is gone: {reason}");
                self.release_record(record).await?;
                self.registry()?.transition(
                    &record.name,
                    record.state,
                    SandboxState::Failed,
                    None,
                    Some(format!("its processes ended unexpectedly ({reason})")),
                )?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    async fn attach_record(
        &self,
        record: &SandboxRecord,
    ) -> Result<Box<dyn ak_core::Sandbox>, ServiceError> {
        let handle = parse_handle(record)?;
        Ok(self.backend(record.backend)?.attach(&handle).await?)
    }

    pub(crate) async fn release_record(&self, record: &SandboxRecord) -> Result<(), ServiceError> {
        if record.handle.is_none() {
            return Ok(());
        }
        let handle = parse_handle(record)?;
        let backend = self.backend(record.backend)?.clone();
        Ok(self
            .offload(async move { backend.release(&handle).await })
            .await??)
    }
}

/// The public operations: each records its outcome in the audit log.
impl Service {
    /// Records a new sandbox (stopped) with a persistent workdir. `dir` makes a host
    /// directory the workdir instead, mounted at the same path.
    pub async fn create_named(
        &self,
        caller: Caller,
        name: &str,
        mut spec: SandboxSpec,
        dir: Option<&Path>,
    ) -> Result<SandboxRecord, ServiceError> {
        let result = async {
            self.policy.admit_dir(caller, dir)?;
            self.policy.admit(caller, &spec)?;
            self.admit_volumes(caller, &spec)?;
            self.resolve_secrets(caller, &mut spec)?;
            // The values the sandbox will start with every time (the registry holds none).
            self.keep_secret_values(&spec)?;
            let id = spec.id.clone();
            let created = self.create_unaudited(name, spec, dir).await;
            if created.is_err() {
                self.forget_secret_values(&id);
            }
            created
        }
        .await;
        self.audited(caller, "create", Some(name), None, result)
    }

    /// Starts a stopped sandbox.
    pub async fn start_named(
        &self,
        caller: Caller,
        name: &str,
    ) -> Result<SandboxRecord, ServiceError> {
        let result = self.start_unaudited(name).await;
        self.audited(caller, "start", Some(name), None, result)
    }

    /// Stops a running sandbox: every process ends (detached commands too); the workdir
    /// stays.
    pub async fn stop_named(
        &self,
        caller: Caller,
        name: &str,
    ) -> Result<SandboxRecord, ServiceError> {
        let result = self.stop_unaudited(name).await;
        if result.is_ok() {
            self.detached.forget_sandbox(name).await;
        }
        self.audited(caller, "stop", Some(name), None, result)
    }

    /// Removes a stopped or failed sandbox (`force` stops a running one first), its
    /// detached commands and its service-owned workdir. Every removal path (CLI, HTTP,
    /// MCP, TTL) comes through here.
    pub async fn remove_named(
        &self,
        caller: Caller,
        name: &str,
        force: bool,
    ) -> Result<(), ServiceError> {
        let result = self.remove_unaudited(name, force).await;
        if result.is_ok() {
            self.detached.forget_sandbox(name).await;
        }
        self.audited(caller, "remove", Some(name), None, result)
    }

    /// Creates a sandbox and starts it, with an expiry `ttl` from now when given: what a
    /// remote caller's create means (the HTTP API and MCP alike). A sandbox that cannot
    /// start (or take its expiry) is removed again, so a failed create leaves nothing.
    pub async fn create_running(
        &self,
        caller: Caller,
        name: &str,
        spec: SandboxSpec,
        ttl: Option<std::time::Duration>,
    ) -> Result<SandboxRecord, ServiceError> {
        if let Some(ttl) = ttl {
            crate::check_ttl(ttl)?;
        }
        self.create_named(caller, name, spec, None).await?;
        let started = match self.start_named(caller, name).await {
            Ok(record) => match ttl {
                Some(ttl) => self.extend_named(caller, name, ttl).await,
                None => Ok(record),
            },
            Err(error) => Err(error),
        };
        if started.is_err()
            && let Err(cleanup) = self.remove_named(caller, name, true).await
        {
            tracing::warn!(name, "removing a sandbox that failed to start: {cleanup}");
        }
        started
    }

    /// Starts a command in a running sandbox. The session ends without stopping it;
    /// dropping the session closes its connection, which ends the command.
    pub async fn exec_named(
        &self,
        caller: Caller,
        name: &str,
        exec: ExecSpec,
    ) -> Result<CommandSession, ServiceError> {
        let detail = command_line(&exec.argv);
        let result = self.exec_unaudited(name, exec).await;
        self.audited(caller, "exec", Some(name), Some(detail), result)
    }

    /// [`Service::exec_named`] over a connection to the sandbox's agent that the daemon
    /// opened and handed to this process ([`Service::connect_named`]): the same action
    /// over another transport.
    pub async fn exec_named_over(
        &self,
        caller: Caller,
        name: &str,
        transport: Box<dyn Transport>,
        mut exec: ExecSpec,
    ) -> Result<CommandSession, ServiceError> {
        let detail = command_line(&exec.argv);
        let result = match self.record(name).and_then(|record| {
            crate::image_config::apply(&record.spec, &mut exec, Entry::Exec)?;
            crate::run::with_spec_env(&record.spec, &mut exec);
            Ok(())
        }) {
            Ok(()) => CommandSession::over(transport, exec).await,
            Err(error) => Err(error),
        };
        self.audited(caller, "exec", Some(name), Some(detail), result)
    }
}

/// A command line as the audit log shows it (arguments quoted when they need it).
pub(crate) fn command_line(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| {
            if !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@".contains(c))
            {
                arg.clone()
            } else {
                format!("{arg:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn parse_handle(record: &SandboxRecord) -> Result<SandboxHandle, ServiceError> {
    let text = record.handle.as_deref().ok_or_else(|| {
        ServiceError::State(format!("sandbox '{}' has no backend handle", record.name))
    })?;
    serde_json::from_str(text)
        .map_err(|e| ServiceError::State(format!("sandbox '{}': bad handle: {e}", record.name)))
}

/// Fails with a message naming the state and what to do unless `record` is in `allowed`.
pub(crate) fn require(
    record: &SandboxRecord,
    allowed: &[SandboxState],
    action: &str,
) -> Result<(), ServiceError> {
    if allowed.contains(&record.state) {
        return Ok(());
    }
    let hint = match (record.state, action) {
        (SandboxState::Running, "start") => "it is already running".to_string(),
        (SandboxState::Running, "resume") => "it is not paused".to_string(),
        (SandboxState::Stopped, "stop") => "it is already stopped".to_string(),
        (SandboxState::Stopped, _) => "start it first".to_string(),
        (SandboxState::Failed, _) => format!(
            "it failed ({}); remove it",
            record.error.as_deref().unwrap_or("unknown reason")
        ),
        (SandboxState::Running, _) => "stop it first".to_string(),
        (SandboxState::Paused, "pause") => "it is already paused".to_string(),
        (SandboxState::Paused, _) => "it is paused; resume it first".to_string(),
        (SandboxState::Saved, "pause") => "it is already saved".to_string(),
        (SandboxState::Saved, _) => "it is saved with its memory; resume it first".to_string(),
        _ => format!("it is {}", record.state),
    };
    Err(ServiceError::WrongState {
        name: record.name.clone(),
        state: record.state,
        hint: format!("cannot {action}: {hint}"),
    })
}

/// The sandbox's root (host uid and gid) when it is not this process's user: then it needs
/// permissions of its own to reach host directories.
fn foreign_root(root_owner: Option<(u32, u32)>) -> Option<(u32, u32)> {
    root_owner.filter(|(uid, _)| *uid != rustix::process::geteuid().as_raw())
}

/// The first directory above `path` (absolute, resolved) that `owner` (a host uid and gid,
/// without supplementary groups: a sandbox's root has none on the host) may not search,
/// described with what would fix it; `None` when it can reach `path`.
fn unreachable_ancestor(path: &Path, owner: (u32, u32)) -> Result<Option<String>, ServiceError> {
    use std::os::unix::fs::MetadataExt;
    for dir in path.ancestors().skip(1) {
        let meta = std::fs::metadata(dir)
            .map_err(|e| ServiceError::State(format!("stat {}: {e}", dir.display())))?;
        let search = if meta.uid() == owner.0 {
            0o100
        } else if meta.gid() == owner.1 {
            0o010
        } else {
            0o001
        };
        if meta.mode() & search == 0 {
            return Ok(Some(format!(
                "{} (mode {:04o}, owner uid {}) does not let it pass; allow it with \
                 `chmod o+x {}`",
                dir.display(),
                meta.mode() & 0o7777,
                meta.uid(),
                dir.display()
            )));
        }
    }
    Ok(None)
}
