//! A finished command as the API reports it (`{output, exit_code, timed_out, truncated}`),
//! and the decoding of output bytes into text without splitting a character across two
//! chunks.

use ak_service::Collected;
use ak_service::output::Held;

use crate::files::Encoding;
use serde::Serialize;

/// What a finished command produced. The output is held once: `output` is stdout followed
/// by stderr, what the SDKs read (separate streams come with `/run/stream`'s events).
#[derive(Debug, Serialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct RunResult {
    /// stdout, then stderr.
    pub output: String,
    /// `utf8`, or `base64` when the command wrote bytes that are not UTF-8.
    pub encoding: Encoding,
    pub exit_code: i32,
    pub timed_out: bool,
    /// Output beyond a capture limit was dropped.
    pub truncated: bool,
    /// Keeps `output` counted in the request's and the service's budgets until the answer
    /// is gone.
    #[serde(skip)]
    #[schema(ignore)]
    #[schemars(skip)]
    pub held: Held,
}

impl From<Collected> for RunResult {
    fn from(collected: Collected) -> Self {
        let truncated = collected.truncated();
        let (mut bytes, held) = collected.stdout.into_held();
        let (stderr, stderr_held) = collected.stderr.into_held();
        bytes.extend_from_slice(&stderr);
        drop(stderr);
        let (output, encoding) = Encoding::encode(bytes);
        RunResult {
            output,
            encoding,
            exit_code: collected.exit_code,
            timed_out: collected.timed_out,
            truncated,
            held: held.join(stderr_held),
        }
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
}
