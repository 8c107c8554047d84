//! The lifecycle of a named sandbox and the transitions it allows.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Creating,
    Running,
    /// Alive but frozen: every process (or the VM's vCPUs) stopped where it was, holding
    /// its memory and connections, using no CPU until resumed.
    Paused,
    /// Saved to disk with its memory (a VM): no process runs, and `resume` starts it
    /// again where it was, also after the daemon or the host restarted.
    Saved,
    Stopped,
    Removed,
    Failed,
}

impl SandboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Saved => "saved",
            SandboxState::Stopped => "stopped",
            SandboxState::Removed => "removed",
            SandboxState::Failed => "failed",
        }
    }

    /// Whether a sandbox in this state may move to `next`.
    pub fn can_become(self, next: SandboxState) -> bool {
        use SandboxState::*;
        matches!(
            (self, next),
            (Creating, Running | Stopped | Failed)
                | (Running, Paused | Saved | Stopped | Failed)
                | (Paused, Running | Saved | Stopped | Failed)
                | (Saved, Running | Stopped | Failed)
                | (Stopped, Running | Removed | Failed)
                | (Failed, Removed)
        )
    }
}

impl SandboxState {
    /// Whether the sandbox's processes exist (running or paused): it holds host
    /// resources that a stop or removal must release.
    pub fn is_up(self) -> bool {
        matches!(self, SandboxState::Running | SandboxState::Paused)
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::SandboxState::*;

    #[test]
    fn allowed_transitions() {
        assert!(Creating.can_become(Running));
        assert!(Running.can_become(Stopped));
        assert!(Stopped.can_become(Running));
        assert!(Stopped.can_become(Removed));
        assert!(Failed.can_become(Removed));
        assert!(Running.can_become(Paused));
        assert!(Paused.can_become(Running));
        assert!(Paused.can_become(Stopped));
        assert!(Paused.can_become(Failed));
        assert!(Running.can_become(Saved) && Paused.can_become(Saved));
        assert!(Saved.can_become(Running) && Saved.can_become(Stopped));
        assert!(!Saved.can_become(Paused) && !Saved.can_become(Removed));
    }

    #[test]
    fn forbidden_transitions() {
        assert!(!Running.can_become(Removed));
        assert!(!Removed.can_become(Running));
        assert!(!Removed.can_become(Removed));
        assert!(!Failed.can_become(Running));
        assert!(!Stopped.can_become(Stopped));
        assert!(!Stopped.can_become(Paused));
        assert!(!Paused.can_become(Paused));
        assert!(!Paused.can_become(Removed));
    }
}
