//! TLS interception of a secret's host: the sandbox's TLS ends here, with a certificate for
//! the name it asked for signed by the sandbox's own CA; a new TLS connection goes to the
//! real server, whose certificate is checked against the host's roots. One HTTP/1.1
//! request per connection (`Connection: close` both ways): its head gets the real values in
//! place of their placeholders, a placeholder of another host's secret anywhere in it is a
//! leak, and the response comes back with every real value masked to its placeholder.
//!
//! What is masked: response heads and bodies as the server sends them. A compressed body
//! (`Content-Encoding` other than identity) is passed as it is: a value inside it is not
//! found. What is substituted: request header values only (not the request line, not
//! bodies).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::audit::{AuditSink, Event, Verdict};
use crate::scan::Masker;
use crate::secrets::Secrets;

/// Longest request or response head.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers in a head.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size or trailer line of a chunked body.
const MAX_LINE: usize = 4096;

/// A stream whose first bytes were read already (the ClientHello the relay judged).
pub struct Prefixed<C> {
    prefix: Vec<u8>,
    at: usize,
    inner: C,
}

impl<C> std::fmt::Debug for Prefixed<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Prefixed {{ {} bytes first }}", self.prefix.len())
    }
}

impl<C> Prefixed<C> {
    pub fn new(prefix: Vec<u8>, inner: C) -> Self {
        Prefixed {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Prefixed<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Prefixed<C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves the one leaf made for this connection's name.
#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Why an intercepted connection ended early (for the audit log).
enum Cut {
    /// Said in the audit log and, where the sandbox can still be told, in a response.
    Refused(u16, String),
    /// A placeholder of rule `.0` went where it may not.
    Leak(usize),
    /// The connection broke (either side); nothing to tell anybody.
    Broken(String),
}

impl From<std::io::Error> for Cut {
    fn from(error: std::io::Error) -> Cut {
        Cut::Broken(error.to_string())
    }
}

/// Intercepts `client` (whose ClientHello, naming `name`, is `opening`), connected
/// already to the real server by `upstream`.
pub async fn intercept<C>(
    client: C,
    opening: Vec<u8>,
    upstream: TcpStream,
    name: String,
    secrets: Arc<Secrets>,
    audit: Arc<dyn AuditSink>,
    mut event: Event,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    event.name = Some(name.clone());
    let leaf = match secrets.ca.leaf(&name) {
        Ok(leaf) => leaf,
        Err(error) => {
            event.rule = format!("secret host, but no certificate: {error}");
            audit.record(&event);
            return;
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|builder| {
            let mut config = builder
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(OneCert(leaf)));
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            config
        });
    let server = match server {
        Ok(server) => server,
        Err(error) => {
            event.rule = format!("secret host, but TLS could not be set up: {error}");
            audit.record(&event);
            return;
        }
    };
    let mut inside = match tokio_rustls::TlsAcceptor::from(Arc::new(server))
        .accept(Prefixed::new(opening, client))
        .await
    {
        Ok(stream) => stream,
        Err(error) => {
            event.rule = format!(
                "secret host: the sandbox did not accept its certificate (is the sandbox CA trusted?): {error}"
            );
            audit.record(&event);
            return;
        }
    };
    let outcome = serve(&mut inside, upstream, &name, &secrets, &*audit, &event).await;
    let names = [name.clone()];
    match outcome {
        Ok((sent, received)) => {
            event.verdict = Verdict::Allowed;
            event.closed = true;
            event.sent = sent;
            event.received = received;
            event.rule = format!("secret host {name}: intercepted");
            audit.record(&event);
        }
        // Recorded before the answer: a sandbox that ends once it has it (its helper with
        // it) must not lose the verdict.
        Err(Cut::Leak(index)) => {
            secrets.leaked(&*audit, event, index, &names);
            let _ = refuse(
                &mut inside,
                403,
                "a secret's placeholder may not go to this host",
            )
            .await;
        }
        Err(Cut::Refused(status, reason)) => {
            event.rule = format!("secret host {name}: {reason}");
            audit.record(&event);
            let _ = refuse(&mut inside, status, &reason).await;
        }
        Err(Cut::Broken(reason)) => tracing::debug!("{name}: {reason}"),
    }
}

/// Answers the sandbox with an error response saying `reason`, and closes.
pub(crate) async fn refuse<W: AsyncWrite + Unpin>(
    client: &mut W,
    status: u16,
    reason: &str,
) -> std::io::Result<()> {
    let body = format!("agentkernel: egress policy: {reason}\n");
    let text = match status {
        403 => "Forbidden",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        _ => "Bad Gateway",
    };
    let response = format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(response.as_bytes()).await?;
    client.shutdown().await
}

/// One request and its response; returns the bytes sent and received.
async fn serve<C>(
    inside: &mut C,
    upstream: TcpStream,
    name: &str,
    secrets: &Secrets,
    audit: &dyn AuditSink,
    event: &Event,
) -> Result<(u64, u64), Cut>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (head, leftover) = match read_head(inside, Vec::new()).await? {
        Some(read) => read,
        None => return Ok((0, 0)),
    };
    let request = rewrite_request(&head, name, secrets)?;
    for key in &request.substituted {
        let mut note = event.clone();
        note.verdict = Verdict::Allowed;
        note.rule = format!("secret {key} substituted for its placeholder");
        audit.record(&note);
    }
    let server_name = ServerName::try_from(name.to_string())
        .map_err(|e| Cut::Refused(502, format!("{name} is not a server name: {e}")))?;
    let mut outside = tokio_rustls::TlsConnector::from(secrets.client.clone())
        .connect(server_name, upstream)
        .await
        .map_err(|e| Cut::Refused(502, format!("the server's TLS failed: {e}")))?;
    outside.write_all(&request.head).await?;
    let sent = std::sync::atomic::AtomicU64::new(request.head.len() as u64);

    let (mut from_inside, mut to_inside) = tokio::io::split(inside);
    let (mut from_outside, mut to_outside) = tokio::io::split(&mut outside);
    // The request body (and whatever else the sandbox sends) goes on as it is, checked
    // for placeholders that may not go here.
    let names = [name.to_string()];
    let upload = async {
        let mut detector = secrets.detector();
        let mut chunk = leftover;
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            if !chunk.is_empty() {
                if let Some(index) = detector.scan(&chunk)
                    && !secrets.may_go(index, &names)
                {
                    return Err(Cut::Leak(index));
                }
                to_outside.write_all(&chunk).await?;
                sent.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            let n = from_inside.read(&mut buffer).await?;
            if n == 0 {
                return Ok::<(), Cut>(());
            }
            chunk = buffer[..n].to_vec();
        }
    };
    let received = {
        let download = respond(
            &mut from_outside,
            &mut to_inside,
            secrets.masker(),
            request.is_head,
        );
        tokio::pin!(upload, download);
        tokio::select! {
            received = &mut download => received?,
            uploaded = &mut upload => {
                uploaded?;
                download.await?
            }
        }
    };
    let _ = to_inside.shutdown().await;
    Ok((sent.into_inner(), received))
}

/// Reads a head (through its blank line) that starts with `bytes` read already; returns it
/// and the bytes read beyond it, or `None` when the stream ends before any byte.
async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut R,
    mut bytes: Vec<u8>,
) -> Result<Option<(Vec<u8>, Vec<u8>)>, Cut> {
    let mut chunk = vec![0u8; 8192];
    loop {
        if let Some(end) = memchr::memmem::find(&bytes, b"\r\n\r\n") {
            let rest = bytes.split_off(end + 4);
            return Ok(Some((bytes, rest)));
        }
        if bytes.len() > MAX_HEAD {
            return Err(Cut::Refused(431, "the head is larger than 64 KiB".into()));
        }
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return if bytes.is_empty() {
                Ok(None)
            } else {
                Err(Cut::Broken("the stream ended inside a head".into()))
            };
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
}

/// A request head as it goes to the server.
struct Request {
    head: Vec<u8>,
    is_head: bool,
    /// The keys whose values went in.
    substituted: Vec<String>,
}

/// Headers a proxy that closes every connection does not pass on.
const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "proxy-connection"];

fn rewrite_request(head: &[u8], name: &str, secrets: &Secrets) -> Result<Request, Cut> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) | Err(_) => {
            return Err(Cut::Refused(400, "not an HTTP/1.1 request".into()));
        }
    }
    // Leaks first, on the head as the sandbox wrote it (request line included).
    if let Some(index) = secrets.leak_in(head, &[name.to_string()]) {
        return Err(Cut::Leak(index));
    }
    let host = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| crate::peek::strip_port(&String::from_utf8_lossy(h.value)).to_ascii_lowercase());
    if host.as_deref().is_some_and(|host| host != name) {
        return Err(Cut::Refused(
            421,
            format!("the Host header does not name {name}, the TLS server name"),
        ));
    }
    let method = request.method.unwrap_or("GET");
    let mut out = format!("{method} {} HTTP/1.1\r\n", request.path.unwrap_or("/")).into_bytes();
    let mut substituted = Vec::new();
    let rules: Vec<_> = secrets
        .rules
        .iter()
        .filter(|rule| rule.host.matches(name))
        .collect();
    for header in request.headers.iter() {
        let lower = header.name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&lower.as_str()) {
            continue;
        }
        let mut value = header.value.to_vec();
        for rule in &rules {
            if rule.header.as_deref().is_some_and(|h| h != lower) {
                continue;
            }
            let placeholder = memchr::memmem::Finder::new(rule.placeholder.as_bytes());
            if placeholder.find(&value).is_none() {
                continue;
            }
            value = crate::scan::replace(&value, &placeholder, rule.value.as_bytes());
            if !substituted.contains(&rule.key) {
                substituted.push(rule.key.clone());
            }
        }
        out.extend_from_slice(header.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(Request {
        head: out,
        is_head: method.eq_ignore_ascii_case("HEAD"),
        substituted,
    })
}

/// How a response body ends.
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Passes the server's response to the sandbox with every real value masked: heads
/// rewritten (no `Content-Length` or chunking, since masking changes lengths: the body ends
/// when the connection closes), bodies streamed through `masker`. Returns bytes received.
async fn respond<R, W>(
    outside: &mut R,
    inside: &mut W,
    mut masker: Masker,
    is_head: bool,
) -> Result<u64, Cut>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut received = 0u64;
    // Bytes read past an interim response's head: the start of the next one.
    let mut pending = Vec::new();
    loop {
        let Some((head, leftover)) = read_head(outside, std::mem::take(&mut pending)).await? else {
            return Ok(received);
        };
        received += head.len() as u64;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err(Cut::Broken("the server's response is not HTTP/1.1".into())),
        }
        let status = response.code.unwrap_or(0);
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
        };
        let framing = if is_head || status == 204 || status == 304 || (100..200).contains(&status) {
            Framing::None
        } else if header("transfer-encoding").is_some_and(|te| te.ends_with("chunked")) {
            Framing::Chunked
        } else if let Some(length) = header("content-length") {
            Framing::Length(
                length
                    .parse()
                    .map_err(|_| Cut::Broken("a bad Content-Length from the server".into()))?,
            )
        } else {
            Framing::UntilClose
        };
        let line_end = memchr::memmem::find(&head, b"\r\n").unwrap_or(head.len());
        let mut out = head[..line_end].to_vec();
        out.extend_from_slice(b"\r\n");
        for h in response.headers.iter() {
            let lower = h.name.to_ascii_lowercase();
            if matches!(lower.as_str(), "content-length" | "transfer-encoding")
                || HOP_BY_HOP.contains(&lower.as_str())
            {
                continue;
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        if !(100..200).contains(&status) {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let mut head_masker = masker.fresh();
        let mut masked = head_masker.push(&out);
        masked.extend(head_masker.finish());
        inside.write_all(&masked).await?;
        // An interim response (100 Continue): the real one follows.
        if (100..200).contains(&status) && status != 101 {
            pending = leftover;
            continue;
        }
        let mut body = std::io::Cursor::new(leftover).chain(&mut *outside);
        received += match framing {
            Framing::None => 0,
            Framing::Length(length) => {
                pump(&mut (&mut body).take(length), inside, &mut masker).await?
            }
            Framing::UntilClose => pump(&mut body, inside, &mut masker).await?,
            Framing::Chunked => dechunk(&mut body, inside, &mut masker).await?,
        };
        let rest = masker.finish();
        inside.write_all(&rest).await?;
        return Ok(received);
    }
}

/// Copies `from` to `to` through `masker` until `from` ends; returns bytes read.
async fn pump<R, W>(from: &mut R, to: &mut W, masker: &mut Masker) -> Result<u64, Cut>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        let masked = masker.push(&buffer[..n]);
        to.write_all(&masked).await?;
    }
}

/// Decodes a chunked body (RFC 9112 §7.1) into `to` through `masker`.
async fn dechunk<R, W>(from: &mut R, to: &mut W, masker: &mut Masker) -> Result<u64, Cut>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = tokio::io::BufReader::new(from);
    let mut total = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        read_line(&mut reader, &mut line).await?;
        let text = String::from_utf8_lossy(&line);
        let size = text.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| Cut::Broken("a bad chunk size from the server".into()))?;
        if size == 0 {
            // Trailers, up to the blank line.
            loop {
                line.clear();
                read_line(&mut reader, &mut line).await?;
                if line == b"\r\n" || line == b"\n" || line.is_empty() {
                    return Ok(total);
                }
            }
        }
        total += pump(&mut (&mut reader).take(size), to, masker).await?;
        line.clear();
        read_line(&mut reader, &mut line).await?;
    }
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> Result<(), Cut> {
    let n = (&mut *reader)
        .take(MAX_LINE as u64)
        .read_until(b'\n', line)
        .await?;
    if n == 0 || !line.ends_with(b"\n") {
        return Err(Cut::Broken("a chunked body ended early".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::Rule;

    fn secrets() -> Secrets {
        let rule =
            |key: &str, host: &str, header: Option<&str>, placeholder: &str, value: &str| Rule {
                key: key.into(),
                host: host.parse().unwrap(),
                header: header.map(String::from),
                placeholder: placeholder.into(),
                value: value.into(),
            };
        let rules = vec![
            rule("A", "api.test", Some("authorization"), "akph_a", "VALUE-A"),
            rule("B", "other.test", None, "akph_b", "VALUE-B"),
        ];
        let hosts: Vec<_> = rules.iter().map(|r| r.host.clone()).collect();
        let ca = crate::ca::generate("0123456789ab", &hosts).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        Secrets {
            rules,
            on_leak: Default::default(),
            ca: crate::ca::SandboxCa::load(&ca, "0123456789ab", &hosts).unwrap(),
            client: Arc::new(client),
            init: std::sync::OnceLock::new(),
        }
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn requests_get_values_in_their_header_only() {
        let secrets = secrets();
        let head = b"GET /x HTTP/1.1\r\nHost: api.test:443\r\nAuthorization: Bearer akph_a\r\nX-Copy: akph_a\r\nConnection: keep-alive\r\n\r\n";
        let request = rewrite_request(head, "api.test", &secrets).unwrap_or_else(|_| panic!());
        let out = text(&request.head);
        assert!(out.starts_with("GET /x HTTP/1.1\r\n"), "{out}");
        assert!(out.contains("Authorization: Bearer VALUE-A\r\n"), "{out}");
        assert!(
            out.contains("X-Copy: akph_a\r\n"),
            "only the named header: {out}"
        );
        assert!(out.ends_with("Connection: close\r\n\r\n"), "{out}");
        assert!(!out.contains("keep-alive"), "{out}");
        assert_eq!(request.substituted, ["A"]);
        // A rule without a header fills any header.
        let head = b"POST / HTTP/1.1\r\nHost: other.test\r\nX-Key: akph_b\r\n\r\n";
        let request = rewrite_request(head, "other.test", &secrets).unwrap_or_else(|_| panic!());
        assert!(text(&request.head).contains("X-Key: VALUE-B\r\n"));
    }

    #[test]
    fn another_hosts_placeholder_or_host_is_refused() {
        let secrets = secrets();
        let leak = b"GET /?k=akph_b HTTP/1.1\r\nHost: api.test\r\n\r\n";
        assert!(matches!(
            rewrite_request(leak, "api.test", &secrets),
            Err(Cut::Leak(1))
        ));
        let fronted = b"GET / HTTP/1.1\r\nHost: other.test\r\nAuthorization: akph_a\r\n\r\n";
        assert!(matches!(
            rewrite_request(fronted, "api.test", &secrets),
            Err(Cut::Leak(0)) | Err(Cut::Refused(421, _))
        ));
        let fronted = b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n";
        assert!(matches!(
            rewrite_request(fronted, "api.test", &secrets),
            Err(Cut::Refused(421, _))
        ));
        assert!(matches!(
            rewrite_request(b"\x16\x03junk\r\n\r\n", "api.test", &secrets),
            Err(Cut::Refused(400, _))
        ));
    }

    async fn respond_to(response: &[u8], is_head: bool) -> (Result<u64, Cut>, String) {
        let masker = secrets().masker();
        let mut reader = response;
        let mut out = Vec::new();
        let result = respond(&mut reader, &mut out, masker, is_head).await;
        (result, text(&out))
    }

    #[tokio::test]
    async fn responses_come_back_masked_and_reframed() {
        let (result, out) = respond_to(
            b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\nX-Echo: VALUE-A\r\n\r\nbody VALUE-A VALUE-Bextra",
            false,
        )
        .await;
        assert!(result.is_ok());
        assert!(out.contains("X-Echo: akph_a\r\n"), "{out}");
        assert!(
            !out.to_ascii_lowercase().contains("content-length"),
            "{out}"
        );
        assert!(
            out.contains("Connection: close\r\n\r\nbody akph_a akph_b"),
            "{out}"
        );
        assert!(
            !out.contains("extra"),
            "bytes past the body are not passed on: {out}"
        );

        let (result, out) = respond_to(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nVALUE-\r\n3;x=y\r\nA!!\r\n0\r\nTrailer: t\r\n\r\n",
            false,
        )
        .await;
        assert!(result.is_ok());
        assert!(
            out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
            "{out}"
        );
        assert!(out.ends_with("\r\n\r\nakph_a!!"), "{out}");
    }

    #[tokio::test]
    async fn bad_responses_end_the_connection_without_panicking() {
        for response in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
            b"not http at all\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        ] {
            let (result, _) = respond_to(response, false).await;
            assert!(result.is_err(), "{}", text(response));
        }
        let (result, out) = respond_to(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).await;
        assert!(result.is_ok() && out.ends_with("\r\n\r\n"), "{out}");
    }
}
