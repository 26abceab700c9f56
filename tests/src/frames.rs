//! Frame bytes, built by hand: Ethernet with VLAN tags, PPPoE and MPLS, ARP, IPv4 and
//! IPv6 headers, UDP, TCP and ICMP. Every test, fuzzer and benchmark that writes frames
//! builds them here, so a header is laid out in one place.
//!
//! The builders write what they are given and nothing else: lengths that callers want to
//! lie about are patched afterwards, and checksums are left zero unless asked for, since
//! the XDP program never reads them. (A frame the host's stack is to deliver needs them:
//! see [`Ipv4Header::with_checksum`] and [`ipv6_udp_checksum`].)

use std::net::{Ipv4Addr, Ipv6Addr};

pub type Mac = [u8; 6];

// The numbers below are written from the standards, not taken from allowlist-common or
// the eBPF program: frames must not share a mistake with the program they test.

/// Locally administered addresses for frames that never meet a real neighbour (those
/// handed to `BPF_PROG_TEST_RUN`): the receiver and the sender.
pub const TEST_DST_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
pub const TEST_SRC_MAC: Mac = [0x02, 0, 0, 0, 0, 0x02];
pub const BROADCAST_MAC: Mac = [0xff; 6];

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// The service tag switches used before 802.1ad.
pub const ETH_P_QINQ_LEGACY: u16 = 0x9100;
pub const ETH_P_LLDP: u16 = 0x88cc;
pub const ETH_P_PPPOE_DISCOVERY: u16 = 0x8863;
pub const ETH_P_PPPOE_SESSION: u16 = 0x8864;
pub const ETH_P_MPLS_UNICAST: u16 = 0x8847;
pub const ETH_P_MPLS_MULTICAST: u16 = 0x8848;

/// PPP protocol numbers (RFC 1661 and the protocols' own RFCs).
pub const PPP_IPV4: u16 = 0x0021;
pub const PPP_IPV6: u16 = 0x0057;
pub const PPP_LCP: u16 = 0xc021;
pub const PPP_PAP: u16 = 0xc023;
pub const PPP_CHAP: u16 = 0xc223;
pub const PPP_IPCP: u16 = 0x8021;
pub const PPP_IPV6CP: u16 = 0x8057;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_NONE: u8 = 59;
/// IPv6 extension headers.
pub const IPPROTO_HOP_BY_HOP: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_DESTINATION_OPTIONS: u8 = 60;

pub const ETHERNET_HEADER_LEN: usize = 14;
pub const VLAN_TAG_LEN: usize = 4;
/// The PPPoE session header, without the PPP protocol field that follows it.
pub const PPPOE_HEADER_LEN: usize = 6;
pub const PPP_PROTOCOL_LEN: usize = 2;
pub const MPLS_LABEL_LEN: usize = 4;
/// Without options.
pub const IPV4_HEADER_LEN: usize = 20;
pub const IPV6_HEADER_LEN: usize = 40;
pub const UDP_HEADER_LEN: usize = 8;

/// IPv4's flags and fragment offset: don't fragment, more fragments.
pub const IPV4_DONT_FRAGMENT: u16 = 0x4000;
pub const IPV4_MORE_FRAGMENTS: u16 = 0x2000;

/// One VLAN tag: its TPID (0x8100, 0x88a8 or 0x9100) and VLAN id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VlanTag {
    pub tpid: u16,
    pub vid: u16,
}

impl VlanTag {
    pub fn dot1q(vid: u16) -> Self {
        Self {
            tpid: ETH_P_8021Q,
            vid,
        }
    }

    pub fn dot1ad(vid: u16) -> Self {
        Self {
            tpid: ETH_P_8021AD,
            vid,
        }
    }

    /// A tag with the legacy QinQ TPID 0x9100.
    pub fn legacy_qinq(vid: u16) -> Self {
        Self {
            tpid: ETH_P_QINQ_LEGACY,
            vid,
        }
    }
}

/// An Ethernet frame: addresses, `tags` (outermost first; priority and DEI bits zero),
/// `ether_type`, then `payload` as it is (no padding to the 60-byte minimum, no FCS:
/// veths and `BPF_PROG_TEST_RUN` take frames as they are).
pub fn ethernet(dst: Mac, src: Mac, tags: &[VlanTag], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame =
        Vec::with_capacity(ETHERNET_HEADER_LEN + VLAN_TAG_LEN * tags.len() + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    for tag in tags {
        frame.extend_from_slice(&tag.tpid.to_be_bytes());
        frame.extend_from_slice(&(tag.vid & 0x0fff).to_be_bytes());
    }
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A PPPoE session packet (what follows ether type 0x8864, RFC 2516): version 1, type 1,
/// code 0 (session data), `session_id`, the length of the PPP frame, then the PPP frame:
/// `ppp_protocol` and `payload`.
pub fn pppoe_session(session_id: u16, ppp_protocol: u16, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x11, 0x00];
    packet.extend_from_slice(&session_id.to_be_bytes());
    packet.extend_from_slice(&((PPP_PROTOCOL_LEN + payload.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&ppp_protocol.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// One MPLS label stack entry (what follows ether type 0x8847/0x8848): `label`, traffic
/// class 0, bottom of stack, TTL 64; then `payload`.
pub fn mpls(label: u32, payload: &[u8]) -> Vec<u8> {
    let entry = (label & 0xf_ffff) << 12 | 1 << 8 | 64;
    let mut packet = entry.to_be_bytes().to_vec();
    packet.extend_from_slice(payload);
    packet
}

/// An ARP request for IPv4 over Ethernet (what follows ether type 0x0806): who has
/// `target`, tell `sender` at `sender_mac`.
pub fn arp_request(sender_mac: Mac, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    // Ethernet, IPv4, 6-byte and 4-byte addresses, request.
    let mut packet = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    packet.extend_from_slice(&sender_mac);
    packet.extend_from_slice(&sender.octets());
    packet.extend_from_slice(&[0; 6]);
    packet.extend_from_slice(&target.octets());
    packet
}

/// An IPv4 header, to put in front of a payload with [`Ipv4Header::packet`]. Type of
/// service 0, TTL 64.
#[derive(Clone, Debug)]
pub struct Ipv4Header {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub id: u16,
    /// Flags and fragment offset ([`IPV4_DONT_FRAGMENT`], [`IPV4_MORE_FRAGMENTS`], the
    /// offset in 8-byte units in the low 13 bits).
    pub fragment: u16,
    /// Whole 32-bit words; the IHL counts them.
    pub options: Vec<u8>,
    pub checksum: bool,
}

impl Ipv4Header {
    /// Identification 0, no flags, no options, checksum left zero.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8) -> Self {
        Self {
            src,
            dst,
            protocol,
            id: 0,
            fragment: 0,
            options: Vec::new(),
            checksum: false,
        }
    }

    pub fn id(mut self, id: u16) -> Self {
        self.id = id;
        self
    }

    pub fn fragment(mut self, fragment: u16) -> Self {
        self.fragment = fragment;
        self
    }

    pub fn dont_fragment(self) -> Self {
        self.fragment(IPV4_DONT_FRAGMENT)
    }

    pub fn options(mut self, options: &[u8]) -> Self {
        assert!(
            options.len().is_multiple_of(4) && options.len() <= 40,
            "IPv4 options are whole words, at most 10"
        );
        self.options = options.to_vec();
        self
    }

    /// Fills in the header checksum, as the host's stack wants it.
    pub fn with_checksum(mut self) -> Self {
        self.checksum = true;
        self
    }

    /// The header and `payload`, the total length counting both.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let header_len = IPV4_HEADER_LEN + self.options.len();
        let total_len = (header_len + payload.len()) as u16;
        let mut packet = Vec::with_capacity(header_len + payload.len());
        packet.extend_from_slice(&[0x40 | (header_len / 4) as u8, 0]);
        packet.extend_from_slice(&total_len.to_be_bytes());
        packet.extend_from_slice(&self.id.to_be_bytes());
        packet.extend_from_slice(&self.fragment.to_be_bytes());
        packet.extend_from_slice(&[64, self.protocol, 0, 0]);
        packet.extend_from_slice(&self.src.octets());
        packet.extend_from_slice(&self.dst.octets());
        packet.extend_from_slice(&self.options);
        if self.checksum {
            let checksum = internet_checksum(&packet);
            packet[10..12].copy_from_slice(&checksum.to_be_bytes());
        }
        packet.extend_from_slice(payload);
        packet
    }
}

/// An IPv6 header, to put in front of a payload (extension headers included) with
/// [`Ipv6Header::packet`]. Traffic class and flow label 0.
#[derive(Clone, Debug)]
pub struct Ipv6Header {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub next_header: u8,
    pub hop_limit: u8,
}

impl Ipv6Header {
    /// Hop limit 64.
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8) -> Self {
        Self {
            src,
            dst,
            next_header,
            hop_limit: 64,
        }
    }

    pub fn hop_limit(mut self, hop_limit: u8) -> Self {
        self.hop_limit = hop_limit;
        self
    }

    /// The header and `payload`, the payload length counting `payload`.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let mut packet = Vec::with_capacity(IPV6_HEADER_LEN + payload.len());
        packet.extend_from_slice(&[0x60, 0, 0, 0]);
        packet.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        packet.extend_from_slice(&[self.next_header, self.hop_limit]);
        packet.extend_from_slice(&self.src.octets());
        packet.extend_from_slice(&self.dst.octets());
        packet.extend_from_slice(payload);
        packet
    }
}

/// An IPv6 fragment header: `next_header`, the offset (8-byte units) and flags as they
/// are on the wire (offset << 3 | more fragments), and the identification.
pub fn ipv6_fragment_header(next_header: u8, offset_flags: u16, id: u32) -> Vec<u8> {
    let mut header = vec![next_header, 0];
    header.extend_from_slice(&offset_flags.to_be_bytes());
    header.extend_from_slice(&id.to_be_bytes());
    header
}

/// A UDP datagram with its length filled in and the checksum left zero (legal on IPv4;
/// IPv6 needs [`ipv6_udp_checksum`] for the host to accept it).
pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut datagram = Vec::with_capacity(UDP_HEADER_LEN + payload.len());
    datagram.extend_from_slice(&src_port.to_be_bytes());
    datagram.extend_from_slice(&dst_port.to_be_bytes());
    datagram.extend_from_slice(&((UDP_HEADER_LEN + payload.len()) as u16).to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    datagram
}

/// The checksum of a UDP `datagram` (its checksum field zero) from `src` to `dst` over
/// IPv6: over the pseudo header (RFC 8200 §8.1) and the datagram, 0 sent as 0xffff.
pub fn ipv6_udp_checksum(src: Ipv6Addr, dst: Ipv6Addr, datagram: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + datagram.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(datagram.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_UDP]);
    pseudo.extend_from_slice(datagram);
    match internet_checksum(&pseudo) {
        0 => 0xffff,
        checksum => checksum,
    }
}

/// A TCP header opening a connection: sequence number 1, SYN, window 65535, no options,
/// checksum zero.
pub fn tcp_syn(src_port: u16, dst_port: u16) -> Vec<u8> {
    let mut segment = Vec::with_capacity(20);
    segment.extend_from_slice(&src_port.to_be_bytes());
    segment.extend_from_slice(&dst_port.to_be_bytes());
    // Sequence, acknowledgement, data offset 5 words, flags SYN, window, checksum, urgent.
    segment.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff]);
    segment.extend_from_slice(&[0, 0, 0, 0]);
    segment
}

/// An ICMP or ICMPv6 message: type, code, checksum zero, the four bytes of the header
/// that depend on the type, then `body`.
pub fn icmp(icmp_type: u8, code: u8, rest_of_header: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut message = vec![icmp_type, code, 0, 0];
    message.extend_from_slice(&rest_of_header);
    message.extend_from_slice(body);
    message
}

/// An ICMP or ICMPv6 echo request or reply (`icmp_type` says which), without data.
pub fn icmp_echo(icmp_type: u8, id: u16, sequence: u16) -> Vec<u8> {
    let [id_high, id_low] = id.to_be_bytes();
    let [sequence_high, sequence_low] = sequence.to_be_bytes();
    icmp(
        icmp_type,
        0,
        [id_high, id_low, sequence_high, sequence_low],
        &[],
    )
}

/// The Internet checksum (RFC 1071) of `bytes`: a header with its checksum field zero
/// gets the value to put there, and a header with a valid checksum sums to zero.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checksummed_ipv4_header_sums_to_zero() {
        let packet = Ipv4Header::new(
            Ipv4Addr::new(10, 10, 1, 2),
            Ipv4Addr::new(10, 10, 1, 1),
            IPPROTO_UDP,
        )
        .id(7)
        .dont_fragment()
        .with_checksum()
        .packet(&udp(40000, 7001, &[0xa5; 8]));
        assert_eq!(packet.len(), IPV4_HEADER_LEN + UDP_HEADER_LEN + 8);
        assert_ne!(&packet[10..12], &[0, 0]);
        assert_eq!(internet_checksum(&packet[..IPV4_HEADER_LEN]), 0);
    }

    #[test]
    fn ipv4_options_count_in_the_ihl_and_the_total_length() {
        let packet = Ipv4Header::new(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, IPPROTO_UDP)
            .options(&[1; 8])
            .packet(&[0; 3]);
        assert_eq!(packet[0], 0x47);
        assert_eq!(&packet[2..4], &31u16.to_be_bytes());
        assert_eq!(&packet[10..12], &[0, 0], "no checksum unless asked for");
    }

    #[test]
    fn tags_sit_between_the_addresses_and_the_ether_type() {
        let frame = ethernet(
            TEST_DST_MAC,
            TEST_SRC_MAC,
            &[VlanTag::dot1ad(200), VlanTag::dot1q(100)],
            ETH_P_IPV4,
            &[0xee],
        );
        assert_eq!(&frame[..6], &TEST_DST_MAC);
        assert_eq!(&frame[6..12], &TEST_SRC_MAC);
        assert_eq!(
            &frame[12..22],
            &[0x88, 0xa8, 0, 200, 0x81, 0x00, 0, 100, 0x08, 0x00]
        );
        assert_eq!(frame.len(), ETHERNET_HEADER_LEN + 2 * VLAN_TAG_LEN + 1);
    }

    #[test]
    fn an_ipv6_udp_checksum_verifies() {
        let (src, dst) = ("fd10:2::2".parse().unwrap(), "fd10:2::1".parse().unwrap());
        let mut datagram = udp(40000, 9401, b"payload");
        let checksum = ipv6_udp_checksum(src, dst, &datagram);
        datagram[6..8].copy_from_slice(&checksum.to_be_bytes());
        // Summed with its checksum in place, the pseudo header and datagram give zero.
        let mut pseudo = src.octets().to_vec();
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&(datagram.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_UDP]);
        pseudo.extend_from_slice(&datagram);
        assert_eq!(internet_checksum(&pseudo), 0);
    }
}
