//! One TCP connection from the sandbox: checked again against the gate, its first bytes
//! checked (TLS SNI, HTTP `Host`), then joined to a real connection from the host.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ak_core::egress::Rule;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::audit::{AuditSink, Event, Verdict};
use crate::gate::Gate;
use crate::peek::{MAX_OPENING, Opening, classify};
use crate::secrets::Secrets;

/// How long a connection may stay silent before it is judged by its address alone (a
/// protocol where the server speaks first: SSH, SMTP).
const OPENING_WAIT: Duration = Duration::from_millis(300);
/// The same for an address a secret's host resolved to: deciding too early not to
/// intercept would send the TLS on unchanged, its placeholder with it, and an emulated
/// VM's client can take seconds between its SYN and its ClientHello.
const SECRET_OPENING_WAIT: Duration = Duration::from_secs(5);
/// How long connecting to the destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Relays `client` (a connection the sandbox opened to `destination`) if the policy
/// allows it; returns when both directions are done. With `secrets`, a connection to a
/// secret's host is intercepted, and a placeholder in the plain bytes of any other
/// connection is a leak.
pub async fn relay<C>(
    mut client: C,
    destination: SocketAddr,
    gate: Arc<Gate>,
    audit: Arc<dyn AuditSink>,
    secrets: Option<Arc<Secrets>>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut event = Event {
        protocol: "tcp",
        name: gate.names_of(destination.ip()),
        address: Some(destination.ip()),
        port: destination.port(),
        verdict: Verdict::Denied,
        rule: String::new(),
        closed: false,
        sent: 0,
        received: 0,
    };
    // The SYN passed the gate; the policy may have changed since.
    let rule = match gate.connect(destination) {
        Ok(rule) => rule,
        Err(reason) => {
            event.rule = reason;
            audit.record(&event);
            return;
        }
    };
    // Connecting while the opening arrives keeps set-up to one round trip; the address is
    // allowed already, and nothing is sent before the opening is judged.
    let wait = match (&secrets, &event.name) {
        (Some(secrets), Some(names)) if names.split(',').any(|name| secrets.intercepts(name)) => {
            SECRET_OPENING_WAIT
        }
        _ => OPENING_WAIT,
    };
    let (opening, upstream) = tokio::join!(
        read_opening(&mut client, wait),
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(destination))
    );
    let opening = match opening {
        Ok(opening) => opening,
        Err(_) => return,
    };
    let rule = match judge(&gate, &opening, rule) {
        Ok(rule) => rule,
        Err((name, reason, http)) => {
            // Recorded first: the refusal's answer waits for the sandbox to take it, and a
            // sandbox that ends meanwhile (its helper with it) must not lose the verdict.
            event.name = Some(name);
            event.rule = reason;
            audit.record(&event);
            if http {
                let _ = crate::intercept::refuse(&mut client, 403, &event.rule).await;
            }
            return;
        }
    };
    // The names this connection goes to, as far as the helper can tell.
    let names: Vec<String> = match &opening.kind {
        Opening::Tls(Some(name)) | Opening::Http(Some(name)) => vec![name.clone()],
        _ => event
            .name
            .as_deref()
            .map(|names| names.split(',').map(String::from).collect())
            .unwrap_or_default(),
    };
    if let Some(secrets) = &secrets
        && let Some(index) = secrets.leak_in(&opening.bytes, &names)
    {
        // Recorded before the answer, as a refusal is (see above).
        secrets.leaked(&*audit, event, index, &names);
        if opening.kind.is_http() {
            let _ = crate::intercept::refuse(
                &mut client,
                403,
                "a secret's placeholder may not go to this host",
            )
            .await;
        }
        return;
    }
    let mut upstream = match upstream {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            event.rule = format!("allowed by {rule}, but the connection failed: {error}");
            audit.record(&event);
            return;
        }
        Err(_) => {
            event.rule = format!("allowed by {rule}, but the connection timed out");
            audit.record(&event);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    event.verdict = Verdict::Allowed;
    event.rule = rule.to_string();
    audit.record(&event);
    // A secret's host: intercepted, so that its placeholder can become the value.
    if let Some(secrets) = &secrets
        && let Opening::Tls(Some(name)) = &opening.kind
        && secrets.intercepts(name)
    {
        let name = name.clone();
        let secrets = secrets.clone();
        crate::intercept::intercept(client, opening.bytes, upstream, name, secrets, audit, event)
            .await;
        return;
    }
    event.closed = true;
    if let Err(error) = upstream.write_all(&opening.bytes).await {
        tracing::debug!("{destination}: {error}");
    } else {
        event.sent = opening.bytes.len() as u64;
        let copied = match &secrets {
            // Plain bytes are searched for placeholders for as long as the connection lasts
            // (TLS to other hosts is opaque here: a placeholder inside it is worthless).
            Some(secrets) if !matches!(opening.kind, Opening::Tls(_)) => {
                copy_checked(&mut client, &mut upstream, secrets, &names).await
            }
            _ => tokio::io::copy_bidirectional(&mut client, &mut upstream)
                .await
                .map_err(Checked::Io),
        };
        match copied {
            Ok((sent, received)) => {
                event.sent += sent;
                event.received = received;
            }
            Err(Checked::Leak(index)) => {
                if let Some(secrets) = &secrets {
                    secrets.leaked(&*audit, event, index, &names);
                }
                return;
            }
            Err(Checked::Io(error)) => tracing::debug!("{destination}: {error}"),
        }
    }
    audit.record(&event);
}

/// How a checked copy ended early.
enum Checked {
    Io(std::io::Error),
    /// The placeholder of this rule went where it may not.
    Leak(usize),
}

/// `copy_bidirectional`, with what the sandbox sends searched for placeholders that may
/// not go to `names`; a leak ends the connection at once.
async fn copy_checked<C>(
    client: &mut C,
    upstream: &mut TcpStream,
    secrets: &Secrets,
    names: &[String],
) -> Result<(u64, u64), Checked>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (mut from_upstream, mut to_upstream) = upstream.split();
    let upload = async {
        let mut detector = secrets.detector();
        let mut buffer = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        loop {
            let n = from_client.read(&mut buffer).await.map_err(Checked::Io)?;
            if n == 0 {
                let _ = to_upstream.shutdown().await;
                return Ok(sent);
            }
            if let Some(index) = detector.scan(&buffer[..n])
                && !secrets.may_go(index, names)
            {
                return Err(Checked::Leak(index));
            }
            to_upstream
                .write_all(&buffer[..n])
                .await
                .map_err(Checked::Io)?;
            sent += n as u64;
        }
    };
    let download = async {
        let received = tokio::io::copy(&mut from_upstream, &mut to_client)
            .await
            .map_err(Checked::Io)?;
        let _ = to_client.shutdown().await;
        Ok::<u64, Checked>(received)
    };
    let (sent, received) = tokio::try_join!(upload, download)?;
    Ok((sent, received))
}

/// The first bytes of a connection and what they are.
struct Read {
    bytes: Vec<u8>,
    kind: Opening,
}

/// Reads until the opening can be judged, the connection stays silent for
/// [`OPENING_WAIT`], or [`MAX_OPENING`] bytes arrived.
/// The connection's first bytes, until they can be classified or it is silent for `wait`.
async fn read_opening<C: AsyncRead + Unpin>(
    client: &mut C,
    wait: Duration,
) -> std::io::Result<Read> {
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        let read = tokio::time::timeout(wait, client.read(&mut chunk)).await;
        let n = match read {
            Err(_silent) => break,
            Ok(result) => result?,
        };
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        let kind = classify(&bytes);
        if kind != Opening::Incomplete || bytes.len() >= MAX_OPENING {
            return Ok(Read { bytes, kind });
        }
    }
    let kind = match classify(&bytes) {
        Opening::Incomplete => Opening::Other,
        kind => kind,
    };
    Ok(Read { bytes, kind })
}

/// The rule that lets this opening through, or (the name it named, why not, whether to
/// answer with an HTTP 403).
fn judge(gate: &Gate, opening: &Read, by_address: Rule) -> Result<Rule, (String, String, bool)> {
    match &opening.kind {
        Opening::Tls(Some(name)) => gate
            .named_host(name)
            .map_err(|reason| (name.clone(), format!("TLS server name {reason}"), false)),
        Opening::Http(Some(host)) => gate
            .named_host(host)
            .map_err(|reason| (host.clone(), format!("HTTP Host {reason}"), true)),
        // No name to check: the address alone decided.
        Opening::Tls(None) | Opening::Http(None) | Opening::Other | Opening::Incomplete => {
            Ok(by_address)
        }
    }
}
