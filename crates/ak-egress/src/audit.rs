//! What the helper reports: one [`Event`] per connection, DNS answer or dropped datagram.

use std::fmt;
use std::net::IpAddr;

/// Allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied,
}

/// One verdict of the helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `tcp`, `udp`, `dns`.
    pub protocol: &'static str,
    /// The name asked for (DNS), sent as SNI or `Host`, or that resolved to the address.
    pub name: Option<String>,
    pub address: Option<IpAddr>,
    pub port: u16,
    pub verdict: Verdict,
    /// The allowlist entry that allowed it, or why it was denied.
    pub rule: String,
    /// Whether this is the end of a connection let through (its second event: the first
    /// is written when it opens, so that a connection cut by the sandbox's end is in the
    /// log too).
    pub closed: bool,
    /// Bytes from the sandbox and to it (on the closing event).
    pub sent: u64,
    pub received: u64,
}

impl fmt::Display for Event {
    /// One line for the audit log's detail.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.protocol)?;
        match (&self.name, self.address) {
            (Some(name), Some(address)) => write!(f, "{name} ({address})")?,
            (Some(name), None) => f.write_str(name)?,
            (None, Some(address)) => write!(f, "{address}")?,
            (None, None) => f.write_str("-")?,
        }
        if self.port != 0 {
            write!(f, " port {}", self.port)?;
        }
        write!(f, ": {}", self.rule)?;
        if self.closed {
            write!(
                f,
                "; closed, sent {} received {} bytes",
                self.sent, self.received
            )?;
        }
        Ok(())
    }
}

/// Where events go (the audit log, in the binary).
pub trait AuditSink: Send + Sync {
    fn record(&self, event: &Event);
}
