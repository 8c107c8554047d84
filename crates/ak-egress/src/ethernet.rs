//! The link layer for sandboxes whose network stack speaks Ethernet (gVisor's, over the
//! TAP device it finds in its namespace; a TUN device carries bare IP packets, which its
//! network stack cannot use). The helper then answers ARP for every address of the
//! sandbox's subnet but the sandbox's own (the gateway and the resolver are both ours),
//! takes the IPv4 payload of the frames the sandbox sends, and frames what the stack
//! sends back. Everything else (IPv6, other protocols) is dropped.

use std::net::Ipv4Addr;

/// The helper's own address on the link: locally administered, the one slirp4netns
/// uses for its gateway.
pub const OWN_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
pub const HEADER: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
const BROADCAST: [u8; 6] = [0xff; 6];

/// What a frame from the sandbox is.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// An IPv4 packet, from this offset of the frame on.
    Ipv4(usize),
    /// An ARP request for one of ours: the reply frame to send back.
    Reply(Vec<u8>),
    Drop,
}

/// The sandbox's end of the link, as learnt from its frames.
#[derive(Debug, Default)]
pub struct Link {
    peer: Option<[u8; 6]>,
}

impl Link {
    /// Classifies one frame the sandbox sent.
    pub fn inbound(&mut self, frame: &[u8]) -> Inbound {
        if frame.len() < HEADER {
            return Inbound::Drop;
        }
        let source: [u8; 6] = frame[6..12].try_into().unwrap_or(BROADCAST);
        match [frame[12], frame[13]] {
            ETHERTYPE_IPV4 => {
                self.peer = Some(source);
                Inbound::Ipv4(HEADER)
            }
            ETHERTYPE_ARP => arp_reply(&frame[HEADER..], source).map_or(Inbound::Drop, |reply| {
                self.peer = Some(source);
                Inbound::Reply(reply)
            }),
            _ => Inbound::Drop,
        }
    }

    /// `packet` (IPv4) framed for the sandbox, into `frame`.
    pub fn frame(&self, packet: &[u8], frame: &mut Vec<u8>) {
        frame.clear();
        frame.extend_from_slice(&self.peer.unwrap_or(BROADCAST));
        frame.extend_from_slice(&OWN_MAC);
        frame.extend_from_slice(&ETHERTYPE_IPV4);
        frame.extend_from_slice(packet);
    }
}

/// The reply to an ARP request (Ethernet, IPv4) from `sender_mac` for an address of the
/// sandbox's subnet other than its own; `None` for anything else.
fn arp_reply(arp: &[u8], sender_mac: [u8; 6]) -> Option<Vec<u8>> {
    // htype 1, ptype IPv4, hlen 6, plen 4, op 1 (request).
    if arp.len() < 28 || arp[..8] != [0, 1, 8, 0, 6, 4, 0, 1] {
        return None;
    }
    let sender_ip: [u8; 4] = arp[14..18].try_into().ok()?;
    let target_ip: [u8; 4] = arp[24..28].try_into().ok()?;
    let target = Ipv4Addr::from(target_ip);
    let subnet = |a: Ipv4Addr| a.octets()[..3] == crate::SANDBOX_ADDRESS.octets()[..3];
    if !subnet(target) || target == crate::SANDBOX_ADDRESS {
        return None;
    }
    let mut reply = Vec::with_capacity(HEADER + 28);
    reply.extend_from_slice(&sender_mac);
    reply.extend_from_slice(&OWN_MAC);
    reply.extend_from_slice(&ETHERTYPE_ARP);
    reply.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    reply.extend_from_slice(&OWN_MAC);
    reply.extend_from_slice(&target_ip);
    reply.extend_from_slice(&sender_mac);
    reply.extend_from_slice(&sender_ip);
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SANDBOX_MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];

    fn arp_request(target: [u8; 4]) -> Vec<u8> {
        let mut frame = BROADCAST.to_vec();
        frame.extend_from_slice(&SANDBOX_MAC);
        frame.extend_from_slice(&ETHERTYPE_ARP);
        frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        frame.extend_from_slice(&SANDBOX_MAC);
        frame.extend_from_slice(&crate::SANDBOX_ADDRESS.octets());
        frame.extend_from_slice(&[0; 6]);
        frame.extend_from_slice(&target);
        frame
    }

    #[test]
    fn arp_is_answered_for_the_gateway_and_the_resolver_only() {
        let mut link = Link::default();
        for ours in [crate::GATEWAY, crate::RESOLVER] {
            let Inbound::Reply(reply) = link.inbound(&arp_request(ours.octets())) else {
                panic!("no reply for {ours}");
            };
            assert_eq!(reply[..6], SANDBOX_MAC);
            assert_eq!(reply[20..22], [0, 2], "an ARP reply");
            assert_eq!(reply[22..28], OWN_MAC, "our address for it");
            assert_eq!(reply[28..32], ours.octets());
            assert_eq!(reply[38..42], crate::SANDBOX_ADDRESS.octets());
        }
        for other in [crate::SANDBOX_ADDRESS.octets(), [192, 168, 1, 1]] {
            assert_eq!(link.inbound(&arp_request(other)), Inbound::Drop);
        }
        assert_eq!(link.inbound(&[0u8; 10]), Inbound::Drop);
    }

    #[test]
    fn ipv4_is_unwrapped_and_framed_back_to_its_sender() {
        let mut link = Link::default();
        let mut frame = OWN_MAC.to_vec();
        frame.extend_from_slice(&SANDBOX_MAC);
        frame.extend_from_slice(&ETHERTYPE_IPV4);
        frame.extend_from_slice(b"packet");
        assert_eq!(link.inbound(&frame), Inbound::Ipv4(HEADER));
        let mut out = Vec::new();
        link.frame(b"answer", &mut out);
        assert_eq!(out[..6], SANDBOX_MAC);
        assert_eq!(out[6..12], OWN_MAC);
        assert_eq!(&out[HEADER..], b"answer");
        // IPv6 (and anything else) is dropped.
        frame[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(link.inbound(&frame), Inbound::Drop);
    }
}
