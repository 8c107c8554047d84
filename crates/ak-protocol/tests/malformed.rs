//! Truncated, corrupted and random frames never panic the decoder, and what it accepts round-trips.
//!
//! The stable-Rust twin of `fuzz/fuzz_targets/decode_frames.rs`, so CI checks the property too.

#![allow(
    clippy::unwrap_used,
    reason = "the helpers below are not #[test] fns, and a failing step should stop the test loudly"
)]

use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};

use ak_protocol::frame::{decode_frame, encode_frame};
use ak_protocol::handshake::{Hello, HelloReply};
use ak_protocol::{
    AgentError, ErrorKind, Event, ExecSpec, ExitStatus, FileStat, FileType, PtySize, Reply,
    Request, StdinMode,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

/// Consumes frames off the front of `buf` as `T` until more bytes are needed or one is
/// refused; each decoded message must survive encode + decode unchanged. Returns how many
/// decoded.
fn decode_all<T>(mut buf: &[u8]) -> usize
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut decoded = 0;
    while let Ok(Some((message, used))) = decode_frame::<T>(buf) {
        assert!((4..=buf.len()).contains(&used), "consumed {used} bytes");
        let frame = encode_frame(&message).unwrap();
        let (again, again_used) = decode_frame::<T>(&frame).unwrap().unwrap();
        assert_eq!(again, message);
        assert_eq!(again_used, frame.len());
        buf = &buf[used..];
        decoded += 1;
    }
    decoded
}

/// Decodes `buf` as every message type; a panic is reported with the input in hex so that
/// it can be replayed (also by the fuzz target).
fn check(buf: &[u8]) -> usize {
    let run = || {
        decode_all::<Request>(buf)
            + decode_all::<Event>(buf)
            + decode_all::<Hello>(buf)
            + decode_all::<HelloReply>(buf)
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(decoded) => decoded,
        Err(_) => panic!(
            "decoding panicked or failed the round trip on input {}",
            hex(buf)
        ),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One valid frame of every message variant (and of the variants nested in them).
fn valid_frames() -> Vec<Vec<u8>> {
    let data = || ByteBuf::from(b"a\x00\xffz".to_vec());
    let stat = |file_type| FileStat {
        name: "n".into(),
        file_type,
        size: 300,
        mode: 0o644,
        uid: 0,
        gid: 70_000,
        mtime: -1,
    };
    let spec = ExecSpec {
        argv: vec!["sh".into(), "-c".into(), "true".into()],
        env: vec![("K".into(), "V".into())],
        cwd: Some("/w".into()),
        user: Some("0".into()),
        stdin: StdinMode::Pipe,
        timeout_ms: Some(u64::MAX),
        pty: Some(PtySize { rows: 1, cols: 2 }),
    };
    let id = 300;
    let requests = [
        Request::Exec { id, spec },
        Request::Exec {
            id,
            spec: ExecSpec::default(),
        },
        Request::Stdin { id, data: data() },
        Request::CloseStdin { id },
        Request::Signal { id, signal: -9 },
        Request::Resize {
            id,
            size: PtySize { rows: 3, cols: 4 },
        },
        Request::ReadFile {
            id,
            path: "p".into(),
            max_bytes: 1 << 40,
        },
        Request::WriteBegin {
            id,
            path: "p".into(),
            mode: 0o600,
        },
        Request::WriteChunk { id, data: data() },
        Request::WriteCommit { id },
        Request::ListDir {
            id,
            path: "d".into(),
        },
        Request::Stat {
            id,
            path: "p".into(),
        },
        Request::Remove {
            id,
            path: "p".into(),
            recursive: true,
        },
        Request::Mkdir {
            id,
            path: "d".into(),
            parents: false,
            mode: 0o755,
        },
        Request::Ping { id },
        Request::Shutdown { id },
    ];
    let replies = [
        Reply::Ok,
        Reply::FileEnd { size: 5 },
        Reply::Entries(vec![stat(FileType::File), stat(FileType::Symlink)]),
        Reply::Stat(stat(FileType::Dir)),
        Reply::Pong {
            agent_version: "v".into(),
        },
    ];
    let mut events = vec![
        Event::Started { id, pid: 1 },
        Event::Stdout { id, data: data() },
        Event::Stderr { id, data: data() },
        Event::Exited {
            id,
            status: ExitStatus::Code(-1),
            timed_out: false,
        },
        Event::Exited {
            id,
            status: ExitStatus::Signal(9),
            timed_out: true,
        },
        Event::FileData { id, data: data() },
        Event::Done {
            id,
            result: Err(AgentError::new(ErrorKind::Io, "e")),
        },
    ];
    events.extend(replies.into_iter().map(|reply| Event::Done {
        id,
        result: Ok(reply),
    }));
    let hello = Hello {
        magic: *b"AKPR",
        min_version: 1,
        max_version: 2,
        software: "s".into(),
    };
    let hello_replies = [
        HelloReply::Accept {
            version: 1,
            software: "s".into(),
        },
        HelloReply::Reject {
            reason: "r".into(),
            min_version: 1,
            max_version: 1,
        },
    ];
    let mut frames: Vec<Vec<u8>> = requests.iter().map(|m| encode_frame(m).unwrap()).collect();
    frames.extend(events.iter().map(|m| encode_frame(m).unwrap()));
    frames.push(encode_frame(&hello).unwrap());
    frames.extend(hello_replies.iter().map(|m| encode_frame(m).unwrap()));
    frames
}

#[test]
fn valid_frames_decode_back_to_back() {
    let frames = valid_frames();
    let stream = frames.concat();
    // Each frame decodes as the type it was written as, but a stream of mixed types stops
    // at the first frame of another type, so count frames per type separately.
    let decoded: usize = frames.iter().map(|frame| check(frame)).sum();
    assert!(
        decoded >= frames.len(),
        "{decoded} of {} decoded",
        frames.len()
    );
    check(&stream);
}

#[test]
fn truncations_and_byte_mutations_never_panic() {
    let frames = valid_frames();
    let mut cases = 0;
    for frame in &frames {
        for cut in 0..frame.len() {
            check(&frame[..cut]);
            cases += 1;
        }
        for at in 0..frame.len() {
            let mutations: [fn(u8) -> u8; 3] = [|_| 0x00, |_| 0xff, |b| b.wrapping_add(1)];
            for mutate in mutations {
                let mut mutated = frame.clone();
                mutated[at] = mutate(mutated[at]);
                check(&mutated);
                cases += 1;
            }
        }
    }
    assert!(cases > 1000, "only {cases} cases");
}

/// xorshift64: deterministic, so a failure reproduces, and no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_buffers_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut decoded = 0;
    for _ in 0..20_000 {
        let len = rng.below(96) as usize;
        // Mostly small bytes: postcard variant indexes, lengths and bools are small, so
        // such buffers get past the first fields far more often than uniform noise.
        let mut buf: Vec<u8> = (0..len)
            .map(|_| match rng.below(4) {
                0 => rng.next() as u8,
                _ => rng.below(16) as u8,
            })
            .collect();
        // Half the time a header that matches the buffer, so the payload is decoded at all.
        if len >= 4 && rng.below(2) == 0 {
            let payload = (len - 4) as u32;
            buf[..4].copy_from_slice(&payload.to_le_bytes());
        }
        decoded += check(&buf);
    }
    // The round-trip assertion only means something if some random buffers decode.
    assert!(decoded > 100, "only {decoded} random buffers decoded");
}
