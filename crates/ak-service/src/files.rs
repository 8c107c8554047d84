//! Files of a running named sandbox, for front ends that move whole files (HTTP, MCP):
//! paths are checked here (relative ones are taken from the sandbox's workdir, `..` is
//! refused) and resolved by the agent inside the sandbox, so that symlinks cannot leave it.

use ak_core::spec::validate_sandbox_path;

use crate::error::ServiceError;
use crate::{Caller, Service};

/// Mode of files written through these operations.
const FILE_MODE: u32 = 0o644;

impl Service {
    /// The absolute path inside `name` that `path` names: relative paths start at the
    /// sandbox's workdir; `..` and NUL bytes are refused.
    pub fn sandbox_path(&self, name: &str, path: &str) -> Result<String, ServiceError> {
        let record = self.record(name)?;
        let joined = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{}/{path}", record.spec.workdir.display())
        };
        let checked = validate_sandbox_path(&joined)?;
        Ok(checked.to_string_lossy().into_owned())
    }

    /// Reads a whole file of a running sandbox, refusing files over `max_bytes`.
    pub async fn read_file_named(
        &self,
        caller: Caller,
        name: &str,
        path: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, ServiceError> {
        let result = async {
            let path = self.sandbox_path(name, path)?;
            let client = self.client_named(name).await?;
            Ok(client.read_file(&path, max_bytes).await?)
        }
        .await;
        let result = self.settled(name, result).await;
        self.audited(
            caller,
            "file_read",
            Some(name),
            Some(path.to_string()),
            result,
        )
    }

    /// Writes a whole file of a running sandbox atomically, creating missing parent
    /// directories.
    pub async fn write_file_named(
        &self,
        caller: Caller,
        name: &str,
        path: &str,
        content: &[u8],
    ) -> Result<(), ServiceError> {
        let result = async {
            let path = self.sandbox_path(name, path)?;
            let client = self.client_named(name).await?;
            if let Some((parent, _)) = path.rsplit_once('/')
                && !parent.is_empty()
            {
                client.mkdir(parent, true, 0o755).await?;
            }
            Ok(client.write_file(&path, content, FILE_MODE).await?)
        }
        .await;
        let result = self.settled(name, result).await;
        self.audited(
            caller,
            "file_write",
            Some(name),
            Some(path.to_string()),
            result,
        )
    }

    /// Removes one file (not a directory) of a running sandbox.
    pub async fn remove_file_named(
        &self,
        caller: Caller,
        name: &str,
        path: &str,
    ) -> Result<(), ServiceError> {
        let result = async {
            let path = self.sandbox_path(name, path)?;
            let client = self.client_named(name).await?;
            Ok(client.remove(&path, false).await?)
        }
        .await;
        let result = self.settled(name, result).await;
        self.audited(
            caller,
            "file_remove",
            Some(name),
            Some(path.to_string()),
            result,
        )
    }
}
