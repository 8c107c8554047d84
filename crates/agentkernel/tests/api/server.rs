//! A running `agentkernel serve` for one test, with a private state directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The token the test servers require.
pub const TOKEN: &str = "e2e-secret-token";

/// Serialises the tests that compare the whole host (the soak's leak check) against every
/// other test here: they take it exclusively, servers hold it shared.
static HOST: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Held by every test that makes sandboxes (a failed test must not poison the others).
pub fn shared_host() -> std::sync::RwLockReadGuard<'static, ()> {
    HOST.read().unwrap_or_else(|e| e.into_inner())
}

/// Held by the tests that compare the host before and after, alone.
pub fn exclusive_host() -> std::sync::RwLockWriteGuard<'static, ()> {
    HOST.write().unwrap_or_else(|e| e.into_inner())
}

pub fn assert_root() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "these tests start sandboxes on the native backend and must run as root (CI does)"
    );
}

/// `agentkernel ARGS…` with a private registry and no user config.
pub fn agentkernel(state: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentkernel"));
    command
        .args(args)
        .env("AGENTKERNEL_AGENT", env!("CARGO_BIN_EXE_ak-agent"))
        .env("AGENTKERNEL_CONFIG", "/dev/null")
        .env("AGENTKERNEL_REGISTRY", state.join("registry.db"))
        .env_remove("AGENTKERNEL_API_KEY")
        .env_remove("AGENTKERNEL_PROFILE")
        .env_remove("AGENTKERNEL_BACKEND")
        .env_remove("AGENTKERNEL_IMAGE")
        .current_dir("/")
        .stdin(Stdio::null());
    command
}

/// A server process; stopped (SIGTERM, then waited for) when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT` or the socket path.
    pub address: String,
    pub state: tempfile::TempDir,
    /// Shared, unless the test holds the host exclusively itself.
    _host: Option<std::sync::RwLockReadGuard<'static, ()>>,
}

impl Server {
    /// Starts `agentkernel serve EXTRA…` with `token` (or none) and waits until it listens.
    pub fn start(token: Option<&str>, extra: &[&str]) -> Server {
        Server::spawn(token, extra, false, Some(shared_host()), None)
    }

    /// As [`Server::start`], with `config` as the user's config file.
    pub fn start_configured(token: Option<&str>, extra: &[&str], config: &str) -> Server {
        Server::spawn(token, extra, false, Some(shared_host()), Some(config))
    }

    /// As [`Server::start`], with the server's stderr kept in [`Server::stderr`].
    pub fn start_logged(token: Option<&str>, extra: &[&str]) -> Server {
        Server::spawn(token, extra, true, Some(shared_host()), None)
    }

    /// As [`Server::start`], for a test that holds [`exclusive_host`] itself.
    pub fn start_exclusive(token: Option<&str>, extra: &[&str]) -> Server {
        Server::spawn(token, extra, false, None, None)
    }

    fn spawn(
        token: Option<&str>,
        extra: &[&str],
        logged: bool,
        host: Option<std::sync::RwLockReadGuard<'static, ()>>,
        config: Option<&str>,
    ) -> Server {
        assert_root();
        let state = tempfile::tempdir().unwrap();
        let mut args = vec!["serve"];
        if !extra.contains(&"--socket") {
            args.extend(["--port", "0"]);
        }
        args.extend_from_slice(extra);
        let mut command = agentkernel(state.path(), &args);
        if let Some(config) = config {
            let file = state.path().join("config.toml");
            std::fs::write(&file, config).unwrap();
            command.env("AGENTKERNEL_CONFIG", file);
        }
        if let Some(token) = token {
            command.env("AGENTKERNEL_API_KEY", token);
        }
        let stderr = if logged {
            Stdio::from(std::fs::File::create(state.path().join("serve.stderr")).unwrap())
        } else {
            Stdio::inherit()
        };
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .trim()
            .strip_prefix("agentkernel API listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from serve: {line:?}"))
            .to_string();
        Server {
            child,
            address,
            state,
            _host: host,
        }
    }

    /// What a server started with [`Server::start_logged`] wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.state.path().join("serve.stderr")).unwrap()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.address.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn socket(&self) -> PathBuf {
        PathBuf::from(&self.address)
    }

    /// `agentkernel ARGS…` against this server's state directory.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        agentkernel(self.state.path(), args).output().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}
