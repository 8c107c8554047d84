//! The TUN device as the stack sees it, with the first checks on the way in: a TCP SYN to
//! a destination the gate refuses is answered with a RST at once (the sandbox's `connect`
//! fails with "connection refused", and no connection is ever set up); UDP other than DNS
//! to the resolver, ICMP and IPv6 are dropped. Everything else goes to `ipstack`.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::audit::{AuditSink, Event, Verdict};
use crate::ethernet::{self, Inbound, Link};
use crate::gate::Gate;

/// Most distinct dropped datagram flows remembered, so that each is audited once.
const MAX_DROPPED_FLOWS: usize = 1024;

/// The TUN device with the gate in front of the stack.
pub struct GatedTun {
    fd: AsyncFd<OwnedFd>,
    gate: Arc<Gate>,
    audit: Arc<dyn AuditSink>,
    packet: Vec<u8>,
    dropped_flows: HashSet<(SocketAddr, SocketAddr)>,
    /// For a TAP device (the sandbox speaks Ethernet): its end of the link, and a frame
    /// being written.
    link: Option<(Link, Vec<u8>)>,
}

impl std::fmt::Debug for GatedTun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatedTun").finish_non_exhaustive()
    }
}

impl GatedTun {
    /// `tun` must be non-blocking; `ethernet`: it is a TAP device (see [`crate::ethernet`]).
    /// Needs a Tokio runtime.
    pub fn new(
        tun: OwnedFd,
        gate: Arc<Gate>,
        audit: Arc<dyn AuditSink>,
        ethernet: bool,
    ) -> io::Result<GatedTun> {
        Ok(GatedTun {
            // SAFETY: the OwnedFd moves into the AsyncFd, which owns it (and so keeps it
            // open and the same) for its whole life.
            fd: unsafe { AsyncFd::register(tun) }?,
            gate,
            audit,
            packet: vec![0; usize::from(crate::MTU) + ethernet::HEADER],
            dropped_flows: HashSet::new(),
            link: ethernet.then(|| (Link::default(), Vec::new())),
        })
    }

    /// Writes one IP packet to the sandbox (see [`send_on`]).
    fn send(&mut self, packet: &[u8]) -> io::Result<usize> {
        send_on(self.fd.get_ref(), &mut self.link, packet)
    }

    /// What to do with one packet from the sandbox.
    fn judge(&mut self, length: usize) -> Judgement {
        let Ok(packet) = SlicedPacket::from_ip(&self.packet[..length]) else {
            return Judgement::Drop;
        };
        let (source, destination) = match &packet.net {
            Some(NetSlice::Ipv4(v4)) => (
                IpAddr::V4(v4.header().source_addr()),
                IpAddr::V4(v4.header().destination_addr()),
            ),
            // No IPv6 address or route is configured inside, so only a hand-made packet
            // gets here: dropped like every other protocol the policy does not carry.
            _ => return Judgement::Drop,
        };
        match &packet.transport {
            Some(TransportSlice::Tcp(tcp)) => {
                let from = SocketAddr::new(source, tcp.source_port());
                let to = SocketAddr::new(destination, tcp.destination_port());
                if !tcp.syn() || tcp.ack() {
                    return Judgement::Pass;
                }
                match self.gate.connect(to) {
                    Ok(_) => Judgement::Pass,
                    Err(reason) => {
                        self.audit.record(&Event {
                            protocol: "tcp",
                            name: self.gate.names_of(destination),
                            address: Some(destination),
                            port: to.port(),
                            verdict: Verdict::Denied,
                            rule: reason,
                            closed: false,
                            sent: 0,
                            received: 0,
                        });
                        Judgement::Reset {
                            from,
                            to,
                            ack: tcp.sequence_number().wrapping_add(1),
                        }
                    }
                }
            }
            Some(TransportSlice::Udp(udp)) => {
                let from = SocketAddr::new(source, udp.source_port());
                let to = SocketAddr::new(destination, udp.destination_port());
                if to == SocketAddr::new(IpAddr::V4(crate::RESOLVER), 53) {
                    return Judgement::Pass;
                }
                if self.dropped_flows.len() >= MAX_DROPPED_FLOWS {
                    self.dropped_flows.clear();
                }
                if self.dropped_flows.insert((from, to)) {
                    self.audit.record(&Event {
                        protocol: "udp",
                        name: None,
                        address: Some(destination),
                        port: to.port(),
                        verdict: Verdict::Denied,
                        rule: "UDP goes only to the sandbox resolver".into(),
                        closed: false,
                        sent: 0,
                        received: 0,
                    });
                }
                Judgement::Drop
            }
            _ => Judgement::Drop,
        }
    }

    /// Sends the sandbox a RST for its SYN from `from` to `to`.
    fn reset(&mut self, from: SocketAddr, to: SocketAddr, ack: u32) {
        let (IpAddr::V4(source), IpAddr::V4(destination)) = (to.ip(), from.ip()) else {
            return;
        };
        let builder = PacketBuilder::ipv4(source.octets(), destination.octets(), 64)
            .tcp(to.port(), from.port(), 0, 0)
            .rst()
            .ack(ack);
        let mut packet = Vec::with_capacity(builder.size(0));
        if builder.write(&mut packet, &[]).is_err() {
            return;
        }
        // A RST that cannot be written now (the queue to the sandbox is full) is not
        // retried: the sandbox's SYN is retransmitted and meets the gate again.
        let _ = self.send(&packet);
    }
}

/// Writes one IP packet to the sandbox on `fd`, framed when the link is Ethernet.
fn send_on(fd: &OwnedFd, link: &mut Option<(Link, Vec<u8>)>, packet: &[u8]) -> io::Result<usize> {
    match link {
        Some((link, frame)) => {
            link.frame(packet, frame);
            rustix::io::write(fd, frame)?;
            Ok(packet.len())
        }
        None => Ok(rustix::io::write(fd, packet)?),
    }
}

enum Judgement {
    Pass,
    Drop,
    Reset {
        from: SocketAddr,
        to: SocketAddr,
        ack: u32,
    },
}

impl AsyncRead for GatedTun {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.fd.poll_read_ready(cx))?;
            let read = guard.try_io(|fd| {
                rustix::io::read(fd.get_ref(), &mut this.packet[..]).map_err(io::Error::from)
            });
            let mut length = match read {
                Ok(Ok(length)) => length,
                Ok(Err(error)) => return Poll::Ready(Err(error)),
                Err(_would_block) => continue,
            };
            if let Some((link, _)) = &mut this.link {
                match link.inbound(&this.packet[..length]) {
                    Inbound::Ipv4(start) => {
                        this.packet.copy_within(start..length, 0);
                        length -= start;
                    }
                    Inbound::Reply(reply) => {
                        // Lost if the queue is full: the sandbox asks again.
                        let _ = rustix::io::write(this.fd.get_ref(), &reply);
                        continue;
                    }
                    Inbound::Drop => continue,
                }
            }
            match this.judge(length) {
                Judgement::Pass => {
                    let n = length.min(buf.remaining());
                    buf.put_slice(&this.packet[..n]);
                    return Poll::Ready(Ok(()));
                }
                Judgement::Drop => {}
                Judgement::Reset { from, to, ack } => this.reset(from, to, ack),
            }
        }
    }
}

impl AsyncWrite for GatedTun {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        packet: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| send_on(fd.get_ref(), &mut this.link, packet)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsRawFd for GatedTun {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.get_ref().as_raw_fd()
    }
}
