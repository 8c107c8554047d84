//! Sandboxes with a time to live: an expiry that callers set and push back (`extend`), and
//! the reaping of those past it, which long-running hosts (`serve`, the daemon) do
//! periodically.

use std::time::Duration;

use crate::Service;
use crate::error::ServiceError;
use crate::registry::{SandboxRecord, now_unix};

impl Service {
    /// Pushes the expiry of `name` to `by` after its current expiry (or after now, when it
    /// has none or it has passed).
    pub async fn extend_named(
        &self,
        name: &str,
        by: Duration,
    ) -> Result<SandboxRecord, ServiceError> {
        let result = async {
            let _lock = self.lock_name(name).await?;
            let record = self.record(name)?;
            let by = i64::try_from(by.as_secs()).unwrap_or(i64::MAX);
            let from = record.expires_at.unwrap_or(0).max(now_unix());
            Ok(self
                .registry()?
                .set_expiry(name, Some(from.saturating_add(by)))?)
        }
        .await;
        self.audited(
            "extend",
            Some(name),
            Some(format!("by {}s", by.as_secs())),
            result,
        )
    }

    /// Removes every sandbox whose expiry has passed (running ones are stopped first).
    /// Returns the names removed; failures are logged and retried at the next call.
    pub async fn reap_expired(&self) -> Vec<String> {
        let names = match self.registry().and_then(|r| Ok(r.expired(now_unix())?)) {
            Ok(names) => names,
            Err(error) => {
                tracing::warn!("cannot look for expired sandboxes: {error}");
                return Vec::new();
            }
        };
        let mut removed = Vec::new();
        for name in names {
            match self.remove_named(&name, true).await {
                Ok(()) => {
                    self.record_audit(
                        "expire",
                        Some(&name),
                        crate::Outcome::Ok,
                        Some("its time to live ran out".into()),
                    );
                    removed.push(name);
                }
                // Removed meanwhile by someone else: nothing left to do.
                Err(ServiceError::NotFound(_)) => {}
                Err(error) => tracing::warn!(%name, "cannot remove the expired sandbox: {error}"),
            }
        }
        removed
    }
}
