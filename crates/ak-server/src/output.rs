//! A finished command as the API reports it (`{output, exit_code, stdout, stderr}`), and the
//! decoding of output bytes into text without splitting a character across two chunks.

use ak_protocol::{ErrorKind, ExecEvent};
use ak_service::{CommandSession, ServiceError};
use serde::Serialize;

/// Output kept per stream of one command; the rest is dropped and `truncated` says so.
pub const MAX_CAPTURE: usize = 8 << 20;
/// Exit code of a command that ran past its timeout (as `timeout(1)` and the CLI).
pub const TIMED_OUT_CODE: i32 = 124;

/// What a finished command produced.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunResult {
    /// stdout, then stderr: what the SDKs show as the command's output.
    pub output: String,
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    /// Output beyond the capture limit was dropped.
    pub truncated: bool,
}

/// Runs `session` to its end and gathers its output. A command that could not be started
/// (not found, not executable) is reported as a shell would: exit code 127 or 126 and the
/// reason on stderr.
pub async fn collect(mut session: CommandSession) -> Result<RunResult, ServiceError> {
    let mut stdout = Capture::default();
    let mut stderr = Capture::default();
    loop {
        match session.next_event().await {
            Ok(Some(ExecEvent::Stdout(data))) => stdout.push(&data),
            Ok(Some(ExecEvent::Stderr(data))) => stderr.push(&data),
            Ok(Some(ExecEvent::Started { .. })) => {}
            Ok(Some(ExecEvent::Exited { .. }) | None) => break,
            Err(error) => {
                let code = spawn_failure_code(&error);
                let _ = session.finish().await;
                let Some(code) = code else {
                    return Err(error);
                };
                stderr.push(format!("{error}\n").as_bytes());
                return Ok(result(stdout, stderr, code, false));
            }
        }
    }
    let outcome = session.finish().await?;
    let code = if outcome.timed_out {
        TIMED_OUT_CODE
    } else {
        outcome.status.shell_code()
    };
    Ok(result(stdout, stderr, code, outcome.timed_out))
}

/// The shell's exit code for a command that could not start, if that is what `error` is.
pub fn spawn_failure_code(error: &ServiceError) -> Option<i32> {
    match error {
        ServiceError::Command(agent) => match agent.kind {
            ErrorKind::NotFound => Some(127),
            ErrorKind::SpawnFailed | ErrorKind::PermissionDenied => Some(126),
            _ => None,
        },
        _ => None,
    }
}

fn result(stdout: Capture, stderr: Capture, exit_code: i32, timed_out: bool) -> RunResult {
    let truncated = stdout.truncated || stderr.truncated;
    let stdout = String::from_utf8_lossy(&stdout.bytes).into_owned();
    let stderr = String::from_utf8_lossy(&stderr.bytes).into_owned();
    RunResult {
        output: format!("{stdout}{stderr}"),
        exit_code,
        stdout,
        stderr,
        timed_out,
        truncated,
    }
}

/// Output of one stream, up to [`MAX_CAPTURE`] bytes.
#[derive(Debug, Default)]
pub struct Capture {
    pub bytes: Vec<u8>,
    pub truncated: bool,
}

impl Capture {
    pub fn push(&mut self, data: &[u8]) {
        let room = MAX_CAPTURE.saturating_sub(self.bytes.len());
        if data.len() > room {
            self.truncated = true;
        }
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }
}

/// Turns a stream of byte chunks into text, holding back the start of a character that a
/// chunk boundary cut, so that it is decoded whole with the next chunk. Invalid bytes
/// become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Chunks {
    pending: Vec<u8>,
}

impl Utf8Chunks {
    pub fn decode(&mut self, data: &[u8]) -> String {
        self.pending.extend_from_slice(data);
        let keep = incomplete_tail(&self.pending);
        let split = self.pending.len() - keep;
        let text = String::from_utf8_lossy(&self.pending[..split]).into_owned();
        self.pending.drain(..split);
        text
    }

    /// What is left at the end of the stream.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// How many bytes at the end of `bytes` begin a UTF-8 character that is not complete yet.
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let byte = bytes[bytes.len() - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: look further back for the lead byte
        }
        let needed = match byte {
            b if b & 0b1110_0000 == 0b1100_0000 => 2,
            b if b & 0b1111_0000 == 0b1110_0000 => 3,
            b if b & 0b1111_1000 == 0b1111_0000 => 4,
            _ => return 0,
        };
        return if needed > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_cut_by_chunks_are_decoded_whole() {
        let text = "héllo → 世界 🎉";
        let bytes = text.as_bytes();
        for size in 1..5 {
            let mut decoder = Utf8Chunks::default();
            let mut out = String::new();
            for chunk in bytes.chunks(size) {
                out.push_str(&decoder.decode(chunk));
            }
            out.push_str(&decoder.finish());
            assert_eq!(out, text, "chunks of {size}");
        }
    }

    #[test]
    fn invalid_bytes_do_not_stall() {
        let mut decoder = Utf8Chunks::default();
        assert_eq!(decoder.decode(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(decoder.decode(b"\xe4"), "");
        assert_eq!(decoder.finish(), "\u{fffd}");
    }

    #[test]
    fn capture_is_bounded() {
        let mut capture = Capture::default();
        capture.push(&vec![b'x'; MAX_CAPTURE - 1]);
        assert!(!capture.truncated);
        capture.push(b"yz");
        assert!(capture.truncated);
        assert_eq!(capture.bytes.len(), MAX_CAPTURE);
    }
}
