//! A microVM's network (root only): a NIC with NAT reaches a listener in a network
//! namespace this test makes (the only place test traffic goes besides loopback), never
//! the host's own services nor a link-local address; the tap, the firewall rules and the
//! lease go with the VM, when a named one stops, when its hypervisor is killed and when its
//! creator is killed; without root a network is refused clearly.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{Mode, agentkernel, ak, assert_code, sandbox_id, shared_host, stderr, stdout};
use crate::microvm::{name, ready, vm_processes, vrun, wait_until};

/// The microvm backend's network leases (see ak-microvm's `net` module).
const LEASES: &str = "/run/agentkernel-microvm/.net";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The network tests one at a time: each checks that the host holds no VM network when
/// its VM is gone, which another's running VM would spoil.
static NETWORK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn network_alone() -> std::sync::MutexGuard<'static, ()> {
    NETWORK.lock().unwrap_or_else(|e| e.into_inner())
}

fn sh(command: &str) -> std::process::Output {
    Command::new("sh").args(["-c", command]).output().unwrap()
}

fn must(command: &str) {
    let output = sh(command);
    assert!(
        output.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A network namespace joined to the host by a veth pair (host .1, namespace .2 of a
/// /30 in 10.214.0.0/16), removed on drop even when the test fails; also puts IPv4
/// forwarding back when it found it off (the VM's network turned it on, host-wide).
struct Netns {
    name: String,
    host_if: String,
    subnet: u8,
    ip_forward: String,
}

impl Netns {
    fn create() -> Netns {
        let pid = std::process::id();
        let netns = Netns {
            name: format!("aktns{pid}"),
            host_if: format!("akth{}", pid % 1_000_000),
            subnet: (pid % 250) as u8,
            ip_forward: std::fs::read_to_string(IP_FORWARD).unwrap(),
        };
        let (ns, host, inner) = (
            &netns.name,
            &netns.host_if,
            format!("aktn{}", pid % 1_000_000),
        );
        let s = netns.subnet;
        let link_local = netns.link_local_address();
        let link_net = Ipv4Addr::from(u32::from(link_local) & !0xff);
        must(&format!(
            "ip netns add {ns} && ip link add {host} type veth peer name {inner} && \
             ip link set {inner} netns {ns} && ip addr add 10.214.{s}.1/30 dev {host} && \
             ip link set {host} up && ip -n {ns} addr add 10.214.{s}.2/30 dev {inner} && \
             ip -n {ns} link set {inner} up && ip -n {ns} link set lo up && \
             ip -n {ns} addr add {link_local}/24 dev {inner} && \
             ip route add {link_net}/24 dev {host}"
        ));
        netns
    }

    fn host_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 214, self.subnet, 1)
    }

    fn inner_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 214, self.subnet, 2)
    }

    /// The namespace's link-local address, routed to from the host like a cloud's
    /// metadata service (169.254.169.254) would be.
    fn link_local_address(&self) -> Ipv4Addr {
        // Never 169.254.169.0/24, where a real metadata service of the host may be.
        Ipv4Addr::new(169, 254, 200 + self.subnet % 50, 2)
    }

    /// A TCP server on every address of the namespace that greets each connection with
    /// `greeting` and prints the address it was reached at; it gives up after 60 s.
    /// Returns once it listens.
    fn serve(&self, port: u16, greeting: &str) -> Child {
        let script = format!(
            "import socket\n\
             s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('0.0.0.0', {port})); s.listen(4); s.settimeout(60)\n\
             print('listening', flush=True)\n\
             while True:\n\
             \x20   c, _ = s.accept(); c.sendall(b'{greeting}\\n')\n\
             \x20   print(c.getsockname()[0], flush=True); c.close()\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "python3", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "listening\n");
        child
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The namespace's end of the pair goes with it, and the host's with its peer.
        let _ = sh(&format!("ip netns del {}", self.name));
        let _ = sh(&format!("ip link del {} 2>/dev/null", self.host_if));
        if self.ip_forward.trim() == "0" {
            // Undone, so agentkernel's note that it turned forwarding on goes too.
            let _ = std::fs::write(IP_FORWARD, "0");
            let _ = std::fs::remove_file(format!("{LEASES}/ip_forward-enabled-by-agentkernel"));
        }
    }
}

/// What the host holds for VM networks now: tap devices, our firewall rules, leases.
fn vm_network_state() -> Vec<String> {
    let mut held = Vec::new();
    for entry in std::fs::read_dir("/sys/class/net").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("akv") {
            held.push(format!("tap {name}"));
        }
    }
    for table in ["filter", "nat"] {
        let rules = stdout(
            &Command::new("iptables")
                .args(["-t", table, "-S"])
                .output()
                .unwrap(),
        );
        held.extend(
            rules
                .lines()
                .filter(|rule| rule.contains("agentkernel-vm:"))
                .map(|rule| format!("{table}: {rule}")),
        );
    }
    if let Ok(leases) = std::fs::read_dir(LEASES) {
        for lease in leases.flatten() {
            let name = lease.file_name().to_string_lossy().into_owned();
            if name.parse::<u32>().is_ok() {
                held.push(format!("lease {name}"));
            }
        }
    }
    held
}

fn assert_released() {
    wait_until(
        "the VM network's tap, rules and lease are released",
        Duration::from_secs(10),
        || vm_network_state().is_empty(),
    );
}

/// The IPv4 nameservers of the host a guest can reach (what the backend gives it).
fn reachable_host_nameservers() -> Vec<String> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<Ipv4Addr>().ok())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .map(|ip| ip.to_string())
        .collect()
}

#[test]
fn microvm_network_reaches_out_through_nat_but_not_the_host() {
    let _host = shared_host();
    let _alone = network_alone();
    ready();
    assert!(
        vm_network_state().is_empty(),
        "left over before the test: {:?}",
        vm_network_state()
    );
    let netns = Netns::create();
    let port = 40000 + (std::process::id() % 20000) as u16;
    let mut server = netns.serve(port, "hello through NAT");
    // A service of the host's own, on every address: the VM must not reach it.
    let host_service = TcpListener::bind("0.0.0.0:0").unwrap();
    host_service.set_nonblocking(true).unwrap();
    let host_port = host_service.local_addr().unwrap().port();
    // bash's /dev/tcp; the gateway (the tap's host address) from the routing table.
    let probe = format!(
        "set -u; exec 3<>/dev/tcp/{outside}/{port} && head -n1 <&3; exec 3<&-; \
         gw=$(awk '$2 == \"00000000\" {{ print $3 }}' /proc/net/route); \
         gw=$(printf '%d.%d.%d.%d' 0x${{gw:6:2}} 0x${{gw:4:2}} 0x${{gw:2:2}} 0x${{gw:0:2}}); \
         for target in $gw:{host_port} {host_if_address}:{host_port} {link_local}:{port}; do \
           if timeout 3 bash -c \"exec 4<>/dev/tcp/${{target%:*}}/${{target#*:}}\" 2>/dev/null; \
           then echo \"${{target%:*}} reachable\"; else echo \"${{target%:*}} unreachable\"; fi; \
         done; ls /sys/class/net | tr '\\n' ' '; echo; grep '^nameserver' /etc/resolv.conf || true",
        outside = netns.inner_address(),
        host_if_address = netns.host_address(),
        link_local = netns.link_local_address(),
    );
    let output = vrun(&["--network"], &["bash", "-c", &probe]);
    let _ = server.kill();
    let served = server.wait_with_output().unwrap();
    assert_code(&output, 0);
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "hello through NAT", "{text}\n{}", stderr(&output));
    // The host: neither through its address on the VM's tap nor through another of its
    // addresses; nor a link-local service behind it.
    assert!(
        lines[1].starts_with("10.213.") && lines[1].ends_with(" unreachable"),
        "{text}"
    );
    assert_eq!(
        lines[2],
        format!("{} unreachable", netns.host_address()),
        "{text}"
    );
    assert_eq!(
        lines[3],
        format!("{} unreachable", netns.link_local_address()),
        "{text}"
    );
    assert_eq!(
        stdout(&served).lines().collect::<Vec<_>>(),
        [netns.inner_address().to_string()],
        "the namespace's server was reached once, at its routable address"
    );
    assert_eq!(lines[4].trim(), "eth0 lo", "{text}");
    let nameservers: Vec<String> = lines[5..]
        .iter()
        .map(|l| l.trim_start_matches("nameserver").trim().to_string())
        .collect();
    let expected = reachable_host_nameservers();
    if !expected.is_empty() {
        assert_eq!(
            nameservers, expected,
            "the host's reachable nameservers: {text}"
        );
    }
    match host_service.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the host's own service saw a connection from the VM: {other:?}"),
    }
    assert_released();
    assert_eq!(std::fs::read_to_string(IP_FORWARD).unwrap().trim(), "1");

    // Without a network: only loopback, and nothing is set up on the host.
    let plain = vrun(&[], &["ls", "/sys/class/net"]);
    assert_eq!(stdout(&plain), "lo\n");
    assert!(vm_network_state().is_empty());
}

#[test]
fn microvm_network_of_a_killed_creator_is_swept() {
    let _host = shared_host();
    let _alone = network_alone();
    ready();
    // Asked for in a config file this time (the other test uses the flag).
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[sandbox]\nnetwork = true\n").unwrap();
    let mut creator = agentkernel(
        Mode::Root,
        &[
            "run",
            "--backend",
            "microvm",
            "--",
            "sh",
            "-c",
            "echo up; sleep 60",
        ],
    )
    .env("AGENTKERNEL_CONFIG", config.path())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut line = String::new();
    BufReader::new(creator.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "up\n");
    assert!(!vm_network_state().is_empty(), "the VM has a network");
    // Killed before it can clean up: its VM dies with it (parent-death signal), its
    // network stays until the next boot's sweep.
    creator.kill().unwrap();
    creator.wait().unwrap();
    let next = vrun(&[], &["true"]);
    assert_code(&next, 0);
    assert_released();
}

#[test]
fn microvm_network_of_a_named_vm_goes_with_stop_and_a_killed_hypervisor() {
    let _host = shared_host();
    let _alone = network_alone();
    ready();
    let n = name("net");
    let root = |args: &[&str]| ak(Mode::Root, args);
    assert_code(
        &root(&["create", &n, "--backend", "microvm", "--network"]),
        0,
    );
    assert_code(&root(&["start", &n]), 0);
    let id = sandbox_id(Mode::Root, &n);
    let held = vm_network_state();
    assert!(
        held.iter()
            .any(|h| h.contains(&format!("agentkernel-vm:{id}"))),
        "its rules carry its id: {held:?}"
    );
    assert_code(&root(&["stop", &n]), 0);
    assert_released();
    // Started again it gets a network again; its hypervisor killed from outside, the
    // next command finds it failed and everything is released.
    assert_code(&root(&["start", &n]), 0);
    let exec = root(&["exec", &n, "--", "ls", "/sys/class/net"]);
    assert_eq!(stdout(&exec), "eth0\nlo\n", "{}", stderr(&exec));
    for pid in vm_processes(&id) {
        if std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .starts_with("qemu")
        {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            // The next command comes once it is gone (dead, or a zombie), as it would
            // after any crash: not in the instant the signal is on its way.
            wait_until("the hypervisor ends", Duration::from_secs(10), || {
                ak_core::process::identity(pid).is_none()
            });
        }
    }
    assert_ne!(root(&["exec", &n, "--", "true"]).status.code(), Some(0));
    assert_released();
    assert_code(&root(&["remove", &n, "--force"]), 0);
}

#[test]
fn microvm_network_needs_root() {
    let _host = shared_host();
    ready();
    let output = agentkernel(
        Mode::Rootless,
        &["run", "--backend", "microvm", "--network", "--", "true"],
    )
    .output()
    .unwrap();
    assert_code(&output, 125);
    assert!(
        stderr(&output).contains("needs root"),
        "{}",
        stderr(&output)
    );
    // Asking for a network and for none at once is a usage error.
    let both = ak(
        Mode::Root,
        &[
            "run",
            "--backend",
            "microvm",
            "--network",
            "--no-network",
            "--",
            "true",
        ],
    );
    assert_code(&both, 2);
    assert!(stderr(&both).contains("--no-network"), "{}", stderr(&both));
}
