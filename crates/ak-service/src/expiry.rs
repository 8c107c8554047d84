//! Sandboxes with a time to live: an expiry that callers set and push back (`extend`), and
//! the reaping of those past it, which long-running hosts (`serve`, the daemon) do
//! periodically.

use std::time::Duration;

use crate::error::ServiceError;
use crate::registry::{SandboxRecord, now_unix};
use crate::{Caller, Service};

/// The longest a sandbox may be given to live from now: longer is refused, never stored
/// (a far-off expiry is a mistake, and times beyond the year 9999 cannot be written down).
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Refuses a time to live over [`MAX_TTL`], before anything is created for it.
pub fn check_ttl(ttl: Duration) -> Result<(), ServiceError> {
    if ttl > MAX_TTL {
        return Err(ttl_too_long());
    }
    Ok(())
}

fn ttl_too_long() -> ServiceError {
    ServiceError::InvalidInput(format!(
        "a sandbox may live at most {} from now",
        humantime::format_duration(MAX_TTL)
    ))
}

impl Service {
    /// Pushes the expiry of `name` to `by` after its current expiry (or after now, when it
    /// has none or it has passed); the new expiry may be at most [`MAX_TTL`] from now.
    pub async fn extend_named(
        &self,
        caller: Caller,
        name: &str,
        by: Duration,
    ) -> Result<SandboxRecord, ServiceError> {
        let result = async {
            check_ttl(by)?;
            let (_lock, record) = self.lock_name(name).await?;
            let now = now_unix();
            let from = record.expires_at.unwrap_or(0).max(now);
            let until = from.saturating_add(by.as_secs() as i64);
            if until.saturating_sub(now) > MAX_TTL.as_secs() as i64 {
                return Err(ttl_too_long());
            }
            Ok(self.registry()?.set_expiry(name, Some(until))?)
        }
        .await;
        self.audited(
            caller,
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
            // The service itself removes it, on behalf of whoever set the time to live.
            match self.remove_named(Caller::Local, &name, true).await {
                Ok(()) => {
                    self.record_audit(
                        Caller::Local,
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
