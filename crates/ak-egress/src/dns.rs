//! The sandbox's resolver: a name the allowlist does not allow gets NXDOMAIN without any
//! query leaving the host; an allowed one is asked of the upstream resolver, and its
//! answer reaches the sandbox without the addresses it may not use (a special address
//! behind a wildcard) and without IPv6 addresses (the sandbox has no IPv6 route). Every
//! IPv4 address passed on is remembered for the sandbox's later connections.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

use crate::audit::{AuditSink, Event, Verdict};
use crate::gate::Gate;

/// How long the upstream resolver has to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers one query datagram from the sandbox; `None` for one not worth an answer
/// (not a DNS query at all).
pub async fn answer(
    gate: &Gate,
    audit: &Arc<dyn AuditSink>,
    upstream: SocketAddr,
    query: &[u8],
) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.message_type() != MessageType::Query {
        return None;
    }
    let Some(question) = request.queries().first() else {
        return reply(&request, ResponseCode::FormErr, Vec::new());
    };
    let name = question.name().to_ascii();
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let event = |verdict, rule: String| Event {
        protocol: "dns",
        name: Some(name.clone()),
        address: None,
        port: 0,
        verdict,
        rule,
        closed: false,
        sent: 0,
        received: 0,
    };
    let Some(pattern) = gate.name(&name) else {
        audit.record(&event(Verdict::Denied, "not an allowed host".into()));
        return reply(&request, ResponseCode::NXDomain, Vec::new());
    };
    if question.query_type() == RecordType::AAAA {
        return reply(&request, ResponseCode::NoError, Vec::new());
    }
    let response = match ask_upstream(upstream, query).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!("upstream resolver {upstream}: {error}");
            return reply(&request, ResponseCode::ServFail, Vec::new());
        }
    };
    let Ok(mut response) = Message::from_vec(&response) else {
        return reply(&request, ResponseCode::ServFail, Vec::new());
    };
    if response.id() != request.id() {
        return reply(&request, ResponseCode::ServFail, Vec::new());
    }
    let mut kept = Vec::new();
    let mut addresses = Vec::new();
    for record in response.take_answers() {
        match record.data() {
            RData::A(a) => {
                let address = IpAddr::V4(a.0);
                if gate.answer_allowed(&pattern, address) {
                    addresses.push(address);
                    kept.push(record);
                } else {
                    audit.record(&Event {
                        address: Some(address),
                        ..event(
                            Verdict::Denied,
                            format!("{address} is private or the host's, behind {pattern}"),
                        )
                    });
                }
            }
            RData::AAAA(_) => {}
            _ => kept.push(record),
        }
    }
    gate.record(&name, &addresses);
    audit.record(&event(Verdict::Allowed, format!("host {pattern}")));
    response.insert_answers(kept);
    // Additional records could carry addresses the sandbox would then skip asking for.
    response.take_additionals();
    response.to_vec().ok()
}

fn reply(request: &Message, code: ResponseCode, answers: Vec<Record>) -> Option<Vec<u8>> {
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code)
        .add_queries(request.queries().to_vec())
        .insert_answers(answers);
    response.to_vec().ok()
}

async fn ask_upstream(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind = if upstream.is_ipv4() {
        SocketAddr::from(([0u8; 4], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buffer = vec![0u8; 4096];
    let length = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buffer))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    buffer.truncate(length);
    Ok(buffer)
}

/// The host's first resolver in `/etc/resolv.conf`.
pub fn system_resolver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .map(|address| SocketAddr::new(address, 53))
        .next()
}
