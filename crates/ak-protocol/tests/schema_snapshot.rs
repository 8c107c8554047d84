//! Freezes the wire encoding: one example of every message, compared byte for byte with a committed snapshot.
//!
//! postcard encodes enum variants by index and struct fields by position, so reordering
//! variants or fields, or changing a field's type, silently changes the wire format while
//! everything still compiles. This test turns that into a failure that asks for a version bump.

#![allow(
    clippy::unwrap_used,
    reason = "the helpers below are not #[test] fns, and a failing step should stop the test loudly"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Debug};
use std::path::PathBuf;

use ak_protocol::frame::encode_frame;
use ak_protocol::handshake::{Hello, HelloReply, MIN_PROTOCOL_VERSION};
use ak_protocol::{
    AgentError, ErrorKind, Event, ExecSpec, ExitStatus, FileStat, FileType, PROTOCOL_VERSION,
    PtySize, Reply, Request, StdinMode,
};
use serde::de::{DeserializeOwned, Visitor};
use serde::{Deserializer, Serialize};
use serde_bytes::ByteBuf;

const UPDATE_ENV: &str = "UPDATE_SNAPSHOTS";

/// Named frames in a fixed order; names are unique.
#[derive(Default)]
struct Examples(Vec<(String, Vec<u8>)>);

impl Examples {
    fn add<T: Serialize>(&mut self, name: impl Into<String>, message: &T) {
        let name = name.into();
        assert!(
            self.0.iter().all(|(n, _)| *n != name),
            "duplicate example name {name}"
        );
        self.0.push((name, encode_frame(message).unwrap()));
    }

    fn render(&self) -> String {
        let mut text = format!(
            "# Wire format of protocol version {PROTOCOL_VERSION}: one full frame per message \
             (u32 LE payload length + postcard payload), in hex.\n\
             # Written by tests/schema_snapshot.rs with {UPDATE_ENV}=1; see VERSIONING.md before changing it.\n"
        );
        for (name, frame) in &self.0 {
            text.push_str(&format!("{name}: {}\n", hex(frame)));
        }
        text
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The variant name of a derived-`Debug` enum value (`Exec { .. }` -> `Exec`).
fn variant<T: Debug>(value: &T) -> String {
    let debug = format!("{value:?}");
    let end = debug
        .find(|c: char| !c.is_alphanumeric() && c != '_')
        .unwrap_or(debug.len());
    debug[..end].to_string()
}

fn stat(name: &str, file_type: FileType) -> FileStat {
    FileStat {
        name: name.into(),
        file_type,
        size: 4096,
        mode: 0o755,
        uid: 1000,
        gid: 1000,
        mtime: 1_700_000_000,
    }
}

fn requests() -> Vec<(&'static str, Request)> {
    let full = ExecSpec {
        argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
        env: vec![("LANG".into(), "C.UTF-8".into())],
        cwd: Some("/work".into()),
        user: Some("1000:1000".into()),
        stdin: StdinMode::Pipe,
        timeout_ms: Some(30_000),
        pty: Some(PtySize { rows: 24, cols: 80 }),
    };
    let data = || ByteBuf::from(b"\x00\x01hi\xff".to_vec());
    let id = 7;
    vec![
        ("Request::Exec", Request::Exec { id, spec: full }),
        (
            "Request::Exec(default spec)",
            Request::Exec {
                id,
                spec: ExecSpec::default(),
            },
        ),
        ("Request::Stdin", Request::Stdin { id, data: data() }),
        ("Request::CloseStdin", Request::CloseStdin { id }),
        ("Request::Signal", Request::Signal { id, signal: 15 }),
        (
            "Request::Resize",
            Request::Resize {
                id,
                size: PtySize {
                    rows: 50,
                    cols: 132,
                },
            },
        ),
        (
            "Request::ReadFile",
            Request::ReadFile {
                id,
                path: "etc/hostname".into(),
                max_bytes: 1 << 20,
            },
        ),
        (
            "Request::WriteBegin",
            Request::WriteBegin {
                id,
                path: "out.txt".into(),
                mode: 0o644,
            },
        ),
        (
            "Request::WriteChunk",
            Request::WriteChunk { id, data: data() },
        ),
        ("Request::WriteCommit", Request::WriteCommit { id }),
        (
            "Request::ListDir",
            Request::ListDir {
                id,
                path: ".".into(),
            },
        ),
        (
            "Request::Stat",
            Request::Stat {
                id,
                path: "out.txt".into(),
            },
        ),
        (
            "Request::Remove",
            Request::Remove {
                id,
                path: "tmp".into(),
                recursive: true,
            },
        ),
        (
            "Request::Mkdir",
            Request::Mkdir {
                id,
                path: "a/b".into(),
                parents: true,
                mode: 0o700,
            },
        ),
        ("Request::Ping", Request::Ping { id }),
        ("Request::Shutdown", Request::Shutdown { id }),
        (
            "Request::Rename",
            Request::Rename {
                id,
                from: "/workspace/.tree.ak-cp-1".into(),
                to: "/workspace/tree".into(),
            },
        ),
    ]
}

fn replies() -> Vec<Reply> {
    vec![
        Reply::Ok,
        Reply::FileEnd { size: 123_456 },
        Reply::Entries(vec![
            stat("file", FileType::File),
            stat("dir", FileType::Dir),
            stat("link", FileType::Symlink),
            stat("fifo", FileType::Other),
        ]),
        Reply::Stat(stat("out.txt", FileType::File)),
        Reply::Pong {
            agent_version: "ak-agent/0.1.0".into(),
        },
    ]
}

fn error_kinds() -> Vec<ErrorKind> {
    vec![
        ErrorKind::BadRequest,
        ErrorKind::InvalidPath,
        ErrorKind::NotFound,
        ErrorKind::PermissionDenied,
        ErrorKind::AlreadyExists,
        ErrorKind::NotADirectory,
        ErrorKind::IsADirectory,
        ErrorKind::DirectoryNotEmpty,
        ErrorKind::TooLarge,
        ErrorKind::SpawnFailed,
        ErrorKind::Io,
    ]
}

fn events() -> Vec<(String, Event)> {
    let data = || ByteBuf::from(b"out\n\x00\xff".to_vec());
    let id = 7;
    let mut events = vec![
        ("Event::Started".into(), Event::Started { id, pid: 4242 }),
        ("Event::Stdout".into(), Event::Stdout { id, data: data() }),
        ("Event::Stderr".into(), Event::Stderr { id, data: data() }),
        (
            "Event::Exited(Code)".into(),
            Event::Exited {
                id,
                status: ExitStatus::Code(3),
                timed_out: false,
            },
        ),
        (
            "Event::Exited(Signal)".into(),
            Event::Exited {
                id,
                status: ExitStatus::Signal(9),
                timed_out: true,
            },
        ),
        (
            "Event::FileData".into(),
            Event::FileData { id, data: data() },
        ),
    ];
    for reply in replies() {
        let name = format!("Event::Done(Ok(Reply::{}))", variant(&reply));
        events.push((
            name,
            Event::Done {
                id,
                result: Ok(reply),
            },
        ));
    }
    // Hosts match on ErrorKind, so every kind's index is part of the format.
    for kind in error_kinds() {
        let name = format!("Event::Done(Err(ErrorKind::{}))", variant(&kind));
        let result = Err(AgentError::new(kind, "no such file: missing.txt"));
        events.push((name, Event::Done { id, result }));
    }
    events
}

/// The handshake messages, which never change (see handshake.rs); literal versions, not the
/// crate's constants, so that a version bump leaves these lines alone.
fn handshake(examples: &mut Examples) {
    let hello = Hello {
        magic: *b"AKPR",
        min_version: 1,
        max_version: 1,
        software: "agentkernel/0.1.0".into(),
    };
    examples.add("Hello", &hello);
    let replies = [
        HelloReply::Accept {
            version: 1,
            software: "ak-agent/0.1.0".into(),
        },
        HelloReply::Reject {
            reason: "no common protocol version".into(),
            min_version: 1,
            max_version: 1,
        },
    ];
    assert_eq!(
        names(&replies),
        declared_variants::<HelloReply>(),
        "add an example of every HelloReply variant"
    );
    for reply in &replies {
        examples.add(format!("HelloReply::{}", variant(reply)), reply);
    }
}

fn names<T: Debug>(values: &[T]) -> BTreeSet<String> {
    values.iter().map(variant).collect()
}

fn all_examples() -> Examples {
    let mut examples = Examples::default();
    handshake(&mut examples);
    let requests = requests();
    let request_values: Vec<_> = requests.iter().map(|(_, r)| r.clone()).collect();
    assert_eq!(
        names(&request_values),
        declared_variants::<Request>(),
        "add an example of every Request variant"
    );
    for (name, request) in &requests {
        assert!(name.starts_with(&format!("Request::{}", variant(request))));
        examples.add(*name, request);
    }
    let events = events();
    let event_values: Vec<_> = events.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(
        names(&event_values),
        declared_variants::<Event>(),
        "add an example of every Event variant"
    );
    assert_eq!(
        names(&replies()),
        declared_variants::<Reply>(),
        "add an example of every Reply variant"
    );
    assert_eq!(
        names(&error_kinds()),
        declared_variants::<ErrorKind>(),
        "add every ErrorKind"
    );
    for (name, event) in &events {
        examples.add(name.as_str(), event);
    }
    examples
}

fn snapshot_path(version: u16) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("wire_v{version}.txt"))
}

/// `name -> hex` of a snapshot text, comments skipped.
fn parse_snapshot(text: &str) -> BTreeMap<&str, &str> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split_once(": "))
        .collect()
}

/// Lines that differ between the committed snapshot and this build, for the failure message.
fn differences(committed: &str, current: &str) -> String {
    let (old, new) = (parse_snapshot(committed), parse_snapshot(current));
    let mut out = String::new();
    for (name, hex) in &new {
        match old.get(name) {
            None => out.push_str(&format!("  new:     {name}: {hex}\n")),
            Some(was) if was != hex => out.push_str(&format!(
                "  changed: {name}\n    was {was}\n    now {hex}\n"
            )),
            Some(_) => {}
        }
    }
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        out.push_str(&format!("  gone:    {name}\n"));
    }
    out
}

#[test]
fn wire_format_matches_the_snapshot() {
    let current = all_examples().render();
    let path = snapshot_path(PROTOCOL_VERSION);
    if std::env::var_os(UPDATE_ENV).is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &current).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != current {
        panic!(
            "the wire encoding differs from {path}:\n{diff}\n\
             A wire change breaks hosts and agents built from other versions. If it is \
             intended, bump PROTOCOL_VERSION in crates/ak-protocol/src/handshake.rs (see \
             crates/ak-protocol/VERSIONING.md), then write the new snapshot with\n  \
             {UPDATE_ENV}=1 cargo test -p ak-protocol --test schema_snapshot\n\
             and commit it next to the old ones. If it is not intended, undo the change to \
             the message types (variant or field order, field types, added or removed items).",
            path = path.display(),
            diff = differences(&committed, &current),
        );
    }
}

/// The handshake must decode the same in every version, so its lines are identical in every
/// committed snapshot, old ones included.
#[test]
fn handshake_is_frozen_across_versions() {
    let current = all_examples().render();
    let current = parse_snapshot(&current);
    let frozen: Vec<_> = current
        .iter()
        .filter(|(name, _)| name.starts_with("Hello"))
        .collect();
    assert_eq!(frozen.len(), 3);
    for version in 1..=PROTOCOL_VERSION {
        let Ok(text) = std::fs::read_to_string(snapshot_path(version)) else {
            continue;
        };
        let old = parse_snapshot(&text);
        for (name, hex) in &frozen {
            assert_eq!(
                old.get(*name),
                Some(*hex),
                "{name} encodes differently than in wire_v{version}.txt: the handshake \
                 messages (Hello, HelloReply) are frozen and must never change, not even \
                 with a version bump; otherwise old peers cannot even refuse cleanly"
            );
        }
    }
}

/// The host sends its first `Exec` right behind `Hello`, before it knows which version the
/// agent settles on (`AgentClient::connect_with_exec`), so an exec request must encode the
/// same in every version this build speaks.
#[test]
fn exec_encodes_the_same_in_every_spoken_version() {
    let current = all_examples().render();
    let current = parse_snapshot(&current);
    let execs: Vec<_> = current
        .iter()
        .filter(|(name, _)| name.starts_with("Request::Exec"))
        .collect();
    assert_eq!(execs.len(), 2);
    for version in MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION {
        let text = std::fs::read_to_string(snapshot_path(version))
            .unwrap_or_else(|e| panic!("wire_v{version}.txt: {e}"));
        let old = parse_snapshot(&text);
        for (name, hex) in &execs {
            assert_eq!(
                old.get(*name),
                Some(*hex),
                "{name} encodes differently than in wire_v{version}.txt: an exec is sent \
                 before the version is settled, so either keep its encoding or raise \
                 MIN_PROTOCOL_VERSION past {version} (see VERSIONING.md)"
            );
        }
    }
}

/// The variant names a derived `Deserialize` declares for an enum: a deserializer that
/// records what `deserialize_enum` is given and stops there. Comparing them with the examples
/// makes a newly added variant fail this test until it has an example.
fn declared_variants<T: DeserializeOwned>() -> BTreeSet<String> {
    let mut seen = None;
    let _ = T::deserialize(VariantProbe(&mut seen));
    seen.expect("not an enum")
        .iter()
        .map(|v| v.to_string())
        .collect()
}

struct VariantProbe<'a>(&'a mut Option<&'static [&'static str]>);

#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("variant probe stopped")
    }
}

impl std::error::Error for Stop {}

impl serde::de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> Deserializer<'de> for VariantProbe<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        *self.0 = Some(variants);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}
