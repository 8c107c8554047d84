//! The helper process: its arguments, its policy file, and its main loop.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ak_core::egress::Allowlist;
use ipstack::{IpStack, IpStackConfig, IpStackStream};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::audit::AuditSink;
use crate::device::{GatedTun, Wire};
use crate::error::EgressError;
use crate::gate::Gate;
use crate::secrets::{SecretPolicy, Secrets};

/// What the helper enforces, as the host writes it (JSON, replaced whole by rename; the
/// helper reads it again whenever it changes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub allowlist: Allowlist,
    /// The resolver allowed names are asked of (default: the host's first `nameserver`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_dns: Option<SocketAddr>,
    /// The sandbox's secrets (read once, when the helper starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretPolicy>,
}

impl PolicyFile {
    pub fn read(path: &Path) -> Result<PolicyFile, EgressError> {
        let text = std::fs::read_to_string(path)
            .map_err(EgressError::io(format!("read {}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| EgressError::Policy {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Gives the policy file at `path` a new allowlist, its other settings kept: a running
    /// sandbox's live change. The helper judges its next connection by it.
    pub fn replace_allowlist(path: &Path, allowlist: &Allowlist) -> Result<(), EgressError> {
        let mut policy = PolicyFile::read(path)?;
        policy.allowlist = allowlist.clone();
        policy.write(path)
    }

    /// Writes the file whole: a temporary file beside it renamed over it, so that the
    /// helper never reads half of it. Readable by its owner only: it may hold secrets.
    pub fn write(&self, path: &Path) -> Result<(), EgressError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let json = serde_json::to_vec_pretty(self).map_err(|e| EgressError::Policy {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let temporary = path.with_extension("json.new");
        let _ = std::fs::remove_file(&temporary);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .and_then(|mut file| file.write_all(&json))
            .map_err(EgressError::io(format!("write {}", temporary.display())))?;
        std::fs::rename(&temporary, path)
            .map_err(EgressError::io(format!("rename {}", temporary.display())))
    }
}

/// The helper's command line: `--netns PATH --policy FILE --ready-fd N [--exit-fd N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperArgs {
    /// The sandbox's network namespace (`/proc/PID/ns/net` or a namespace file), whose
    /// device the helper makes; or else
    pub netns: Option<PathBuf>,
    /// `--stream PATH`: a Unix socket the helper listens on for a VM's NIC (QEMU's
    /// `stream` network backend: Ethernet frames, each after its length). The helper ends
    /// when that connection does.
    pub stream: Option<PathBuf>,
    /// The sandbox's user namespace, entered first when the helper is not root.
    pub userns: Option<PathBuf>,
    pub policy: PathBuf,
    /// Gets one byte once the sandbox's network is up.
    pub ready_fd: i32,
    /// The helper ends when this becomes readable: the end of a pipe whose other end the
    /// host holds, or a pidfd of the sandbox's init.
    pub exit_fd: Option<i32>,
    /// The sandbox's id, for the audit log.
    pub sandbox: String,
    /// The state directory whose audit log gets every verdict (none: verdicts go to the
    /// helper's own log only).
    pub audit_dir: Option<PathBuf>,
    /// `--ethernet`: a TAP device, for a sandbox whose network stack speaks Ethernet
    /// (gVisor's); a TUN device otherwise.
    pub ethernet: bool,
    /// The sandbox's init, stopped on a secret's leak when the policy says `on_leak = kill`.
    pub sandbox_pid: Option<u32>,
}

impl HelperArgs {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<HelperArgs, EgressError> {
        let (mut netns, mut policy, mut ready_fd, mut exit_fd) = (None, None, None, None);
        let (mut sandbox, mut audit_dir, mut userns, mut stream) = (None, None, None, None);
        let mut ethernet = false;
        let mut sandbox_pid = None;
        let mut args = args.into_iter();
        let fd = |value: Option<String>, flag: &str| -> Result<i32, EgressError> {
            value
                .as_deref()
                .and_then(|v| v.parse().ok())
                .filter(|fd: &i32| *fd >= 0)
                .ok_or_else(|| EgressError::Usage(format!("{flag} takes a file descriptor")))
        };
        while let Some(flag) = args.next() {
            match flag.as_str() {
                "--netns" => netns = args.next().map(PathBuf::from),
                "--stream" => stream = args.next().map(PathBuf::from),
                "--userns" => userns = args.next().map(PathBuf::from),
                "--policy" => policy = args.next().map(PathBuf::from),
                "--ready-fd" => ready_fd = Some(fd(args.next(), "--ready-fd")?),
                "--exit-fd" => exit_fd = Some(fd(args.next(), "--exit-fd")?),
                "--sandbox" => sandbox = args.next(),
                "--audit-dir" => audit_dir = args.next().map(PathBuf::from),
                "--ethernet" => ethernet = true,
                "--sandbox-pid" => {
                    sandbox_pid = Some(
                        args.next()
                            .and_then(|v| v.parse().ok())
                            .filter(|pid: &u32| *pid > 0)
                            .ok_or_else(|| {
                                EgressError::Usage("--sandbox-pid takes a process id".into())
                            })?,
                    )
                }
                other => return Err(EgressError::Usage(format!("unknown argument {other}"))),
            }
        }
        let missing = |flag: &str| EgressError::Usage(format!("{flag} is required"));
        if netns.is_some() == stream.is_some() {
            return Err(EgressError::Usage(
                "exactly one of --netns and --stream is required".into(),
            ));
        }
        Ok(HelperArgs {
            netns,
            stream,
            userns,
            policy: policy.ok_or_else(|| missing("--policy"))?,
            ready_fd: ready_fd.ok_or_else(|| missing("--ready-fd"))?,
            exit_fd,
            sandbox: sandbox.ok_or_else(|| missing("--sandbox"))?,
            audit_dir,
            ethernet,
            sandbox_pid,
        })
    }

    /// The arguments that give `self` back from [`HelperArgs::parse`].
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(netns) = &self.netns {
            args.extend(["--netns".to_string(), netns.display().to_string()]);
        }
        if let Some(stream) = &self.stream {
            args.extend(["--stream".to_string(), stream.display().to_string()]);
        }
        args.extend([
            "--policy".to_string(),
            self.policy.display().to_string(),
            "--ready-fd".to_string(),
            self.ready_fd.to_string(),
            "--sandbox".to_string(),
            self.sandbox.clone(),
        ]);
        if let Some(userns) = &self.userns {
            args.extend(["--userns".to_string(), userns.display().to_string()]);
        }
        if let Some(dir) = &self.audit_dir {
            args.extend(["--audit-dir".to_string(), dir.display().to_string()]);
        }
        if let Some(fd) = self.exit_fd {
            args.extend(["--exit-fd".to_string(), fd.to_string()]);
        }
        if self.ethernet {
            args.push("--ethernet".to_string());
        }
        if let Some(pid) = self.sandbox_pid {
            args.extend(["--sandbox-pid".to_string(), pid.to_string()]);
        }
        args
    }
}

/// Runs the helper until its exit descriptor says so. Call it before any other thread
/// exists (it changes its thread's network namespace for a moment).
pub fn run(args: HelperArgs, audit: Arc<dyn AuditSink>) -> Result<(), EgressError> {
    // SAFETY: the descriptors were given to this process to own, by its parent.
    let ready = unsafe { OwnedFd::from_raw_fd(args.ready_fd) };
    // SAFETY: as above.
    let exit = args.exit_fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    let policy = PolicyFile::read(&args.policy)?;
    let upstream = policy
        .upstream_dns
        .or_else(crate::dns::system_resolver)
        .ok_or_else(|| {
            EgressError::Usage(
                "no upstream resolver: /etc/resolv.conf names none; set upstream_dns under [network]"
                    .into(),
            )
        })?;
    let secrets = match &policy.secrets {
        Some(secrets) => {
            // Opened now, while the sandbox surely runs, so that a later kill can never
            // reach a process that took its pid.
            let init = match (secrets.on_leak, args.sandbox_pid) {
                // A VM's: its hypervisor, once it connects (`peer_of`).
                (ak_core::secrets::OnLeak::Kill, None) if args.stream.is_some() => None,
                (ak_core::secrets::OnLeak::Kill, None) => {
                    return Err(EgressError::Usage(
                        "on_leak = \"kill\" needs the sandbox's init (--sandbox-pid)".into(),
                    ));
                }
                (ak_core::secrets::OnLeak::Kill, Some(pid)) => Some(
                    rustix::process::Pid::from_raw(pid as i32)
                        .ok_or_else(|| EgressError::Usage("--sandbox-pid 0".into()))
                        .and_then(|pid| {
                            rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
                                .map_err(|e| EgressError::io("open the sandbox's init")(e.into()))
                        })?,
                ),
                _ => None,
            };
            Some(Arc::new(Secrets::load(secrets, &args.sandbox, init)?))
        }
        None => None,
    };
    let gate = Arc::new(Gate::from_file(
        args.policy.clone(),
        crate::tun::host_addresses(),
    )?);
    // The link: a device made in the sandbox's namespace, or a VM's stream, listened for
    // before readiness is reported (the VM connects once it is told to start).
    let (device, wire, mtu, ready) = match (&args.netns, &args.stream) {
        (Some(netns), _) => {
            let tun = crate::tun::open_in(netns, args.userns.as_deref(), args.ethernet)?;
            let wire = if args.ethernet {
                Wire::tap()
            } else {
                Wire::tun()
            };
            (Link::Device(tun), wire, crate::MTU, Some(ready))
        }
        (None, Some(path)) => {
            let listener = listen(path)?;
            rustix::io::write(&ready, &[1])
                .map_err(|e| EgressError::io("report readiness")(e.into()))?;
            (Link::Listener(listener), Wire::stream(), VM_MTU, None)
        }
        (None, None) => {
            return Err(EgressError::Usage(
                "exactly one of --netns and --stream is required".into(),
            ));
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(EgressError::io("start the runtime"))?;
    runtime.block_on(async move {
        let fd = match device {
            Link::Device(fd) => fd,
            Link::Listener(listener) => {
                let listener = tokio::net::UnixListener::from_std(listener)
                    .map_err(EgressError::io("watch the VM's socket"))?;
                let (stream, _) = listener
                    .accept()
                    .await
                    .map_err(EgressError::io("accept the VM's connection"))?;
                if let Some(secrets) = &secrets
                    && secrets.on_leak == ak_core::secrets::OnLeak::Kill
                {
                    secrets.stops(peer_of(&stream)?);
                }
                let stream = stream
                    .into_std()
                    .map_err(EgressError::io("take the VM's connection"))?;
                OwnedFd::from(stream)
            }
        };
        let link = SandboxLink { fd, wire, mtu };
        serve(link, gate, secrets, audit, upstream, ready, exit).await
    })
}

/// A pidfd of the process at the other end of `stream` (the VM's hypervisor, which a
/// leak under `on_leak = "kill"` stops), opened while it is connected: the kernel's
/// record of the connecting pid, taken as the connection was made.
fn peer_of(stream: &tokio::net::UnixStream) -> Result<OwnedFd, EgressError> {
    let failed = |e: std::io::Error| EgressError::io("find the VM's hypervisor")(e);
    let pid = stream
        .peer_cred()
        .map_err(failed)?
        .pid()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| failed(std::io::Error::other("the connection names no process")))?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .map_err(|e| failed(e.into()))
}

/// The MTU of a VM's NIC (the guest's default): the stack's segments must fit its frames.
const VM_MTU: u16 = 1500;

/// Where the sandbox's packets come from, before the runtime starts.
enum Link {
    Device(OwnedFd),
    Listener(std::os::unix::net::UnixListener),
}

/// Listens on `path` (owner only, non-blocking), replacing a socket file left there.
fn listen(path: &Path) -> Result<std::os::unix::net::UnixListener, EgressError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(path)
                .map_err(EgressError::io(format!("remove {}", path.display())))?;
        }
        _ => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(EgressError::io(format!("listen on {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(EgressError::io(format!("chmod {}", path.display())))?;
    listener
        .set_nonblocking(true)
        .map_err(EgressError::io("make the VM's socket non-blocking"))?;
    Ok(listener)
}

/// The sandbox's link, ready to carry packets: its descriptor, what it carries, its MTU.
struct SandboxLink {
    fd: OwnedFd,
    wire: Wire,
    mtu: u16,
}

async fn serve(
    link: SandboxLink,
    gate: Arc<Gate>,
    secrets: Option<Arc<Secrets>>,
    audit: Arc<dyn AuditSink>,
    upstream: SocketAddr,
    ready: Option<OwnedFd>,
    exit: Option<OwnedFd>,
) -> Result<(), EgressError> {
    let device = GatedTun::new(link.fd, link.wire, gate.clone(), audit.clone())
        .map_err(EgressError::io("watch the sandbox's link"))?;
    let mut config = IpStackConfig::default();
    config.mtu_unchecked(link.mtu);
    // ipstack's defaults (16 KiB in flight, 16 KiB read buffer) hold a bulk download to a
    // small fraction of the open network's speed; its 60 s timeout would cut idle but
    // live connections (a language server, a held database connection).
    let mut tcp = ipstack::TcpConfig::default();
    tcp.max_unacked_bytes = 4 << 20;
    tcp.read_buffer_size = 1 << 20;
    tcp.timeout = std::time::Duration::from_secs(2 * 3600);
    config.with_tcp_config(tcp);
    let mut stack = IpStack::new(config, device);
    if let Some(ready) = ready {
        rustix::io::write(&ready, &[1])
            .map_err(|e| EgressError::io("report readiness")(e.into()))?;
    }
    let exit = exit
        // SAFETY: the OwnedFd moves into the AsyncFd, which owns it for its whole life.
        .map(|fd| unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from))
        .transpose()
        .map_err(EgressError::io("watch the exit descriptor"))?;
    let exited = async {
        match &exit {
            Some(fd) => {
                let _ = fd.readable().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(exited);
    let resolver = SocketAddr::new(IpAddr::V4(crate::RESOLVER), 53);
    loop {
        let stream = tokio::select! {
            _ = &mut exited => return Ok(()),
            stream = stack.accept() => match stream {
                Ok(stream) => stream,
                // The stack ended: its device failed (the namespace is gone).
                Err(_) => return Ok(()),
            },
        };
        match stream {
            IpStackStream::Tcp(tcp) => {
                let destination = tcp.peer_addr();
                tokio::spawn(crate::relay::relay(
                    crate::closing::Closing::new(tcp),
                    destination,
                    gate.clone(),
                    audit.clone(),
                    secrets.clone(),
                ));
            }
            IpStackStream::Udp(mut udp) if udp.peer_addr() == resolver => {
                let (gate, audit) = (gate.clone(), audit.clone());
                tokio::spawn(async move {
                    let mut query = vec![0u8; 4096];
                    // Ends when the flow has been idle for the stack's UDP timeout.
                    while let Ok(n) = udp.read(&mut query).await {
                        if n == 0 {
                            break;
                        }
                        if let Some(answer) =
                            crate::dns::answer(&gate, &audit, upstream, &query[..n]).await
                            && udp.write_all(&answer).await.is_err()
                        {
                            break;
                        }
                    }
                });
            }
            // The device lets nothing else through; dropping it answers nothing.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_allowlist_keeps_the_other_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("egress.json");
        let mut first = Allowlist::default();
        first.add_host("a.test").unwrap();
        let upstream_dns = Some("192.0.2.53:53".parse().unwrap());
        PolicyFile {
            allowlist: first,
            upstream_dns,
            secrets: None,
        }
        .write(&path)
        .unwrap();
        let mut second = Allowlist::default();
        second.add_cidr("192.0.2.0/24").unwrap();
        PolicyFile::replace_allowlist(&path, &second).unwrap();
        let read = PolicyFile::read(&path).unwrap();
        assert_eq!(read.allowlist, second);
        assert_eq!(read.upstream_dns, upstream_dns);
        // No policy file: no sandbox to change, an error rather than a new file.
        let missing = dir.path().join("missing.json");
        assert!(PolicyFile::replace_allowlist(&missing, &second).is_err());
        assert!(!missing.exists());
    }

    #[test]
    fn arguments_round_trip() {
        let args = HelperArgs {
            netns: Some("/proc/7/ns/net".into()),
            stream: None,
            userns: Some("/proc/7/ns/user".into()),
            policy: "/run/x/egress.json".into(),
            ready_fd: 3,
            exit_fd: Some(4),
            sandbox: "0123".into(),
            audit_dir: Some("/var/lib/agentkernel".into()),
            ethernet: true,
            sandbox_pid: Some(42),
        };
        assert_eq!(HelperArgs::parse(args.to_args()).unwrap(), args);
        let vm = HelperArgs {
            netns: None,
            stream: Some("/run/vm/net.sock".into()),
            userns: None,
            exit_fd: None,
            ethernet: false,
            ..args.clone()
        };
        assert_eq!(HelperArgs::parse(vm.to_args()).unwrap(), vm);
        let both = [
            "--netns",
            "/x",
            "--stream",
            "/s",
            "--policy",
            "/p",
            "--ready-fd",
            "3",
            "--sandbox",
            "a",
        ];
        assert!(HelperArgs::parse(both.iter().map(|s| s.to_string())).is_err());
        for bad in [
            vec!["--netns"],
            vec!["--netns", "/x", "--policy", "/p"],
            vec!["--netns", "/x", "--policy", "/p", "--ready-fd", "-1"],
            vec!["--netns", "/x", "--policy", "/p", "--ready-fd", "3"],
            vec!["--bogus"],
        ] {
            assert!(
                HelperArgs::parse(bad.iter().map(|s| s.to_string())).is_err(),
                "{bad:?}"
            );
        }
    }
}
