//! Drives sandboxes through the `agentkernel` command line, as a user or an agent does,
//! timing each command: the numbers include the CLI's own start, because users pay it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What the harness runs in every sandbox, and what it must print.
pub const PROBE_COMMAND: [&str; 2] = ["echo", "hello"];
const PROBE_OUTPUT: &str = "hello\n";

/// The result of one job: the time of each step that ran, and the first error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The sandbox's name (or the run's label).
    pub name: String,
    pub success: bool,
    pub error: Option<String>,
    /// Milliseconds per step, for the steps that completed.
    pub steps_ms: BTreeMap<String, f64>,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.success
    }

    pub fn total_ms(&self) -> f64 {
        self.steps_ms.values().sum()
    }
}

/// An `agentkernel` binary with a private state directory (registry, daemon socket) and
/// the sandbox options every create and run gets.
#[derive(Debug, Clone)]
pub struct CliDriver {
    binary: PathBuf,
    env: Vec<(&'static str, OsString)>,
    sandbox_flags: Vec<String>,
}

impl CliDriver {
    /// `backend`: passed as `--backend`; `network`: whether sandboxes get the profile's
    /// network (off by default in the harnesses, so they measure the sandbox rather
    /// than the network helper's start).
    pub fn new(binary: &Path, state_dir: &Path, backend: &str, network: bool) -> CliDriver {
        let mut sandbox_flags = vec!["--backend".to_string(), backend.to_string()];
        if !network {
            sandbox_flags.push("--no-network".into());
        }
        CliDriver {
            binary: binary.to_path_buf(),
            env: vec![
                (
                    "AGENTKERNEL_REGISTRY",
                    state_dir.join("registry.db").into_os_string(),
                ),
                // The defaults, not whatever the user's config says: results comparable
                // across machines.
                ("AGENTKERNEL_CONFIG", "/dev/null".into()),
            ],
            sandbox_flags,
        }
    }

    /// Every sandbox from `image` (OCI backends need one unless the registry is reachable).
    pub fn with_image(mut self, image: Option<String>) -> CliDriver {
        if let Some(image) = image {
            self.sandbox_flags.extend(["--image".to_string(), image]);
        }
        self
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("AGENTKERNEL_BACKEND")
            .env_remove("AGENTKERNEL_PROFILE")
            .env_remove("AGENTKERNEL_IMAGE")
            .stdin(Stdio::null())
            .current_dir("/");
        command
    }

    /// Runs `agentkernel ARGS…`; the elapsed milliseconds and stdout, or why it failed.
    pub fn step(&self, args: &[&str]) -> Result<(f64, String), String> {
        let started = Instant::now();
        let output = self
            .command(args)
            .output()
            .map_err(|e| format!("start {}: {e}", self.binary.display()))?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(format!(
                "`agentkernel {}` failed ({}): {}",
                args.join(" "),
                output.status,
                stderr.trim()
            ));
        }
        Ok((ms, stdout))
    }

    fn with_flags<'a>(&'a self, head: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
        let mut args = head.to_vec();
        args.extend(self.sandbox_flags.iter().map(String::as_str));
        args.extend_from_slice(tail);
        args
    }

    /// create → start → exec `echo hello` (output checked) → stop → remove, each timed.
    /// On failure the sandbox is force-removed (untimed) so nothing is left behind.
    pub fn lifecycle(&self, name: &str) -> Outcome {
        let mut steps_ms = BTreeMap::new();
        let create = self.with_flags(&["create"], &[name]);
        let exec = [&["exec", name, "--"][..], &PROBE_COMMAND[..]].concat();
        let plan: [(&str, &[&str]); 5] = [
            ("create", &create),
            ("start", &["start", name]),
            ("exec", &exec),
            ("stop", &["stop", name]),
            ("remove", &["remove", name]),
        ];
        for (step, args) in plan {
            match self.step(args) {
                Ok((_, stdout)) if step == "exec" && stdout != PROBE_OUTPUT => {
                    let error = format!("exec printed {stdout:?}, expected {PROBE_OUTPUT:?}");
                    return self.failed_lifecycle(name, steps_ms, error);
                }
                Ok((ms, _)) => {
                    steps_ms.insert(step.to_string(), ms);
                }
                Err(error) => return self.failed_lifecycle(name, steps_ms, error),
            }
        }
        Outcome {
            name: name.into(),
            success: true,
            error: None,
            steps_ms,
        }
    }

    fn failed_lifecycle(
        &self,
        name: &str,
        steps_ms: BTreeMap<String, f64>,
        error: String,
    ) -> Outcome {
        // The sandbox may or may not exist by now: force-remove, then check it is gone.
        let removed = self.step(&["remove", "--force", name]);
        let cleanup = match (removed, self.step(&["inspect", name])) {
            (_, Err(_)) => String::new(),
            (Err(e), Ok(_)) => format!("; clean-up also failed, the sandbox is left: {e}"),
            (Ok(_), Ok(_)) => "; the sandbox is still listed after `remove --force`".into(),
        };
        Outcome {
            name: name.into(),
            success: false,
            error: Some(format!("{error}{cleanup}")),
            steps_ms,
        }
    }

    /// `agentkernel run [flags] -- echo hello`, output checked. Goes through the daemon's
    /// pool when one runs for this state directory.
    pub fn run(&self, label: &str) -> Outcome {
        let args = self.with_flags(&["run"], &[&["--"][..], &PROBE_COMMAND[..]].concat());
        self.probe(label, &args)
    }

    /// `/bin/echo hello` itself, no sandbox: the baseline, spawned, timed and checked
    /// exactly as [`CliDriver::run`] does the CLI.
    pub fn bare(&self, label: &str) -> Outcome {
        let baseline = CliDriver {
            binary: PathBuf::from("/bin/echo"),
            env: Vec::new(),
            sandbox_flags: Vec::new(),
        };
        baseline.probe(label, &PROBE_COMMAND[1..])
    }

    /// One timed command (step `run`) that must print the probe's output.
    fn probe(&self, label: &str, args: &[&str]) -> Outcome {
        let (error, steps_ms) = match self.step(args) {
            Ok((ms, stdout)) => (
                (stdout != PROBE_OUTPUT)
                    .then(|| format!("printed {stdout:?}, expected {PROBE_OUTPUT:?}")),
                BTreeMap::from([("run".to_string(), ms)]),
            ),
            Err(error) => (Some(error), BTreeMap::new()),
        };
        Outcome {
            name: label.into(),
            success: error.is_none(),
            error,
            steps_ms,
        }
    }

    pub fn daemon_start(&self) -> Result<(), String> {
        self.step(&["daemon", "start"]).map(drop)
    }

    pub fn daemon_stop(&self) -> Result<(), String> {
        self.step(&["daemon", "stop"]).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_step_fails_the_job_and_stops_its_lifecycle() {
        let state = tempfile::tempdir().unwrap();
        let driver = CliDriver::new(Path::new("/bin/false"), state.path(), "native", false);
        let outcome = driver.lifecycle("x");
        assert!(!outcome.success());
        assert!(outcome.steps_ms.is_empty(), "{:?}", outcome.steps_ms);
        let error = outcome.error.unwrap();
        assert!(error.contains("`agentkernel create"), "{error}");
    }

    #[test]
    fn the_bare_baseline_runs_echo_itself() {
        let state = tempfile::tempdir().unwrap();
        let driver = CliDriver::new(Path::new("/bin/false"), state.path(), "native", false);
        let outcome = driver.bare("b");
        assert!(outcome.success(), "{:?}", outcome.error);
        assert!(outcome.steps_ms["run"] > 0.0);
    }

    #[test]
    fn output_other_than_the_probe_fails_the_job() {
        // `echo` prints its arguments: the run's flags, not "hello".
        let state = tempfile::tempdir().unwrap();
        let driver = CliDriver::new(Path::new("/bin/echo"), state.path(), "native", false);
        let outcome = driver.run("r");
        assert!(!outcome.success());
        assert!(outcome.error.unwrap().contains("expected \"hello\\n\""));
        assert!(outcome.steps_ms.contains_key("run"));
    }
}
