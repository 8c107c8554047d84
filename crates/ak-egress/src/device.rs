//! The sandbox's link as the stack sees it, with the first checks on the way in: a TCP SYN
//! to a destination the gate refuses is answered with a RST at once (the sandbox's
//! `connect` fails with "connection refused", and no connection is ever set up); UDP
//! other than DNS to the resolver, ICMP and IPv6 are dropped. Everything else goes to
//! `ipstack`. The link is a TUN device (IP packets), a TAP device (Ethernet frames) or a
//! stream socket of Ethernet frames each after its length: QEMU's `stream` network
//! backend, a VM's NIC ([`Wire`]).

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
    wire: Wire,
}

/// What the descriptor carries.
#[derive(Debug)]
pub enum Wire {
    /// A TUN device: a read or a write is one IP packet.
    Tun,
    /// A TAP device: a read or a write is one Ethernet frame.
    Tap { link: Link, frame: Vec<u8> },
    /// A stream socket: Ethernet frames, each after its length (4 bytes, big-endian).
    Stream {
        link: Link,
        /// Bytes read and not yet taken as a frame.
        inbox: Vec<u8>,
        /// Bytes of frames accepted from the stack and not yet written.
        outbox: Vec<u8>,
    },
}

/// Most bytes of frames waiting to be written to a stream before the stack is held back.
const OUTBOX_LIMIT: usize = 1 << 20;

impl Wire {
    pub fn tun() -> Wire {
        Wire::Tun
    }
    pub fn tap() -> Wire {
        Wire::Tap {
            link: Link::default(),
            frame: Vec::new(),
        }
    }
    pub fn stream() -> Wire {
        Wire::Stream {
            link: Link::default(),
            inbox: Vec::new(),
            outbox: Vec::new(),
        }
    }
}

impl std::fmt::Debug for GatedTun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatedTun").finish_non_exhaustive()
    }
}

impl GatedTun {
    /// `tun` (non-blocking) carries what `wire` says. Needs a Tokio runtime.
    pub fn new(
        tun: OwnedFd,
        wire: Wire,
        gate: Arc<Gate>,
        audit: Arc<dyn AuditSink>,
    ) -> io::Result<GatedTun> {
        Ok(GatedTun {
            // SAFETY: the OwnedFd moves into the AsyncFd, which owns it (and so keeps it
            // open and the same) for its whole life.
            fd: unsafe { AsyncFd::register(tun) }?,
            gate,
            audit,
            packet: vec![0; usize::from(crate::MTU) + ethernet::HEADER],
            dropped_flows: HashSet::new(),
            wire,
        })
    }

    /// Writes one IP packet to the sandbox (see [`send_on`]).
    fn send(&mut self, packet: &[u8]) -> io::Result<usize> {
        send_on(self.fd.get_ref(), &mut self.wire, packet)
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

/// Reads the next IP packet from the sandbox on `fd` into `packet`: its length, or `None`
/// when what was read was not one (an ARP request answered, a frame dropped) or a stream
/// holds no whole frame yet; `Some(0)` at the end of a stream.
fn receive(fd: &OwnedFd, wire: &mut Wire, packet: &mut [u8]) -> io::Result<Option<usize>> {
    let length = match wire {
        Wire::Tun => return Ok(Some(rustix::io::read(fd, &mut packet[..])?)),
        Wire::Tap { .. } => rustix::io::read(fd, &mut packet[..])?,
        Wire::Stream { inbox, .. } => {
            let Some(frame) = take_frame(inbox, packet.len())? else {
                let mut chunk = [0u8; 64 << 10];
                let n = rustix::io::read(fd, &mut chunk)?;
                if n == 0 {
                    return Ok(Some(0));
                }
                inbox.extend_from_slice(&chunk[..n]);
                return Ok(None);
            };
            packet[..frame.len()].copy_from_slice(&frame);
            frame.len()
        }
    };
    let (Wire::Tap { link, .. } | Wire::Stream { link, .. }) = wire else {
        return Ok(Some(length));
    };
    match link.inbound(&packet[..length]) {
        Inbound::Ipv4(offset) => {
            packet.copy_within(offset..length, 0);
            Ok(Some(length - offset))
        }
        Inbound::Reply(reply) => {
            // Lost if the queue is full: the sandbox asks again.
            let _ = send_frame(fd, wire, &reply);
            Ok(None)
        }
        Inbound::Drop => Ok(None),
    }
}

/// Writes one IP packet to the sandbox on `fd`, framed as `wire` wants it.
fn send_on(fd: &OwnedFd, wire: &mut Wire, packet: &[u8]) -> io::Result<usize> {
    let frame = match wire {
        Wire::Tun => return Ok(rustix::io::write(fd, packet)?),
        Wire::Tap { link, frame } => {
            link.frame(packet, frame);
            std::mem::take(frame)
        }
        Wire::Stream { link, .. } => {
            let mut frame = Vec::with_capacity(packet.len() + ethernet::HEADER);
            link.frame(packet, &mut frame);
            frame
        }
    };
    let sent = send_frame(fd, wire, &frame);
    // The TAP's frame buffer is kept for the next packet.
    if let Wire::Tap { frame: buffer, .. } = wire {
        *buffer = frame;
    }
    sent.map(|()| packet.len())
}

/// Writes one Ethernet frame: whole to a TAP device; after its length to a stream, where
/// what the socket does not take now waits in the outbox (written before anything else).
/// ipstack never flushes its device, so a remainder left when the VM's socket is full goes
/// out with the next packet (at the latest the stack's retransmission): a pause under
/// backpressure, never a loss.
fn send_frame(fd: &OwnedFd, wire: &mut Wire, frame: &[u8]) -> io::Result<()> {
    match wire {
        Wire::Tun => Ok(()),
        Wire::Tap { .. } => {
            rustix::io::write(fd, frame)?;
            Ok(())
        }
        Wire::Stream { outbox, .. } => {
            flush(fd, outbox)?;
            if outbox.len() > OUTBOX_LIMIT {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let length = u32::try_from(frame.len())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            outbox.extend_from_slice(&length.to_be_bytes());
            outbox.extend_from_slice(frame);
            match flush(fd, outbox) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                other => other,
            }
        }
    }
}

/// Writes what the socket takes of `outbox` and keeps the rest.
fn flush(fd: &OwnedFd, outbox: &mut Vec<u8>) -> io::Result<()> {
    while !outbox.is_empty() {
        match rustix::io::write(fd, outbox) {
            Ok(n) => {
                outbox.drain(..n);
            }
            Err(rustix::io::Errno::AGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether a stream's `inbox` holds a whole frame (or an oversized frame's length, which
/// [`take_frame`] then refuses).
fn whole_frame(inbox: &[u8]) -> bool {
    match inbox.get(..4) {
        Some(prefix) => {
            let length = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
            inbox.len() >= 4 + length as usize || length as usize > usize::from(crate::MTU)
        }
        None => false,
    }
}

/// The first whole frame of a stream's `inbox` (taken out of it), if there is one; an
/// error for a frame longer than `largest` (not a stream of ours).
fn take_frame(inbox: &mut Vec<u8>, largest: usize) -> io::Result<Option<Vec<u8>>> {
    let Some(prefix) = inbox.get(..4) else {
        return Ok(None);
    };
    let length = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if length > largest {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {length} bytes on the VM's stream"),
        ));
    }
    if inbox.len() < 4 + length {
        return Ok(None);
    }
    let frame = inbox[4..4 + length].to_vec();
    inbox.drain(..4 + length);
    Ok(Some(frame))
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
            // A stream may hold a whole frame already: no readiness needed for it (a part of
            // one waits for the descriptor like an empty inbox does).
            let buffered = matches!(&this.wire, Wire::Stream { inbox, .. } if whole_frame(inbox));
            let received = if buffered {
                receive(this.fd.get_ref(), &mut this.wire, &mut this.packet)
            } else {
                let mut guard = ready!(this.fd.poll_read_ready(cx))?;
                match guard.try_io(|fd| receive(fd.get_ref(), &mut this.wire, &mut this.packet)) {
                    Ok(received) => received,
                    Err(_would_block) => continue,
                }
            };
            let length = match received {
                Ok(Some(length)) => length,
                Ok(None) => continue,
                Err(error) => return Poll::Ready(Err(error)),
            };
            if length == 0 {
                // The end of the VM's stream: the stack ends with it.
                return Poll::Ready(Ok(()));
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
            match guard.try_io(|fd| send_on(fd.get_ref(), &mut this.wire, packet)) {
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

#[cfg(test)]
mod tests {
    use super::{take_frame, whole_frame};

    #[test]
    fn a_stream_gives_whole_frames_only() {
        let mut inbox = Vec::new();
        assert!(!whole_frame(&inbox));
        inbox.extend_from_slice(&5u32.to_be_bytes());
        inbox.extend_from_slice(b"abc");
        // A part of a frame: not taken, and not "buffered" (the descriptor is waited for).
        assert!(!whole_frame(&inbox));
        assert_eq!(take_frame(&mut inbox, 1500).unwrap(), None);
        inbox.extend_from_slice(b"de");
        inbox.extend_from_slice(&1u32.to_be_bytes());
        assert!(whole_frame(&inbox));
        assert_eq!(take_frame(&mut inbox, 1500).unwrap().unwrap(), b"abcde");
        // The next frame's length alone: still waiting for its byte.
        assert!(!whole_frame(&inbox));
        inbox.push(b'z');
        assert_eq!(take_frame(&mut inbox, 1500).unwrap().unwrap(), b"z");
        assert!(inbox.is_empty());
        // A length no frame of ours has: refused, not waited for.
        inbox.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(whole_frame(&inbox));
        assert!(take_frame(&mut inbox, 1500).is_err());
    }
}
