//! The secret store (`agentkernel secret set|list|remove`) and the values of each sandbox's
//! secrets. Both live under the state directory in `secrets/` (0700): the store as one file
//! per key (0600), a named sandbox's values in `secrets/sandboxes/ID.json` (0600), so that it
//! starts again with the values it was created with and its registry entry holds none.
//! Values are never logged, audited or shown: the audit log gets key names only.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ak_core::SandboxSpec;
use ak_core::secrets::{SecretValue, needed_keys, validate_key};

use crate::Service;
use crate::caller::Caller;
use crate::error::ServiceError;

fn state_error(what: &str, path: &Path, error: std::io::Error) -> ServiceError {
    ServiceError::State(format!("{what} {}: {error}", path.display()))
}

/// Creates `dir` (0700) if needed and makes sure nobody else can read it.
fn private_dir(dir: &Path) -> Result<(), ServiceError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| state_error("create", dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| state_error("chmod", dir, e))
}

/// Writes `bytes` to `path` (0600) by a temporary file renamed over it.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ServiceError> {
    let temporary = path.with_extension("new");
    let _ = std::fs::remove_file(&temporary);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut file| file.write_all(bytes))
        .map_err(|e| state_error("write", &temporary, e))?;
    std::fs::rename(&temporary, path).map_err(|e| state_error("rename", &temporary, e))
}

/// The user's secrets, by name.
#[derive(Debug)]
pub struct SecretStore {
    dir: PathBuf,
}

impl SecretStore {
    /// The store under `state_dir`, created (0700) if needed.
    pub fn open(state_dir: &Path) -> Result<SecretStore, ServiceError> {
        let secrets = state_dir.join("secrets");
        private_dir(&secrets)?;
        let dir = secrets.join("store");
        private_dir(&dir)?;
        Ok(SecretStore { dir })
    }

    pub fn set(&self, key: &str, value: String) -> Result<(), ServiceError> {
        validate_key(key)?;
        let value = SecretValue::new(key, value)?;
        write_private(&self.dir.join(key), value.expose().as_bytes())
    }

    pub fn get(&self, key: &str) -> Result<Option<SecretValue>, ServiceError> {
        validate_key(key)?;
        let path = self.dir.join(key);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(SecretValue::new(key, text)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(state_error("read", &path, e)),
        }
    }

    /// The names in the store, sorted.
    pub fn list(&self) -> Result<Vec<String>, ServiceError> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| state_error("list", &self.dir, e))?;
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| validate_key(name).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Removes `key`; whether it was there.
    pub fn remove(&self, key: &str) -> Result<bool, ServiceError> {
        validate_key(key)?;
        let path = self.dir.join(key);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(state_error("remove", &path, e)),
        }
    }
}

impl Service {
    pub fn secret_store(&self) -> Result<SecretStore, ServiceError> {
        SecretStore::open(self.state_dir()?)
    }

    /// Stores `value` as `key` (local callers only: the store is the host user's).
    pub fn set_secret(&self, caller: Caller, key: &str, value: String) -> Result<(), ServiceError> {
        let result = local_only(caller).and_then(|()| self.secret_store()?.set(key, value));
        self.audited(caller, "secret-set", None, Some(key.to_string()), result)
    }

    /// The names in the store (local callers only).
    pub fn list_secrets(&self, caller: Caller) -> Result<Vec<String>, ServiceError> {
        local_only(caller)?;
        self.secret_store()?.list()
    }

    pub fn remove_secret(&self, caller: Caller, key: &str) -> Result<(), ServiceError> {
        let result = local_only(caller).and_then(|()| match self.secret_store()?.remove(key)? {
            true => Ok(()),
            false => Err(ServiceError::NoSuch(format!("secret named '{key}'"))),
        });
        self.audited(caller, "secret-remove", None, Some(key.to_string()), result)
    }

    /// Gives `spec` a value for each secret it names without one: from the store, else
    /// from this process's environment. Remote callers reach either only where `[api]`
    /// allows it (their own inline values always go).
    pub(crate) fn resolve_secrets(
        &self,
        caller: Caller,
        spec: &mut SandboxSpec,
    ) -> Result<(), ServiceError> {
        let keys = needed_keys(&spec.secrets, &spec.secret_files);
        if keys.is_empty() {
            return Ok(());
        }
        // A remote caller hears first that it may not use the host's values at all.
        let may_store = !caller.is_remote() || self.policy.secrets_from_store;
        let may_env = !caller.is_remote() || self.policy.secrets_from_env;
        if !may_store
            && !may_env
            && let Some(key) = keys
                .iter()
                .find(|key| spec.secret_values.get(key).is_none())
        {
            return Err(ServiceError::Forbidden(format!(
                "{} callers may use secret {key} only with its value inline (KEY=value:host); \
                 set secrets_from_store or secrets_from_env under [api] to let them use the host's",
                caller.as_str()
            )));
        }
        let can = self.capabilities(spec.backend);
        if (!spec.secrets.is_empty() && !can.proxy_secret_bindings)
            || (!spec.secret_files.is_empty() && !can.secret_files)
        {
            return Err(ServiceError::InvalidInput(format!(
                "the {} backend cannot give a sandbox secrets (use --backend native)",
                spec.backend
            )));
        }
        let store = self.secret_store()?;
        for key in keys {
            if spec.secret_values.get(&key).is_some() {
                continue;
            }
            let value = match may_store.then(|| store.get(&key)).transpose()?.flatten() {
                Some(value) => value,
                None => match may_env.then(|| std::env::var(&key).ok()).flatten() {
                    Some(value) => SecretValue::new(&key, value)?,
                    None if caller.is_remote() => {
                        return Err(ServiceError::Forbidden(format!(
                            "{} callers may use secret {key} only with its value, or from the \
                             store or the host's environment where [api] allows it \
                             (secrets_from_store, secrets_from_env){}",
                            caller.as_str(),
                            if may_store {
                                "; it is not in the store"
                            } else {
                                ""
                            }
                        )));
                    }
                    None => {
                        return Err(ServiceError::InvalidInput(format!(
                            "secret {key} has no value: it is neither in the secret store \
                             (agentkernel secret set {key}) nor in the environment"
                        )));
                    }
                },
            };
            spec.secret_values.0.insert(key, value);
        }
        Ok(())
    }

    fn values_path(&self, id: &str) -> Result<PathBuf, ServiceError> {
        let dir = self.state_dir()?.join("secrets").join("sandboxes");
        private_dir(&dir)?;
        Ok(dir.join(format!("{id}.json")))
    }

    /// Keeps a named sandbox's values for its later starts.
    pub(crate) fn keep_secret_values(&self, spec: &SandboxSpec) -> Result<(), ServiceError> {
        if spec.secret_values.0.is_empty() {
            return Ok(());
        }
        let values: BTreeMap<&str, &str> = spec
            .secret_values
            .0
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        let json = serde_json::to_vec(&values).map_err(|e| ServiceError::State(e.to_string()))?;
        write_private(&self.values_path(&spec.id)?, &json)
    }

    /// Gives a spec from the registry (which holds no values) the values it was created
    /// with.
    pub(crate) fn load_secret_values(&self, spec: &mut SandboxSpec) -> Result<(), ServiceError> {
        let keys = needed_keys(&spec.secrets, &spec.secret_files);
        if keys.iter().all(|key| spec.secret_values.get(key).is_some()) {
            return Ok(());
        }
        let path = self.values_path(&spec.id)?;
        let text = std::fs::read(&path).map_err(|e| state_error("read", &path, e))?;
        let values: BTreeMap<String, String> = serde_json::from_slice(&text)
            .map_err(|e| ServiceError::State(format!("{}: {e}", path.display())))?;
        for key in keys {
            let value = values.get(&key).ok_or_else(|| {
                ServiceError::State(format!("{} lacks secret {key}", path.display()))
            })?;
            spec.secret_values
                .0
                .insert(key.clone(), SecretValue::new(&key, value.clone())?);
        }
        Ok(())
    }

    /// Gives a sandbox made from a snapshot of sandbox `source_id` that sandbox's values
    /// where they are still kept, and finds the others as a new create would; keeps them
    /// for its starts. Its placeholders are the source's: files in the snapshot may hold
    /// them.
    pub(crate) fn inherit_secret_values(
        &self,
        caller: Caller,
        source_id: &str,
        spec: &mut SandboxSpec,
    ) -> Result<(), ServiceError> {
        if spec.secrets.is_empty() && spec.secret_files.is_empty() {
            return Ok(());
        }
        let mut source = SandboxSpec {
            id: source_id.to_string(),
            ..spec.clone()
        };
        if self.values_path(source_id)?.exists() {
            self.load_secret_values(&mut source)?;
            spec.secret_values = source.secret_values;
        }
        self.resolve_secrets(caller, spec)?;
        self.keep_secret_values(spec)
    }

    /// Forgets a removed sandbox's values.
    pub(crate) fn forget_secret_values(&self, id: &str) {
        if let Ok(path) = self.values_path(id)
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {e}", path.display());
        }
    }
}

fn local_only(caller: Caller) -> Result<(), ServiceError> {
    if caller.is_remote() {
        return Err(ServiceError::Forbidden(format!(
            "{} callers may not manage the secret store",
            caller.as_str()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_store_is_owner_only_and_lists_names() {
        let state = tempfile::tempdir().unwrap();
        let store = SecretStore::open(state.path()).unwrap();
        store.set("GH_TOKEN", "hunter2".into()).unwrap();
        store.set("GH_TOKEN", "hunter3".into()).unwrap();
        store.set("OTHER", "x".into()).unwrap();
        assert_eq!(store.list().unwrap(), ["GH_TOKEN", "OTHER"]);
        assert_eq!(store.get("GH_TOKEN").unwrap().unwrap().expose(), "hunter3");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&state.path().join("secrets")), 0o700);
        assert_eq!(mode(&state.path().join("secrets/store")), 0o700);
        assert_eq!(mode(&state.path().join("secrets/store/GH_TOKEN")), 0o600);
        assert!(store.remove("OTHER").unwrap());
        assert!(!store.remove("OTHER").unwrap());
        assert!(store.get("OTHER").unwrap().is_none());
        for bad in ["../x", "a/b", "", "1A"] {
            assert!(store.set(bad, "v".into()).is_err(), "{bad}");
        }
        assert!(store.set("EMPTY", String::new()).is_err());
    }
}
