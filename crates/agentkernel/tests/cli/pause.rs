//! `pause` and `resume` of named sandboxes through the CLI, on native, docker, podman and
//! microvm: a process inside stops where it is (a counter stops advancing) and goes on
//! after, the sandbox cannot be reached while paused, a paused VM's QEMU uses no CPU, a
//! TCP connection inside a VM survives, its clock is set again after the resume, a
//! paused sandbox can be stopped or removed, and
//! wrong-state requests are refused clearly.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::common::{Mode, agentkernel, ak, assert_code, sandbox_id, shared_host, stderr, stdout};

const MODE: Mode = Mode::Root;

/// How long the tests watch a paused sandbox.
const WATCH: Duration = Duration::from_secs(2);

fn name(test: &str) -> String {
    format!("pz-{test}-{}", std::process::id())
}

/// The sandbox's workdir on the host (the service keeps it beside the registry).
fn workspace(name: &str) -> PathBuf {
    let inspected: serde_json::Value =
        serde_json::from_slice(&ak(MODE, &["inspect", name, "--json"]).stdout).unwrap();
    let host = inspected["spec"]["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["target"] == "/workspace")
        .unwrap_or_else(|| panic!("no workdir mount: {inspected}"))["host"]
        .as_str()
        .unwrap()
        .to_string();
    PathBuf::from(host)
}

/// Starts a counter in the sandbox: `/workspace/c` holds a number that grows ten times a
/// second. The returned exec holds the command's connection.
fn start_counter(name: &str) -> Child {
    agentkernel(
        MODE,
        &[
            "exec",
            name,
            "--",
            "sh",
            "-c",
            "i=0; while :; do i=$((i+1)); echo $i > /workspace/c.new; mv /workspace/c.new /workspace/c; sleep 0.1; done",
        ],
    )
    .stdout(Stdio::null())
    .spawn()
    .unwrap()
}

fn count(file: &std::path::Path) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0)
}

fn state(name: &str) -> String {
    let inspected: serde_json::Value =
        serde_json::from_slice(&ak(MODE, &["inspect", name, "--json"]).stdout).unwrap();
    inspected["state"].as_str().unwrap().to_string()
}

/// The counter stops while paused and goes on from where it was after `resume`; the
/// sandbox refuses commands while paused; wrong-state requests say what to do.
fn pause_and_resume(name: &str) {
    let counter = workspace(name).join("c");
    let mut exec = start_counter(name);
    crate::microvm::wait_until("the counter to start", Duration::from_secs(30), || {
        count(&counter) > 2
    });
    assert_code(&ak(MODE, &["pause", name]), 0);
    assert_eq!(state(name), "paused");
    let paused_at = count(&counter);
    std::thread::sleep(WATCH);
    assert_eq!(count(&counter), paused_at, "the counter ran while paused");
    let refused = ak(MODE, &["exec", name, "--", "true"]);
    assert_code(&refused, 2);
    assert!(
        stderr(&refused).contains("resume it first"),
        "{}",
        stderr(&refused)
    );
    let again = ak(MODE, &["pause", name]);
    assert_code(&again, 2);
    assert!(
        stderr(&again).contains("already paused"),
        "{}",
        stderr(&again)
    );

    assert_code(&ak(MODE, &["resume", name]), 0);
    assert_eq!(state(name), "running");
    crate::microvm::wait_until("the counter to go on", Duration::from_secs(30), || {
        count(&counter) > paused_at + 2
    });
    // The same process went on: it counts from where it stopped, not from 1.
    assert!(count(&counter) > paused_at);
    let again = ak(MODE, &["resume", name]);
    assert_code(&again, 2);
    assert!(stderr(&again).contains("not paused"), "{}", stderr(&again));
    // The exec that started the counter still holds its command.
    assert!(exec.try_wait().unwrap().is_none(), "the exec ended");
    exec.kill().unwrap();
    exec.wait().unwrap();
    // A paused sandbox can be stopped (and started again).
    assert_code(&ak(MODE, &["pause", name]), 0);
    assert_code(&ak(MODE, &["stop", name]), 0);
    assert_eq!(state(name), "stopped");
    assert_code(&ak(MODE, &["start", name]), 0);
    assert_code(&ak(MODE, &["pause", name]), 0);
    assert_code(&ak(MODE, &["remove", name, "--force"]), 0);
}

#[test]
fn native_sandboxes_pause_and_resume() {
    let _host = shared_host();
    let n = name("native");
    assert_code(&ak(MODE, &["create", &n, "--no-network"]), 0);
    assert_code(&ak(MODE, &["start", &n]), 0);
    pause_and_resume(&n);
    let stopped = name("stopped");
    assert_code(&ak(MODE, &["create", &stopped, "--no-network"]), 0);
    let refused = ak(MODE, &["pause", &stopped]);
    assert_code(&refused, 2);
    assert!(
        stderr(&refused).contains("start it first"),
        "{}",
        stderr(&refused)
    );
    assert_code(&ak(MODE, &["remove", &stopped]), 0);
    let missing = ak(MODE, &["resume", "no-such-sandbox"]);
    assert_code(&missing, 2);
    assert!(
        stderr(&missing).contains("no sandbox named"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn docker_sandboxes_pause_and_resume() {
    let _host = shared_host();
    crate::docker::engine();
    let n = name("docker");
    crate::docker::create_started("docker", &n);
    pause_and_resume(&n);
}

#[test]
fn podman_sandboxes_pause_and_resume() {
    let _host = shared_host();
    crate::docker::podman_engine();
    let n = name("podman");
    crate::docker::create_started("podman", &n);
    pause_and_resume(&n);
}

/// Every CPU tick (user + system) a process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A TCP connection between two processes inside the guest: a server echoing lines and a
/// client pinging it five times a second over one connection, logging each answer with
/// its local port.
const TCP_PINGS: &str = r#"
use IO::Socket::INET;
$| = 1;
my $server = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 7007, Listen => 1, ReuseAddr => 1) or die "listen: $!";
if (fork() == 0) {
    my $peer = $server->accept();
    while (my $line = <$peer>) { print $peer $line; }
    exit 0;
}
my $client = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => 7007) or die "connect: $!";
open(my $log, '>>', '/workspace/tcp') or die;
$log->autoflush(1);
for (my $i = 1; ; $i++) {
    print $client "ping $i\n";
    my $answer = <$client>;
    die "the connection closed" unless defined $answer;
    print $log $client->sockport(), " ", $answer;
    select(undef, undef, undef, 0.2);
}
"#;

#[test]
fn a_paused_vm_uses_no_cpu_and_keeps_its_processes_and_connections() {
    let _host = shared_host();
    crate::microvm::ready();
    let n = name("vm");
    assert_code(
        &ak(
            MODE,
            &["create", &n, "--backend", "microvm", "--no-network"],
        ),
        0,
    );
    assert_code(&ak(MODE, &["start", &n]), 0);
    // The VM's workdir is in its layer disk: read through the agent.
    let mut pings = agentkernel(MODE, &["exec", &n, "--", "perl", "-e", TCP_PINGS])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = || {
        stdout(&ak(MODE, &["exec", &n, "--", "cat", "/workspace/tcp"]))
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    crate::microvm::wait_until("pings over TCP", Duration::from_secs(60), || {
        lines().len() >= 3
    });
    let id = sandbox_id(MODE, &n);
    let qemu = crate::microvm::vm_processes(&id);
    assert!(!qemu.is_empty(), "no QEMU process for {id}");

    let paused_lines = lines().len();
    assert_code(&ak(MODE, &["pause", &n]), 0);
    let before: Vec<u64> = qemu.iter().map(|&pid| cpu_ticks(pid)).collect();
    std::thread::sleep(WATCH);
    let after: Vec<u64> = qemu.iter().map(|&pid| cpu_ticks(pid)).collect();
    // The log is in the guest, unreadable while it is paused: that it did not run is
    // what its CPU use says.
    // Idle, not spinning: a running emulated guest uses tens of ticks a second here.
    let used: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    assert!(
        used <= 5,
        "the paused VM's processes used {used} CPU ticks in {WATCH:?}"
    );

    assert_code(&ak(MODE, &["resume", &n]), 0);
    // The guest's clock stood still while paused; the resume set it to the host's (it
    // would lag by the whole pause otherwise).
    let guest: f64 = stdout(&ak(MODE, &["exec", &n, "--", "date", "+%s.%N"]))
        .trim()
        .parse()
        .unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        host - guest < WATCH.as_secs_f64() / 2.0,
        "the guest's clock lags the host's by {:.2} s after a pause of {WATCH:?}",
        host - guest
    );
    crate::microvm::wait_until("pings after the resume", Duration::from_secs(30), || {
        lines().len() >= paused_lines + 3
    });
    // One connection throughout (one local port), every ping answered in order.
    let lines = lines();
    let ports: std::collections::BTreeSet<&str> =
        lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(ports.len(), 1, "{lines:?}");
    for (i, line) in lines.iter().enumerate() {
        assert!(line.ends_with(&format!(" ping {}", i + 1)), "{lines:?}");
    }
    assert!(pings.try_wait().unwrap().is_none(), "the pings ended");
    pings.kill().unwrap();
    let output = pings.wait_with_output().unwrap();
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("closed"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_code(&ak(MODE, &["remove", &n, "--force"]), 0);
    let left = stdout(&ak(MODE, &["list"]));
    assert!(!left.contains(&n), "{left}");
}
