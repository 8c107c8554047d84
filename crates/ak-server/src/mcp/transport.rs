//! The line transport of `agentkernel mcp`: rmcp's, fed through a reader that bounds each
//! message. rmcp drops a line over its limit with only a log line, so the client would wait
//! for an answer that never comes; here a message over the limit is answered with a
//! JSON-RPC error and the session goes on. The error carries the message's id when it has
//! one (found by a streaming parse that skips values without holding them), and none
//! (a parse error) when no id can be read; a notification (no id) is only logged, since
//! JSON-RPC forbids answering one.

use std::borrow::Cow;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;

use rmcp::RoleServer;
use rmcp::model::{ErrorCode, ErrorData, RequestId};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::transport::async_rw::AsyncRwTransport;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;

/// How far into an oversized message its id is looked for, in multiples of the limit:
/// the parse holds no value, but it does hold each top-level key, so it is bounded too.
const PROBE_FACTOR: usize = 4;

/// A message over the limit, as the reader saw it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Oversized {
    /// Its length in bytes (without the line end).
    pub bytes: u64,
    pub kind: Probe,
}

/// What could be read of an oversized message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Probe {
    /// A request: it gets an error with its id.
    Request(RequestId),
    /// A well-formed message with a method and no id: not answered.
    Notification,
    /// No id could be read (not JSON, not an object, or the id lies beyond what is read).
    Unknown,
}

impl Oversized {
    /// The error answering it, if it gets one.
    fn answer(&self, limit: usize) -> Option<TxJsonRpcMessage<RoleServer>> {
        let too_large = format!(
            "the message is {} bytes, over this server's limit of {limit} bytes",
            self.bytes
        );
        match &self.kind {
            Probe::Request(id) => Some(TxJsonRpcMessage::<RoleServer>::error(
                ErrorData::new(ErrorCode::INVALID_REQUEST, too_large, None),
                Some(id.clone()),
            )),
            Probe::Unknown => Some(TxJsonRpcMessage::<RoleServer>::error(
                ErrorData::new(
                    ErrorCode::PARSE_ERROR,
                    format!("{too_large}, and no request id could be read from it"),
                    None,
                ),
                None,
            )),
            Probe::Notification => None,
        }
    }
}

/// rmcp's line transport over the bounded lines of `read`, answering to `write`.
pub(crate) struct BoundedTransport<W: AsyncWrite + Send + Unpin + 'static> {
    inner: AsyncRwTransport<RoleServer, tokio::net::UnixStream, W>,
    oversized: mpsc::Receiver<Oversized>,
    limit: usize,
}

impl<W: AsyncWrite + Send + Unpin + 'static> fmt::Debug for BoundedTransport<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedTransport")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<W: AsyncWrite + Send + Unpin + 'static> BoundedTransport<W> {
    /// Reads `read` on a thread of its own (a blocking reader, such as stdin, then never
    /// holds up the runtime), passing messages of at most `limit` bytes on to rmcp.
    pub(crate) fn new(
        read: impl Read + Send + 'static,
        write: W,
        limit: usize,
    ) -> std::io::Result<Self> {
        let (lines_out, lines_in) = UnixStream::pair()?;
        lines_in.set_nonblocking(true)?;
        let lines_in = tokio::net::UnixStream::from_std(lines_in)?;
        let (report, oversized) = mpsc::channel(16);
        std::thread::Builder::new()
            .name("mcp-reader".into())
            .spawn(move || pump(read, lines_out, &report, limit))?;
        // The lines passed on are bounded already; rmcp's own bound (which counts the line
        // end) stays as a second guard.
        let inner =
            AsyncRwTransport::new(lines_in, write).with_max_line_length(limit.saturating_add(2));
        Ok(BoundedTransport {
            inner,
            oversized,
            limit,
        })
    }
}

impl<W: AsyncWrite + Send + Unpin + 'static> Transport<RoleServer> for BoundedTransport<W> {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            tokio::select! {
                biased;
                Some(oversized) = self.oversized.recv() => {
                    tracing::warn!(bytes = oversized.bytes, kind = ?oversized.kind, "an MCP message over the limit");
                    if let Some(answer) = oversized.answer(self.limit) {
                        // Sent on its own task: this future may be dropped for another
                        // branch of rmcp's loop, and the answer must not go with it.
                        let send = self.inner.send(answer);
                        tokio::spawn(async move {
                            if let Err(e) = send.await {
                                tracing::warn!("answering an oversized MCP message: {e}");
                            }
                        });
                    }
                }
                message = self.inner.receive() => return message,
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.inner.close().await
    }
}

/// Copies the lines of `read` of at most `limit` bytes to `lines`, and reports the others,
/// until `read` ends or nobody listens.
fn pump(read: impl Read, mut lines: UnixStream, report: &mpsc::Sender<Oversized>, limit: usize) {
    let mut read = BufReader::with_capacity(64 << 10, read);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_bounded(&mut read, &mut line, limit) {
            Ok(Line::Whole) => {
                line.push(b'\n');
                if lines.write_all(&line).is_err() {
                    return;
                }
            }
            Ok(Line::Over) => {
                let prefix = std::mem::take(&mut line);
                let oversized = match probe_rest(prefix, &mut read, limit) {
                    Ok(oversized) => oversized,
                    Err(e) => {
                        tracing::warn!("reading an oversized MCP message: {e}");
                        return;
                    }
                };
                if report.blocking_send(oversized).is_err() {
                    return;
                }
            }
            // A last line without its end is incomplete: rmcp would not take it either.
            Ok(Line::End) => return,
            Err(e) => {
                tracing::warn!("reading MCP messages: {e}");
                return;
            }
        }
    }
}

/// How [`read_bounded`] stopped.
#[derive(Debug, PartialEq)]
enum Line {
    /// `line` holds a whole line, without its end.
    Whole,
    /// The line is longer than the limit: `line` holds what was read of it, and the rest
    /// is still to be read.
    Over,
    /// The input ended (anything in `line` had no line end).
    End,
}

fn read_bounded(
    read: &mut impl BufRead,
    line: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<Line> {
    loop {
        let available = read.fill_buf()?;
        if available.is_empty() {
            return Ok(Line::End);
        }
        let newline = available.iter().position(|b| *b == b'\n');
        let take = newline.unwrap_or(available.len());
        if line.len().saturating_add(take) > limit {
            return Ok(Line::Over);
        }
        line.extend_from_slice(&available[..take]);
        match newline {
            Some(at) => {
                read.consume(at + 1);
                return Ok(Line::Whole);
            }
            None => read.consume(take),
        }
    }
}

/// Reads the rest of an oversized line (everything, so the next message starts clean) and
/// what can be learnt of it from its first `PROBE_FACTOR * limit` bytes.
pub(crate) fn probe_rest(
    prefix: Vec<u8>,
    read: &mut impl BufRead,
    limit: usize,
) -> std::io::Result<Oversized> {
    let already = prefix.len() as u64;
    let mut rest = RestOfLine {
        read,
        ended: false,
        bytes: 0,
    };
    let window = limit
        .saturating_mul(PROBE_FACTOR)
        .saturating_sub(prefix.len()) as u64;
    let kind = {
        let source = std::io::Cursor::new(prefix).chain((&mut rest).take(window));
        probe(source)
    };
    std::io::copy(&mut rest, &mut std::io::sink())?;
    Ok(Oversized {
        bytes: already + rest.bytes,
        kind,
    })
}

/// The bytes of a line up to its end (which is consumed, not returned).
struct RestOfLine<'a, R: BufRead> {
    read: &'a mut R,
    ended: bool,
    bytes: u64,
}

impl<R: BufRead> Read for RestOfLine<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.ended {
            return Ok(0);
        }
        let available = self.read.fill_buf()?;
        if available.is_empty() {
            self.ended = true;
            return Ok(0);
        }
        let newline = available.iter().position(|b| *b == b'\n');
        let take = newline.unwrap_or(available.len());
        let n = take.min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        let consumed = if newline.is_some() && n == take {
            self.ended = true;
            n + 1
        } else {
            n
        };
        self.read.consume(consumed);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// What the top level of a message says, read as a stream: values are skipped (serde
/// skips strings and numbers of a reader without holding them), and the parse stops at
/// the id.
fn probe(source: impl Read) -> Probe {
    let mut found = Found::default();
    let mut parser = serde_json::Deserializer::from_reader(source);
    let parsed = serde::Deserializer::deserialize_map(&mut parser, &mut found);
    match found {
        Found { id: Some(id), .. } => Probe::Request(id),
        Found { method: true, .. } if parsed.is_ok() => Probe::Notification,
        _ => Probe::Unknown,
    }
}

#[derive(Debug, Default)]
struct Found {
    id: Option<RequestId>,
    method: bool,
}

/// Stops the parse once the id is read (the rest need not be parsed).
const FOUND_ID: &str = "found the id";

impl<'de> Visitor<'de> for &mut Found {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC message")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "id" => {
                    self.id = Some(map.next_value()?);
                    return Err(de::Error::custom(FOUND_ID));
                }
                "method" => {
                    self.method = true;
                    map.next_value::<IgnoredAny>()?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for &mut Found {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oversized(message: &str, limit: usize) -> (Oversized, Vec<u8>) {
        let input = format!("{message}\n{{\"next\":1}}\n");
        let mut read = BufReader::with_capacity(7, input.as_bytes());
        let mut line = Vec::new();
        assert_eq!(
            read_bounded(&mut read, &mut line, limit).unwrap(),
            Line::Over
        );
        let found = probe_rest(line, &mut read, limit).unwrap();
        // The next message starts where it should.
        let mut next = Vec::new();
        assert_eq!(
            read_bounded(&mut read, &mut next, limit).unwrap(),
            Line::Whole
        );
        (found, next)
    }

    #[test]
    fn lines_within_the_limit_pass_whole() {
        let mut read = BufReader::with_capacity(3, "abcd\n\nxy".as_bytes());
        let mut line = Vec::new();
        assert_eq!(read_bounded(&mut read, &mut line, 4).unwrap(), Line::Whole);
        assert_eq!(line, b"abcd");
        line.clear();
        assert_eq!(read_bounded(&mut read, &mut line, 4).unwrap(), Line::Whole);
        assert_eq!(line, b"");
        line.clear();
        assert_eq!(read_bounded(&mut read, &mut line, 4).unwrap(), Line::End);
    }

    #[test]
    fn the_id_is_found_wherever_it_is() {
        let big = "x".repeat(200);
        // The Python client writes method and params before jsonrpc and id.
        let (found, next) = oversized(
            &format!(
                r#"{{"method":"tools/call","params":{{"a":["{big}",{{"k":1.5e3}}]}},"jsonrpc":"2.0","id":42}}"#
            ),
            100,
        );
        assert_eq!(found.kind, Probe::Request(RequestId::Number(42)));
        assert_eq!(next, br#"{"next":1}"#);
        let (found, _) = oversized(&format!(r#"{{"id":"abc","params":"{big}"}}"#), 50);
        assert_eq!(found.kind, Probe::Request(RequestId::String("abc".into())));
        assert_eq!(found.bytes, 224);
    }

    #[test]
    fn no_id_is_a_notification_or_unknown() {
        let big = "y".repeat(200);
        let (found, _) = oversized(
            &format!(r#"{{"method":"notifications/x","params":"{big}"}}"#),
            100,
        );
        assert_eq!(found.kind, Probe::Notification);
        let (found, _) = oversized(&format!("not json {big}"), 50);
        assert_eq!(found.kind, Probe::Unknown);
        let (found, _) = oversized(&format!(r#"["{big}"]"#), 50);
        assert_eq!(found.kind, Probe::Unknown);
        // An id beyond the window is not looked for.
        let (found, _) = oversized(&format!(r#"{{"params":"{big}","id":1}}"#), 50);
        assert_eq!(found.kind, Probe::Unknown);
        // A truncated message with a method is not taken for a notification.
        let (found, _) = oversized(&format!(r#"{{"method":"m","params":"{big}"#), 50);
        assert_eq!(found.kind, Probe::Unknown);
    }

    #[test]
    fn answers_carry_the_id_or_none() {
        let request = Oversized {
            bytes: 99,
            kind: Probe::Request(RequestId::Number(7)),
        };
        let answer = serde_json::to_value(request.answer(10).unwrap()).unwrap();
        assert_eq!(answer["id"], 7);
        assert_eq!(answer["error"]["code"], -32600);
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("99 bytes")
        );
        let unknown = Oversized {
            bytes: 99,
            kind: Probe::Unknown,
        };
        let answer = serde_json::to_value(unknown.answer(10).unwrap()).unwrap();
        assert_eq!(answer["error"]["code"], -32700);
        let notification = Oversized {
            bytes: 99,
            kind: Probe::Notification,
        };
        assert!(notification.answer(10).is_none());
    }
}
