//! What the first bytes of a connection say about where it is going: the server name of a
//! TLS ClientHello (SNI) or the `Host` of an HTTP request.

/// What a connection's first bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// A TLS ClientHello, with its server name if it sent one.
    Tls(Option<String>),
    /// An HTTP request, with its `Host` (without the port) if it sent one.
    Http(Option<String>),
    /// Something else (or nothing yet): only the address decides.
    Other,
    /// The start of a TLS or HTTP opening: more bytes are needed.
    Incomplete,
}

impl Opening {
    pub fn is_http(&self) -> bool {
        matches!(self, Opening::Http(_))
    }
}

/// Longest opening read before deciding (a ClientHello or request head beyond it is
/// judged on what arrived).
pub const MAX_OPENING: usize = 16 * 1024;

/// Classifies the bytes a connection opened with.
pub fn classify(bytes: &[u8]) -> Opening {
    if bytes.first() == Some(&0x16) {
        return client_hello_sni(bytes);
    }
    if looks_like_http(bytes) {
        return http_host(bytes);
    }
    Opening::Other
}

fn looks_like_http(bytes: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
    ];
    METHODS.iter().any(|method| {
        let n = method.len().min(bytes.len());
        !bytes.is_empty() && bytes[..n] == method[..n]
    })
}

fn http_host(bytes: &[u8]) -> Opening {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Opening::Incomplete,
        // Not HTTP after all (or too many headers): the address alone decides, as for any
        // other protocol.
        Err(_) => return Opening::Other,
    }
    let host = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| strip_port(&String::from_utf8_lossy(h.value)).to_ascii_lowercase());
    Opening::Http(host)
}

/// `example.com:8080` → `example.com`; `[2001:db8::1]:80` → `[2001:db8::1]`.
pub(crate) fn strip_port(host: &str) -> &str {
    let host = host.trim();
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// A reader over a byte slice that fails (returns `None`) instead of running off its end.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
}

/// The SNI of a ClientHello in TLS records (RFC 8446 §4.1.2, RFC 6066 §3). Only the first
/// record is read: a ClientHello split over records is judged `Tls(None)`.
fn client_hello_sni(bytes: &[u8]) -> Opening {
    let mut record = Cursor { bytes };
    let header = (|| {
        let _content_type = record.u8()?;
        let _version = record.take(2)?;
        record.u16()
    })();
    let Some(length) = header else {
        return Opening::Incomplete;
    };
    let Some(body) = record.take(length) else {
        return if bytes.len() >= MAX_OPENING {
            Opening::Tls(None)
        } else {
            Opening::Incomplete
        };
    };
    Opening::Tls(sni_in_handshake(body))
}

fn sni_in_handshake(body: &[u8]) -> Option<String> {
    let mut hello = Cursor { bytes: body };
    if hello.u8()? != 1 {
        return None; // not a ClientHello
    }
    let length = hello.u24()?;
    let mut hello = Cursor {
        bytes: hello.take(length).unwrap_or(hello.bytes),
    };
    hello.take(2 + 32)?; // version, random
    let session = hello.u8()?;
    hello.take(session)?;
    let suites = hello.u16()?;
    hello.take(suites)?;
    let compression = hello.u8()?;
    hello.take(compression)?;
    let extensions = hello.u16()?;
    let mut extensions = Cursor {
        bytes: hello.take(extensions)?,
    };
    while let Some(kind) = extensions.u16() {
        let length = extensions.u16()?;
        let data = extensions.take(length)?;
        if kind != 0 {
            continue;
        }
        let mut list = Cursor { bytes: data };
        let list_length = list.u16()?;
        let mut names = Cursor {
            bytes: list.take(list_length)?,
        };
        while let Some(name_type) = names.u8() {
            let length = names.u16()?;
            let name = names.take(length)?;
            if name_type == 0 {
                return std::str::from_utf8(name)
                    .ok()
                    .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello record with `sni` (if any).
    pub(crate) fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let mut extensions = Vec::new();
        if let Some(name) = sni {
            let name = name.as_bytes();
            let mut entry = vec![0u8];
            entry.extend((name.len() as u16).to_be_bytes());
            entry.extend(name);
            let mut data = (entry.len() as u16).to_be_bytes().to_vec();
            data.extend(entry);
            extensions.extend(0u16.to_be_bytes());
            extensions.extend((data.len() as u16).to_be_bytes());
            extensions.extend(data);
        }
        // An unrelated extension first (supported_versions), as real clients send.
        let mut all = vec![0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04];
        all.extend(extensions);
        let mut hello = vec![0x03, 0x03];
        hello.extend([7u8; 32]);
        hello.push(0); // session id
        hello.extend([0x00, 0x02, 0x13, 0x01]); // one suite
        hello.extend([0x01, 0x00]); // null compression
        hello.extend((all.len() as u16).to_be_bytes());
        hello.extend(all);
        let mut handshake = vec![1u8];
        handshake.extend(&(hello.len() as u32).to_be_bytes()[1..]);
        handshake.extend(hello);
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend((handshake.len() as u16).to_be_bytes());
        record.extend(handshake);
        record
    }

    #[test]
    fn sni_is_found() {
        let hello = client_hello(Some("Api.Example.COM"));
        assert_eq!(
            classify(&hello),
            Opening::Tls(Some("api.example.com".into()))
        );
        assert_eq!(classify(&client_hello(None)), Opening::Tls(None));
    }

    #[test]
    fn partial_and_garbage_never_panic() {
        let hello = client_hello(Some("example.com"));
        for n in 1..hello.len() {
            assert_eq!(classify(&hello[..n]), Opening::Incomplete, "{n}");
        }
        let mut broken = hello.clone();
        broken[9] = 0xff; // handshake length far beyond the record
        let _ = classify(&broken);
        for seed in 0..2000u32 {
            let junk: Vec<u8> = (0..(seed % 97))
                .map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 40503) >> 7) as u8)
                .collect();
            let mut tls = vec![0x16];
            tls.extend(&junk);
            let _ = classify(&tls);
            let _ = classify(&junk);
        }
    }

    #[test]
    fn http_host_is_found() {
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: Example.com:8080\r\nAccept: */*\r\n\r\n"),
            Opening::Http(Some("example.com".into()))
        );
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n"),
            Opening::Http(Some("[2001:db8::1]".into()))
        );
        assert_eq!(classify(b"GET / HTTP/1.0\r\n\r\n"), Opening::Http(None));
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: a"), Opening::Incomplete);
        assert_eq!(classify(b"GE"), Opening::Incomplete);
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Opening::Other);
        assert_eq!(classify(b"hello"), Opening::Other);
    }
}
