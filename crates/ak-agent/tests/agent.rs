//! The agent served in-process over a socket pair and driven by the real host client.

#![allow(
    clippy::unwrap_used,
    reason = "the helpers below are not #[test] fns, and a failing step should stop the test loudly"
)]

use std::time::{Duration, Instant};

use ak_agent::{Agent, AgentConfig, ReapPolicy};
use ak_protocol::handshake::{client_handshake, software};
use ak_protocol::{
    AgentClient, ErrorKind, Event, ExecEvent, ExecSpec, ExitStatus, FileType, FrameReader,
    FrameWriter, MAX_CHUNK_LEN, ProtocolError, PtySize, Reply, Request, StdinMode,
};
use serde_bytes::ByteBuf;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;

/// An agent whose root is a fresh temporary directory, with one client connected.
struct Harness {
    client: AgentClient,
    agent: Agent,
    root: tempfile::TempDir,
}

fn start_agent() -> (Agent, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let agent = Agent::start(AgentConfig {
        root: root.path().to_path_buf(),
        workdir: "/".into(),
        reap: ReapPolicy::Tracked,
    })
    .unwrap();
    (agent, root)
}

fn serve(agent: &Agent) -> (UnixStream, JoinHandle<()>) {
    let (host, guest) = UnixStream::pair().unwrap();
    let agent = agent.clone();
    let server = tokio::spawn(async move { agent.serve_connection(guest).await });
    (host, server)
}

async fn harness() -> Harness {
    let (agent, root) = start_agent();
    let (host, _server) = serve(&agent);
    let client = AgentClient::connect(host, software("agent-test"))
        .await
        .unwrap();
    Harness {
        client,
        agent,
        root,
    }
}

/// A raw, handshaken connection for tests that need exact control over frames.
async fn raw_connection(
    agent: &Agent,
) -> (
    FrameReader<OwnedReadHalf>,
    FrameWriter<OwnedWriteHalf>,
    JoinHandle<()>,
) {
    let (host, server) = serve(agent);
    let (read_half, write_half) = host.into_split();
    let mut reader = FrameReader::new(read_half);
    let mut writer = FrameWriter::new(write_half);
    client_handshake(&mut reader, &mut writer, software("agent-test"))
        .await
        .unwrap();
    (reader, writer, server)
}

fn argv(args: &[&str]) -> ExecSpec {
    ExecSpec {
        argv: args.iter().map(|a| a.to_string()).collect(),
        ..ExecSpec::default()
    }
}

fn sh(script: &str) -> ExecSpec {
    argv(&["sh", "-c", script])
}

#[derive(Debug, Default)]
struct Output {
    pid: u32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<ExitStatus>,
    timed_out: bool,
}

async fn run(client: &AgentClient, spec: ExecSpec) -> Output {
    let mut handle = client.exec(spec).await.unwrap();
    let mut output = Output::default();
    while let Some(event) = handle.next_event().await.unwrap() {
        match event {
            ExecEvent::Started { pid } => {
                assert!(output.stdout.is_empty() && output.stderr.is_empty());
                output.pid = pid;
            }
            ExecEvent::Stdout(data) => output.stdout.extend(data),
            ExecEvent::Stderr(data) => output.stderr.extend(data),
            ExecEvent::Exited { status, timed_out } => {
                output.status = Some(status);
                output.timed_out = timed_out;
            }
        }
    }
    output
}

fn agent_error(error: ProtocolError) -> ak_protocol::AgentError {
    match error {
        ProtocolError::Agent(error) => error,
        other => panic!("expected an agent error, got {other:?}"),
    }
}

/// Dead, or a zombie waiting for whoever inherited it.
fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn wait_gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if is_gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn echo_hello() {
    let h = harness().await;
    let out = run(&h.client, argv(&["echo", "hello"])).await;
    assert!(out.pid > 0);
    assert_eq!(out.stdout, b"hello\n");
    assert!(out.stderr.is_empty());
    assert_eq!(out.status, Some(ExitStatus::Code(0)));
    assert!(!out.timed_out);
}

/// Commands, and what they start, are the OOM killer's choice before the agent; the
/// agent's own adjustment is what it was (the agent runs in this test's process).
#[tokio::test]
async fn commands_are_killed_for_memory_before_the_agent() {
    let h = harness().await;
    // Both ways of starting a command: posix_spawn, and the forking path (a pty).
    let spawned = run(&h.client, argv(&["cat", "/proc/self/oom_score_adj"])).await;
    assert_eq!(spawned.stdout, b"1000\n");
    let mut forked = sh("cat /proc/self/oom_score_adj");
    forked.pty = Some(ak_protocol::PtySize { rows: 24, cols: 80 });
    let forked = run(&h.client, forked).await;
    assert_eq!(String::from_utf8_lossy(&forked.stdout).trim(), "1000");
    // The agent lowers its own back after each start. Other tests in this process start
    // commands too, so it may be raised for a moment: it must not stay raised.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let agent = || std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
    while agent().trim() == "1000" && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_ne!(
        agent().trim(),
        "1000",
        "the agent stayed the OOM killer's first choice"
    );
}

#[tokio::test]
async fn exit_code_and_signal() {
    let h = harness().await;
    let out = run(&h.client, sh("exit 3")).await;
    assert_eq!(out.status, Some(ExitStatus::Code(3)));
    let out = run(&h.client, sh("kill -TERM $$")).await;
    assert_eq!(out.status, Some(ExitStatus::Signal(15)));
}

#[tokio::test]
async fn stdout_and_stderr_are_separate() {
    let h = harness().await;
    let out = run(&h.client, sh("echo out; echo err >&2; echo more")).await;
    assert_eq!(out.stdout, b"out\nmore\n");
    assert_eq!(out.stderr, b"err\n");
}

#[tokio::test]
async fn env_cwd_and_default_workdir() {
    let h = harness().await;
    std::fs::create_dir(h.root.path().join("sub")).unwrap();
    let mut spec = sh("echo \"$GREETING\"; pwd");
    spec.env = vec![("GREETING".into(), "hi there".into())];
    spec.cwd = Some("sub".into());
    let out = run(&h.client, spec).await;
    let expected = format!("hi there\n{}\n", h.root.path().join("sub").display());
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    let out = run(&h.client, argv(&["pwd"])).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", h.root.path().display())
    );
    // A variable named twice takes its last value; one the agent has is replaced, not
    // listed twice. Without a PATH of its own the command starts without a fork; with one,
    // through the forking path: both see the same rule.
    for own_path in [false, true] {
        let mut spec = argv(&["env"]);
        spec.env = vec![
            ("TWICE".into(), "first".into()),
            ("TWICE".into(), "second".into()),
        ];
        if own_path {
            spec.env
                .push(("PATH".into(), "/usr/bin:/bin:/ak-test".into()));
        }
        let out = run(&h.client, spec).await;
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"TWICE=second"), "{text}");
        let count = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(count("TWICE="), 1, "{text}");
        assert_eq!(count("PATH="), 1, "{text}");
        assert_eq!(
            lines.contains(&"PATH=/usr/bin:/bin:/ak-test"),
            own_path,
            "{text}"
        );
    }
}

#[tokio::test]
async fn stdin_pipe() {
    let h = harness().await;
    let mut spec = argv(&["cat"]);
    spec.stdin = StdinMode::Pipe;
    let mut handle = h.client.exec(spec).await.unwrap();
    let control = handle.control();
    control.write_stdin(b"hello ").await.unwrap();
    control.write_stdin(b"stdin").await.unwrap();
    control.close_stdin().await.unwrap();
    let mut stdout = Vec::new();
    let mut status = None;
    while let Some(event) = handle.next_event().await.unwrap() {
        match event {
            ExecEvent::Stdout(data) => stdout.extend(data),
            ExecEvent::Exited { status: s, .. } => status = Some(s),
            _ => {}
        }
    }
    assert_eq!(stdout, b"hello stdin");
    assert_eq!(status, Some(ExitStatus::Code(0)));
}

#[tokio::test]
async fn binary_output_is_exact() {
    let h = harness().await;
    let bytes: Vec<u8> = (0..=255u8).collect();
    std::fs::write(h.root.path().join("all-bytes"), &bytes).unwrap();
    let out = run(&h.client, argv(&["cat", "all-bytes"])).await;
    assert_eq!(out.stdout, bytes);
    // Large output arrives complete and in chunks no larger than the protocol allows.
    let out = run(&h.client, argv(&["head", "-c", "3000000", "/dev/zero"])).await;
    assert_eq!(out.stdout.len(), 3_000_000);
    assert!(out.stdout.iter().all(|b| *b == 0));
}

#[tokio::test]
async fn output_streams_live() {
    let h = harness().await;
    let mut handle = h
        .client
        .exec(sh("echo first; sleep 2; echo second"))
        .await
        .unwrap();
    let start = Instant::now();
    let mut first_at = None;
    let mut exited_at = None;
    let mut stdout = Vec::new();
    while let Some(event) = handle.next_event().await.unwrap() {
        match event {
            ExecEvent::Stdout(data) => {
                first_at.get_or_insert(start.elapsed());
                stdout.extend(data);
            }
            ExecEvent::Exited { .. } => exited_at = Some(start.elapsed()),
            _ => {}
        }
    }
    let (first_at, exited_at) = (first_at.unwrap(), exited_at.unwrap());
    assert!(
        first_at < Duration::from_secs(1),
        "first line after {first_at:?}"
    );
    assert!(
        exited_at >= Duration::from_millis(1900),
        "exited after {exited_at:?}"
    );
    assert_eq!(stdout, b"first\nsecond\n");
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let h = harness().await;
    let mut spec = sh("sleep 100 & echo $!; sleep 100");
    spec.timeout_ms = Some(300);
    let start = Instant::now();
    let out = run(&h.client, spec).await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(out.timed_out);
    assert_eq!(out.status, Some(ExitStatus::Signal(9)));
    let background: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(
        wait_gone(background).await,
        "background sleep {background} survived"
    );
}

#[tokio::test]
async fn exited_comes_soon_when_a_background_process_keeps_the_pipe() {
    let h = harness().await;
    let start = Instant::now();
    let out = run(&h.client, sh("sleep 30 & echo done")).await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(out.stdout, b"done\n");
    assert_eq!(out.status, Some(ExitStatus::Code(0)));
    // The background sleep is in the command's process group.
    let pgid = rustix::process::Pid::from_raw(out.pid as i32).unwrap();
    let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
}

#[tokio::test]
async fn five_concurrent_execs() {
    let h = harness().await;
    let start = Instant::now();
    let runs = (0..5).map(|n| {
        let client = h.client.clone();
        tokio::spawn(async move { run(&client, sh(&format!("sleep 1; echo {n}"))).await })
    });
    let mut outputs = Vec::new();
    for run in runs.collect::<Vec<_>>() {
        outputs.push(run.await.unwrap());
    }
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    for (n, out) in outputs.iter().enumerate() {
        assert_eq!(out.stdout, format!("{n}\n").as_bytes());
        assert_eq!(out.status, Some(ExitStatus::Code(0)));
    }
}

/// Commands start without a fork (posix_spawn) when they can; either way each leads its own
/// session, with no signal blocked and SIGPIPE (which the agent ignores) back at its default.
#[tokio::test]
async fn commands_lead_their_own_session_with_default_signals() {
    let h = harness().await;
    // The command reads its own state: a shell asked about itself would answer while it
    // blocks every signal around starting its own children.
    let out = run(
        &h.client,
        argv(&["cat", "/proc/self/stat", "/proc/self/status"]),
    )
    .await;
    assert_eq!(out.status, Some(ExitStatus::Code(0)), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    // pid (comm) state ppid pgrp session ...: comm is "cat", without spaces.
    let stat: Vec<&str> = text.lines().next().unwrap().split(' ').collect();
    assert_eq!(stat[0], out.pid.to_string(), "{text}");
    assert_eq!(
        stat[5], stat[0],
        "the command's session is its own pid: {text}"
    );
    let mask = |name: &str| {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0, "{text}");
    let sigpipe = 1 << (libc::SIGPIPE - 1);
    assert_eq!(
        mask("SigIgn:") & sigpipe,
        0,
        "SIGPIPE must not stay ignored: {text}"
    );
}

/// A file without `#!` runs with /bin/sh, as execvp (and so a shell) runs it.
#[tokio::test]
async fn a_script_without_an_interpreter_line_runs_with_sh() {
    let h = harness().await;
    h.client
        .write_file("/plain-script", b"echo from-the-script\n", 0o755)
        .await
        .unwrap();
    let mut spec = argv(&["./plain-script"]);
    spec.cwd = Some("/".into());
    let out = run(&h.client, spec).await;
    assert_eq!(out.stdout, b"from-the-script\n", "{out:?}");
    assert_eq!(out.status, Some(ExitStatus::Code(0)));
}

/// Found on PATH (here a relative entry, so under the command's working directory), with
/// its arguments: run as `/bin/sh FILE ARGS…` whichever libc the agent was built with.
#[tokio::test]
async fn a_script_without_an_interpreter_line_is_found_on_path() {
    let h = harness().await;
    h.client.mkdir("/scripts", false, 0o755).await.unwrap();
    h.client
        .write_file("/scripts/plain-on-path", b"echo \"got $1\"\n", 0o755)
        .await
        .unwrap();
    let mut spec = argv(&["plain-on-path", "one two"]);
    spec.cwd = Some("/".into());
    spec.env = vec![("PATH".into(), "scripts:/usr/bin:/bin".into())];
    let out = run(&h.client, spec).await;
    assert_eq!(out.stdout, b"got one two\n", "{out:?}");
    assert_eq!(out.status, Some(ExitStatus::Code(0)));
}

#[tokio::test]
async fn spawn_failures_are_agent_errors() {
    let h = harness().await;
    let mut handle = h
        .client
        .exec(argv(&["definitely-not-a-command-xyz"]))
        .await
        .unwrap();
    let err = agent_error(handle.next_event().await.unwrap_err());
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert_eq!(
        err.message,
        "command not found: definitely-not-a-command-xyz"
    );

    let mut spec = argv(&["true"]);
    spec.cwd = Some("/no/such/dir".into());
    let mut handle = h.client.exec(spec).await.unwrap();
    let err = agent_error(handle.next_event().await.unwrap_err());
    // A mistake in the request, not a command that failed to start.
    assert_eq!(err.kind, ErrorKind::InvalidPath);
    assert!(err.message.contains("/no/such/dir"), "{}", err.message);

    let mut spec = argv(&["true"]);
    spec.user = Some("no-such-user".into());
    let mut handle = h.client.exec(spec).await.unwrap();
    let err = agent_error(handle.next_event().await.unwrap_err());
    assert_eq!(err.kind, ErrorKind::SpawnFailed);
    assert!(err.message.contains("no-such-user"), "{}", err.message);
}

#[tokio::test]
async fn pty_exec() {
    let h = harness().await;
    let mut spec = argv(&["tty"]);
    spec.pty = Some(PtySize { rows: 24, cols: 80 });
    let out = run(&h.client, spec).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("/dev/pts/"), "{text:?}");
    assert_eq!(out.status, Some(ExitStatus::Code(0)));

    let mut spec = argv(&["stty", "size"]);
    spec.pty = Some(PtySize {
        rows: 33,
        cols: 101,
    });
    let out = run(&h.client, spec).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "33 101");
}

#[tokio::test]
async fn pty_input_and_resize() {
    let h = harness().await;
    let mut spec = sh("read line; echo \"got $line\"; stty size");
    spec.pty = Some(PtySize { rows: 10, cols: 20 });
    let mut handle = h.client.exec(spec).await.unwrap();
    let control = handle.control();
    control
        .resize(PtySize {
            rows: 50,
            cols: 120,
        })
        .await
        .unwrap();
    control.write_stdin(b"typed\n").await.unwrap();
    let mut output = Vec::new();
    while let Some(event) = handle.next_event().await.unwrap() {
        if let ExecEvent::Stdout(data) = event {
            output.extend(data);
        }
    }
    let text = String::from_utf8_lossy(&output);
    assert!(text.contains("got typed"), "{text:?}");
    assert!(text.contains("50 120"), "{text:?}");
}

#[tokio::test]
async fn file_round_trip_larger_than_a_chunk() {
    let h = harness().await;
    let data: Vec<u8> = (0..3 * MAX_CHUNK_LEN + 17)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    h.client.mkdir("dir", false, 0o755).await.unwrap();
    h.client
        .write_file("dir/blob.bin", &data, 0o600)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(h.root.path().join("dir/blob.bin")).unwrap(),
        data
    );
    let back = h.client.read_file("/dir/blob.bin", 10 << 20).await.unwrap();
    assert_eq!(back, data);
    let stat = h.client.stat("dir/blob.bin").await.unwrap();
    assert_eq!(
        (stat.size, stat.mode, stat.file_type),
        (data.len() as u64, 0o600, FileType::File)
    );

    let err = agent_error(h.client.read_file("dir/blob.bin", 1000).await.unwrap_err());
    assert_eq!(err.kind, ErrorKind::TooLarge);
    let err = agent_error(h.client.read_file("dir", 1000).await.unwrap_err());
    assert_eq!(err.kind, ErrorKind::IsADirectory);
    let err = agent_error(h.client.read_file("missing", 1000).await.unwrap_err());
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(err.message.contains("/missing"), "{}", err.message);
    // No temporary files are left next to the target.
    let names: Vec<_> = std::fs::read_dir(h.root.path().join("dir"))
        .unwrap()
        .collect();
    assert_eq!(names.len(), 1);
}

#[tokio::test]
async fn list_stat_mkdir_remove() {
    let h = harness().await;
    h.client.mkdir("a/b/c", true, 0o755).await.unwrap();
    // mkdir -p of an existing directory is fine; plain mkdir is not.
    h.client.mkdir("a/b", true, 0o755).await.unwrap();
    let err = agent_error(h.client.mkdir("a/b", false, 0o755).await.unwrap_err());
    assert_eq!(err.kind, ErrorKind::AlreadyExists);
    let err = agent_error(h.client.mkdir("x/y", false, 0o755).await.unwrap_err());
    assert_eq!(err.kind, ErrorKind::NotFound);
    h.client.write_file("a/z.txt", b"zzz", 0o644).await.unwrap();
    std::os::unix::fs::symlink("/etc", h.root.path().join("a/link")).unwrap();

    let entries = h.client.list_dir("a").await.unwrap();
    let names: Vec<_> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.file_type))
        .collect();
    assert_eq!(
        names,
        [
            ("b", FileType::Dir),
            ("link", FileType::Symlink),
            ("z.txt", FileType::File)
        ]
    );
    let stat = h.client.stat("/a/z.txt").await.unwrap();
    assert_eq!((stat.name.as_str(), stat.size), ("z.txt", 3));
    assert!(stat.mtime > 1_600_000_000);
    assert_eq!(
        h.client.stat("a/link").await.unwrap().file_type,
        FileType::Symlink
    );
    let err = agent_error(h.client.list_dir("a/z.txt").await.unwrap_err());
    assert_eq!(err.kind, ErrorKind::NotADirectory);

    let err = agent_error(h.client.remove("a", false).await.unwrap_err());
    assert_eq!(err.kind, ErrorKind::DirectoryNotEmpty);
    h.client.remove("a/z.txt", false).await.unwrap();
    h.client.remove("a", true).await.unwrap();
    let err = agent_error(h.client.stat("a").await.unwrap_err());
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(h.client.list_dir("/").await.unwrap().is_empty());
}

#[tokio::test]
async fn recursive_remove_does_not_follow_symlinks_out() {
    let h = harness().await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("keep"), "keep").unwrap();
    h.client.mkdir("tree/sub", true, 0o755).await.unwrap();
    std::os::unix::fs::symlink(outside.path(), h.root.path().join("tree/sub/out")).unwrap();
    h.client.remove("tree", true).await.unwrap();
    assert!(!h.root.path().join("tree").exists());
    assert!(outside.path().join("keep").exists());
}

#[tokio::test]
async fn paths_cannot_leave_the_root() {
    let h = harness().await;
    for bad in ["../etc/passwd", "a/../../b", "/..", ""] {
        let err = agent_error(h.client.read_file(bad, 1 << 20).await.unwrap_err());
        assert_eq!(err.kind, ErrorKind::InvalidPath, "{bad:?}");
        let err = agent_error(h.client.stat(bad).await.unwrap_err());
        assert_eq!(err.kind, ErrorKind::InvalidPath, "{bad:?}");
    }
    // Symlinks are resolved as if the root were `/`.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "secret").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", h.root.path().join("passwd")).unwrap();
    std::os::unix::fs::symlink(outside.path(), h.root.path().join("out")).unwrap();
    let err = agent_error(h.client.read_file("passwd", 1 << 20).await.unwrap_err());
    assert_eq!(err.kind, ErrorKind::NotFound);
    let err = agent_error(h.client.read_file("out/secret", 1 << 20).await.unwrap_err());
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(h.client.write_file("out/new", b"x", 0o644).await.is_err());
    assert!(!outside.path().join("new").exists());
}

#[tokio::test]
async fn ping_reports_the_version() {
    let h = harness().await;
    assert_eq!(h.client.ping().await.unwrap(), env!("CARGO_PKG_VERSION"));
    assert!(h.client.negotiated().peer_software.starts_with("ak-agent/"));
}

#[tokio::test]
async fn garbage_frames_close_the_connection() {
    let (agent, _root) = start_agent();
    // A payload that is not a request.
    let (mut reader, mut writer, server) = raw_connection(&agent).await;
    writer
        .write_raw(&[3, 0, 0, 0, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), reader.read::<Event>()).await;
    assert!(matches!(next, Ok(Ok(None))), "{next:?}");
    server.await.unwrap();
    // A length beyond the frame limit.
    let (mut reader, mut writer, server) = raw_connection(&agent).await;
    writer.write_raw(&u32::MAX.to_le_bytes()).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), reader.read::<Event>()).await;
    assert!(matches!(next, Ok(Ok(None))), "{next:?}");
    server.await.unwrap();
    // Not even a handshake.
    let (host, server) = serve(&agent);
    let (_read, mut write) = host.into_split();
    tokio::io::AsyncWriteExt::write_all(&mut write, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn control_requests_for_unknown_ids_get_no_reply() {
    let (agent, _root) = start_agent();
    let (mut reader, mut writer, _server) = raw_connection(&agent).await;
    for request in [
        Request::Signal { id: 7, signal: 15 },
        Request::Stdin {
            id: 7,
            data: ByteBuf::from(b"x".to_vec()),
        },
        Request::CloseStdin { id: 7 },
        Request::Resize {
            id: 7,
            size: PtySize { rows: 1, cols: 1 },
        },
        Request::WriteChunk {
            id: 7,
            data: ByteBuf::from(b"x".to_vec()),
        },
        Request::WriteCommit { id: 7 },
        Request::Ping { id: 8 },
    ] {
        writer.write(&request).await.unwrap();
    }
    let event: Event = reader.read().await.unwrap().unwrap();
    assert!(
        matches!(
            event,
            Event::Done {
                id: 8,
                result: Ok(Reply::Pong { .. })
            }
        ),
        "{event:?}"
    );
}

#[tokio::test]
async fn duplicate_exec_ids_are_refused() {
    let (agent, _root) = start_agent();
    let (mut reader, mut writer, _server) = raw_connection(&agent).await;
    writer
        .write(&Request::Exec {
            id: 1,
            spec: sh("sleep 1"),
        })
        .await
        .unwrap();
    writer
        .write(&Request::Exec {
            id: 1,
            spec: argv(&["true"]),
        })
        .await
        .unwrap();
    let mut refused = false;
    loop {
        match reader.read::<Event>().await.unwrap().unwrap() {
            Event::Started { id: 1, .. } => {}
            Event::Done {
                id: 1,
                result: Err(err),
            } => {
                assert_eq!(err.kind, ErrorKind::BadRequest);
                refused = true;
            }
            Event::Exited { id: 1, status, .. } => {
                assert_eq!(status, ExitStatus::Code(0));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(refused);
}

#[tokio::test]
async fn stdin_that_is_not_read_does_not_block_other_requests() {
    let h = harness().await;
    let mut spec = argv(&["sleep", "5"]);
    spec.stdin = StdinMode::Pipe;
    spec.timeout_ms = Some(4000);
    let handle = h.client.exec(spec).await.unwrap();
    // Far more than a pipe holds.
    handle
        .control()
        .write_stdin(&vec![b'x'; 4 << 20])
        .await
        .unwrap();
    let start = Instant::now();
    h.client.ping().await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    handle.control().signal(9).await.unwrap();
}

#[tokio::test]
async fn signal_reaches_the_process_group() {
    let h = harness().await;
    let mut handle = h.client.exec(sh("sleep 30 & wait")).await.unwrap();
    let Some(ExecEvent::Started { .. }) = handle.next_event().await.unwrap() else {
        panic!("no Started");
    };
    handle.control().signal(15).await.unwrap();
    let Some(ExecEvent::Exited { status, timed_out }) = handle.next_event().await.unwrap() else {
        panic!("no Exited");
    };
    assert_eq!((status, timed_out), (ExitStatus::Signal(15), false));
}

#[tokio::test]
async fn dropping_the_connection_kills_its_commands() {
    let (agent, _root) = start_agent();
    let (mut reader, mut writer, server) = raw_connection(&agent).await;
    writer
        .write(&Request::Exec {
            id: 1,
            spec: sh("echo $$; exec sleep 100"),
        })
        .await
        .unwrap();
    let pid = loop {
        match reader.read::<Event>().await.unwrap().unwrap() {
            Event::Stdout { data, .. } => {
                break String::from_utf8_lossy(&data)
                    .trim()
                    .parse::<i32>()
                    .unwrap();
            }
            Event::Started { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    drop((reader, writer));
    server.await.unwrap();
    assert!(
        wait_gone(pid).await,
        "command {pid} survived its connection"
    );
}

#[tokio::test]
async fn shutdown_kills_everything_and_ends_the_connection() {
    let h = harness().await;
    let mut handle = h.client.exec(sh("echo $$; exec sleep 100")).await.unwrap();
    let pid = loop {
        if let Some(ExecEvent::Stdout(data)) = handle.next_event().await.unwrap() {
            break String::from_utf8_lossy(&data)
                .trim()
                .parse::<i32>()
                .unwrap();
        }
    };
    h.client.shutdown().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), h.agent.shutdown_requested())
        .await
        .unwrap();
    assert!(wait_gone(pid).await, "command {pid} survived the shutdown");
}

#[tokio::test]
async fn user_switching() {
    let h = harness().await;
    if !rustix::process::geteuid().is_root() {
        // Switching users needs root; an unprivileged agent refuses clearly instead.
        let mut spec = argv(&["true"]);
        spec.user = Some("0".into());
        let mut handle = h.client.exec(spec).await.unwrap();
        let err = agent_error(handle.next_event().await.unwrap_err());
        assert_eq!(err.kind, ErrorKind::SpawnFailed);
        return;
    }
    // The sandbox's passwd is read through the root, not the host's.
    std::fs::create_dir(h.root.path().join("etc")).unwrap();
    std::fs::write(
        h.root.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\ntester:x:4321:4322::/home/tester:/bin/sh\n",
    )
    .unwrap();
    let script = "echo $(id -u) $(id -g) $(id -G) $HOME $USER";
    let mut spec = sh(script);
    spec.user = Some("tester".into());
    let out = run(&h.client, spec).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "4321 4322 4322 /home/tester tester\n"
    );

    let mut spec = sh("echo $(id -u) $(id -g) $(id -G)");
    spec.user = Some("1234:5678".into());
    let out = run(&h.client, spec).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1234 5678 5678\n");

    let mut spec = argv(&["id", "-u"]);
    spec.user = Some("tester".into());
    spec.pty = Some(PtySize { rows: 24, cols: 80 });
    let out = run(&h.client, spec).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4321");
}

#[tokio::test]
async fn pty_close_stdin_sends_end_of_file() {
    let h = harness().await;
    let mut spec = argv(&["cat"]);
    spec.pty = Some(PtySize { rows: 24, cols: 80 });
    let mut handle = h.client.exec(spec).await.unwrap();
    let control = handle.control();
    control.write_stdin(b"line\n").await.unwrap();
    control.close_stdin().await.unwrap();
    let mut output = Vec::new();
    let mut status = None;
    while let Some(event) = handle.next_event().await.unwrap() {
        match event {
            ExecEvent::Stdout(data) => output.extend(data),
            ExecEvent::Exited { status: s, .. } => status = Some(s),
            _ => {}
        }
    }
    assert_eq!(status, Some(ExitStatus::Code(0)));
    assert!(
        String::from_utf8_lossy(&output).contains("line"),
        "{output:?}"
    );
}
