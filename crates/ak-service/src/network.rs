//! A named sandbox's network after its creation: its allowlist replaced or extended (while
//! it runs, its egress enforcement judges the next connection by the new list; stopped, it
//! starts with it), and the count of what that enforcement refused.

use ak_core::egress::{Allowlist, AllowlistEntries};
use ak_core::{ConfigError, NetworkMode, SandboxState};

use crate::error::ServiceError;
use crate::registry::SandboxRecord;
use crate::sandboxes::{parse_handle, require};
use crate::{Caller, Service};

impl Service {
    /// Gives the allowlist sandbox `name` the allowlist `entries` name (`extend`: its
    /// current one with `entries` added). A running sandbox's enforcement takes the new
    /// list before this returns; the record keeps it, so a restart does too. A remote
    /// caller's list must stay within the `[api]` policy, as at creation.
    pub async fn set_allowlist(
        &self,
        caller: Caller,
        name: &str,
        entries: &AllowlistEntries,
        extend: bool,
    ) -> Result<SandboxRecord, ServiceError> {
        let detail = format!(
            "{} hosts [{}] cidrs [{}] ports [{}]",
            if extend { "add" } else { "set" },
            entries.hosts.join(" "),
            entries.cidrs.join(" "),
            entries
                .ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        );
        let result = self
            .set_allowlist_unaudited(caller, name, entries, extend)
            .await;
        self.audited(caller, "network", Some(name), Some(detail), result)
    }

    async fn set_allowlist_unaudited(
        &self,
        caller: Caller,
        name: &str,
        entries: &AllowlistEntries,
        extend: bool,
    ) -> Result<SandboxRecord, ServiceError> {
        let (_lock, record) = self.lock_name(name).await?;
        require(
            &record,
            &[SandboxState::Running, SandboxState::Stopped],
            "change the allowlist",
        )?;
        let mode = record.spec.policy.network;
        if mode != NetworkMode::Allowlist {
            return Err(ServiceError::InvalidInput(format!(
                "sandbox '{name}' has the {} network: only an allowlist sandbox's list can \
                 change (the mode is fixed when a sandbox is created)",
                mode.as_str()
            )));
        }
        let mut allowlist = if extend {
            record.spec.policy.allowlist.clone()
        } else {
            Allowlist::default()
        };
        allowlist.add_entries(entries)?;
        if allowlist.is_empty() {
            return Err(ConfigError::EmptyAllowlist.into());
        }
        self.policy.admit_network(caller, mode, &allowlist)?;
        if record.state == SandboxState::Running {
            // A sandbox whose processes died is found failed here (and released), not
            // handed a list it cannot use.
            if !self.check_alive(&record).await? {
                return Err(ServiceError::WrongState {
                    name: name.to_string(),
                    state: SandboxState::Failed,
                    hint: "it stopped unexpectedly; remove it".into(),
                });
            }
            self.apply_allowlist(&record, &allowlist).await?;
        }
        let mut spec = record.spec.clone();
        spec.policy.allowlist = allowlist;
        match self.registry()?.set_spec(name, &spec) {
            Ok(updated) => Ok(updated),
            Err(error) => {
                // Unrecorded, the new list would vanish at the next start while the running
                // sandbox keeps it: put the recorded one back.
                if record.state == SandboxState::Running
                    && let Err(undo) = self
                        .apply_allowlist(&record, &record.spec.policy.allowlist)
                        .await
                {
                    tracing::warn!(name, "restoring the recorded allowlist: {undo}");
                }
                Err(error.into())
            }
        }
    }

    /// Hands `allowlist` to the enforcement of running sandbox `record`.
    async fn apply_allowlist(
        &self,
        record: &SandboxRecord,
        allowlist: &Allowlist,
    ) -> Result<(), ServiceError> {
        let handle = parse_handle(record)?;
        let backend = self.backend(record.backend)?.clone();
        let allowlist = allowlist.clone();
        Ok(self
            .offload(async move { backend.set_allowlist(&handle, &allowlist).await })
            .await??)
    }

    /// How many connections and lookups the egress enforcement of `record` refused, from
    /// the audit log its helper writes to (the one source of this count); `None` for a
    /// sandbox whose network is not an allowlist.
    pub fn egress_denied(&self, record: &SandboxRecord) -> Result<Option<usize>, ServiceError> {
        if record.spec.policy.network != NetworkMode::Allowlist {
            return Ok(None);
        }
        let log = self.audit_log()?;
        log.egress_denied(&record.uuid)
            .map(Some)
            .map_err(|e| ServiceError::State(format!("read the audit log: {e}")))
    }
}
