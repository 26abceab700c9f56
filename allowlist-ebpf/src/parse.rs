//! Packet parsing shared by the XDP (ingress) and TC (egress) programs.
//!
//! Two stages, so that the common case pays for little: [`network`] finds the IP
//! addresses (all an allow-all entry needs); [`transport`] goes on to the protocol and
//! ports only when a verdict depends on them.

use core::mem::size_of;

use allowlist_common::{Ipv6Octets, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

/// Bounds-checked access to a frame: XdpContext and TcContext.
pub trait Frame {
    fn start(&self) -> usize;
    fn end(&self) -> usize;

    #[inline(always)]
    fn ptr_at<T>(&self, offset: usize) -> Option<*const T> {
        let start = self.start();
        if start + offset + size_of::<T>() > self.end() {
            return None;
        }
        Some((start + offset) as *const T)
    }

    #[inline(always)]
    fn byte(&self, offset: usize) -> Option<u8> {
        // SAFETY: bounds-checked by ptr_at.
        self.ptr_at::<u8>(offset).map(|p| unsafe { *p })
    }

    #[inline(always)]
    fn be16(&self, offset: usize) -> Option<u16> {
        // SAFETY: bounds-checked; unaligned because headers sit at any offset.
        self.ptr_at::<[u8; 2]>(offset)
            .map(|p| u16::from_be_bytes(unsafe { p.read_unaligned() }))
    }

    #[inline(always)]
    fn octets<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // SAFETY: as above.
        self.ptr_at::<[u8; N]>(offset)
            .map(|p| unsafe { p.read_unaligned() })
    }

    fn len(&self) -> usize {
        self.end() - self.start()
    }

    /// Copies `N` bytes at a variable offset through the kernel's load-bytes helper.
    /// Direct access at offsets that depend on header lengths trips the verifier (LLVM
    /// rewrites `p + 1 > end` as `p >= end`, which proves no readable byte).
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;

    #[inline(always)]
    fn load_u8(&self, offset: usize) -> Option<u8> {
        self.load::<1>(offset).map(|[byte]| byte)
    }

    #[inline(always)]
    fn load_be16(&self, offset: usize) -> Option<u16> {
        self.load::<2>(offset).map(u16::from_be_bytes)
    }

    #[inline(always)]
    fn load_be32(&self, offset: usize) -> Option<u32> {
        self.load::<4>(offset).map(u32::from_be_bytes)
    }
}

const ETH_HEADER_LEN: usize = 14;
/// Where the transport header of an untagged IPv4 packet without options starts.
const PLAIN_V4_PAYLOAD: usize = ETH_HEADER_LEN + IPV4_HEADER_LEN;
/// Where the transport header of an untagged IPv6 packet without extension headers starts.
const PLAIN_V6_PAYLOAD: usize = ETH_HEADER_LEN + IPV6_HEADER_LEN;
/// Offset of the flags byte in a TCP header.
const TCP_FLAGS: usize = 13;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
/// The pre-802.1ad service tag some switches still use; looked through like 802.1ad.
const ETH_P_QINQ_LEGACY: u16 = 0x9100;
/// VLAN tags we look through: a customer tag, optionally inside a service tag (QinQ).
const MAX_VLAN_TAGS: usize = 2;
const VLAN_TAG_LEN: usize = 4;
const ETH_P_PPPOE_DISCOVERY: u16 = 0x8863;
const ETH_P_PPPOE_SESSION: u16 = 0x8864;
const ETH_P_MPLS_UNICAST: u16 = 0x8847;
const ETH_P_MPLS_MULTICAST: u16 = 0x8848;
/// PPPoE header (version/type, code, session id, length); the PPP protocol follows.
const PPPOE_HEADER_LEN: usize = 6;
const PPP_IPV4: u16 = 0x0021;
const PPP_IPV6: u16 = 0x0057;
const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;

const ICMPV6_ROUTER_SOLICITATION: u8 = 133;
const ICMPV6_REDIRECT: u8 = 137;
/// RFC 4861 requires hosts to discard neighbour discovery not sent with hop limit 255,
/// so only on-link ND is exempt; anything else with those types is judged normally.
const ND_HOP_LIMIT: u8 = 255;

/// IPv6 extension headers walked to find the transport header, at most this many.
const MAX_EXTENSION_HEADERS: usize = 4;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DESTINATION_OPTIONS: u8 = 60;

/// Where a frame's IP addresses could be found, if anywhere.
pub enum Network {
    /// No IP in it: ARP, LLDP, PPPoE discovery, PPP link control, ….
    NonIp,
    NeighbourDiscovery,
    Malformed,
    /// IP (or possibly IP) the parser cannot see into: behind a third VLAN tag, in a
    /// PPPoE session, under MPLS labels. Its source is unknown.
    Encapsulated,
    Ip(IpHeader),
}

/// The network layer of an IP packet. IPv4 addresses are kept as they are (for the
/// IPv4 trie) and IPv4-mapped (for flow keys).
#[derive(Clone, Copy)]
pub struct IpHeader {
    pub is_v6: bool,
    pub source: Ipv6Octets,
    pub destination: Ipv6Octets,
    /// The IPv4 header's protocol, or the IPv6 header's next header.
    pub next_header: u8,
    /// Offset of what follows the fixed IP header (IPv4 options included).
    pub payload: usize,
    /// IPv4 only: the fragment fields (`flags | offset`) and identification.
    pub v4_fragment: u16,
    pub v4_id: u16,
}

impl IpHeader {
    pub fn source_v4(&self) -> [u8; 4] {
        [
            self.source[12],
            self.source[13],
            self.source[14],
            self.source[15],
        ]
    }
}

/// Which part of a fragmented datagram a packet is (`Transport::fragment`).
/// Plain integers rather than an enum with data: every field is always initialised,
/// which the verifier insists on when LLVM spills registers.
pub const WHOLE: u8 = 0;
/// The first fragment carries the transport header; `fragment_id` names the train.
pub const FIRST_FRAGMENT: u8 = 1;
/// Later fragments carry no transport header.
pub const LATER_FRAGMENT: u8 = 2;

/// The transport layer, as far as verdicts need it.
#[derive(Clone, Copy)]
pub struct Transport {
    pub protocol: u8,
    /// WHOLE, FIRST_FRAGMENT or LATER_FRAGMENT.
    pub fragment: u8,
    pub fragment_id: u32,
    /// Whether the ports below are known: TCP/UDP with their header present, or ICMP
    /// echo (source 0, destination the identifier). Not for later fragments.
    pub has_ports: bool,
    pub source_port: u16,
    pub destination_port: u16,
    /// ICMP/ICMPv6 type, or 0.
    pub icmp_type: u8,
    /// TCP flags, or 0.
    pub tcp_flags: u8,
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
const IPV4_OFFSET_MASK: u16 = 0x1fff;

pub fn network<F: Frame>(frame: &F) -> Network {
    let Some(mut ether_type) = frame.be16(12) else {
        // Shorter than an Ethernet header: nothing IP about it.
        return Network::NonIp;
    };
    let mut offset = ETH_HEADER_LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !matches!(ether_type, ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ_LEGACY) {
            break;
        }
        // The tag's own ether type follows its 2-byte TCI.
        let Some(inner) = frame.be16(offset + 2) else {
            return Network::Malformed;
        };
        ether_type = inner;
        offset += VLAN_TAG_LEN;
    }
    match ether_type {
        ETH_P_IPV4 => ipv4(frame, offset),
        ETH_P_IPV6 => ipv6(frame, offset),
        _ => not_plain_ip(frame, ether_type, offset),
    }
}

/// Tells link-level frames, which carry no IP source and must pass for the link to work,
/// from IP the parser does not see into, which would otherwise pass unjudged. Only
/// frames that are not plain IP get here, so IP pays nothing for it.
fn not_plain_ip<F: Frame>(frame: &F, ether_type: u16, offset: usize) -> Network {
    match ether_type {
        // Still a tag after the tags looked through: whatever it carries is out of reach.
        ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ_LEGACY => Network::Encapsulated,
        // The PPP protocol says whether the session carries IP or link control (LCP,
        // IPCP, IPV6CP, authentication), which the session needs to come up. A session
        // frame too short to say is treated as IP.
        ETH_P_PPPOE_SESSION => match frame.be16(offset + PPPOE_HEADER_LEN) {
            Some(PPP_IPV4 | PPP_IPV6) | None => Network::Encapsulated,
            Some(_) => Network::NonIp,
        },
        // What is under the labels cannot be told without the label's binding: IP.
        ETH_P_MPLS_UNICAST | ETH_P_MPLS_MULTICAST => Network::Encapsulated,
        // Discovery sets up a PPPoE session and carries no IP.
        ETH_P_PPPOE_DISCOVERY => Network::NonIp,
        _ => Network::NonIp,
    }
}

fn ipv4<F: Frame>(frame: &F, offset: usize) -> Network {
    ipv4_header(frame, offset).map_or(Network::Malformed, Network::Ip)
}

// Sequential `?` reads, not a tuple of Options: LLVM turns the latter into selects of
// undefined values, which the verifier refuses.
fn ipv4_header<F: Frame>(frame: &F, offset: usize) -> Option<IpHeader> {
    let version_ihl = frame.byte(offset)?;
    let total_len = frame.be16(offset + 2)?;
    let id = frame.be16(offset + 4)?;
    let fragment = frame.be16(offset + 6)?;
    let protocol = frame.byte(offset + 9)?;
    let source = frame.octets::<4>(offset + 12)?;
    let destination = frame.octets::<4>(offset + 16)?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4
        || header_len < IPV4_HEADER_LEN
        || usize::from(total_len) < header_len
        || offset + header_len > frame.len()
    {
        return None;
    }
    Some(IpHeader {
        is_v6: false,
        source: v4_mapped(source),
        destination: v4_mapped(destination),
        next_header: protocol,
        payload: offset + header_len,
        v4_fragment: fragment,
        v4_id: id,
    })
}

fn ipv6<F: Frame>(frame: &F, offset: usize) -> Network {
    let Some(header) = ipv6_header(frame, offset) else {
        return Network::Malformed;
    };
    let Some(hop_limit) = frame.byte(offset + 7) else {
        return Network::Malformed;
    };
    if header.next_header == IPPROTO_ICMPV6 && hop_limit == ND_HOP_LIMIT {
        if let Some(icmp_type) = frame.byte(header.payload) {
            if (ICMPV6_ROUTER_SOLICITATION..=ICMPV6_REDIRECT).contains(&icmp_type) {
                return Network::NeighbourDiscovery;
            }
        }
    }
    Network::Ip(header)
}

fn ipv6_header<F: Frame>(frame: &F, offset: usize) -> Option<IpHeader> {
    let version = frame.byte(offset)?;
    let next_header = frame.byte(offset + 6)?;
    let source = frame.octets::<16>(offset + 8)?;
    let destination = frame.octets::<16>(offset + 24)?;
    if version >> 4 != 6 {
        return None;
    }
    Some(IpHeader {
        is_v6: true,
        source,
        destination,
        next_header,
        payload: offset + IPV6_HEADER_LEN,
        v4_fragment: 0,
        v4_id: 0,
    })
}

/// Finds the transport header: through IPv4 fragments, and through up to
/// [`MAX_EXTENSION_HEADERS`] IPv6 extension headers. Past that bound the packet has no
/// ports as far as the filter is concerned (so only allow-all entries admit it).
pub fn transport<F: Frame>(frame: &F, ip: &IpHeader) -> Transport {
    let mut protocol = ip.next_header;
    let mut offset = ip.payload;
    let mut fragment = WHOLE;
    let mut fragment_id = 0u32;
    if ip.is_v6 {
        let mut walked = 0;
        while walked < MAX_EXTENSION_HEADERS {
            if protocol == IPV6_FRAGMENT {
                let Some(next) = frame.load_u8(offset) else {
                    return no_ports(protocol, fragment, fragment_id);
                };
                let Some(offset_flags) = frame.load_be16(offset + 2) else {
                    return no_ports(protocol, fragment, fragment_id);
                };
                let Some(id) = frame.load_be32(offset + 4) else {
                    return no_ports(protocol, fragment, fragment_id);
                };
                protocol = next;
                offset += 8;
                fragment_id = id;
                fragment = if offset_flags >> 3 != 0 {
                    LATER_FRAGMENT
                } else if offset_flags & 1 != 0 {
                    FIRST_FRAGMENT
                } else {
                    WHOLE
                };
            } else if matches!(
                protocol,
                IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DESTINATION_OPTIONS
            ) {
                let Some(next) = frame.load_u8(offset) else {
                    return no_ports(protocol, fragment, fragment_id);
                };
                let Some(units) = frame.load_u8(offset + 1) else {
                    return no_ports(protocol, fragment, fragment_id);
                };
                protocol = next;
                offset += (usize::from(units) + 1) * 8;
            } else {
                break;
            }
            walked += 1;
        }
        if matches!(
            protocol,
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_DESTINATION_OPTIONS
        ) {
            return no_ports(protocol, fragment, fragment_id);
        }
    } else {
        fragment_id = u32::from(ip.v4_id);
        fragment = if ip.v4_fragment & IPV4_OFFSET_MASK != 0 {
            LATER_FRAGMENT
        } else if ip.v4_fragment & IPV4_MORE_FRAGMENTS != 0 {
            FIRST_FRAGMENT
        } else {
            WHOLE
        };
    }
    if fragment == LATER_FRAGMENT {
        return no_ports(protocol, fragment, fragment_id);
    }
    let mut transport = no_ports(protocol, fragment, fragment_id);
    match protocol {
        IPPROTO_TCP | IPPROTO_UDP => {
            // Untagged frames without IP options (nearly all) have the ports at a fixed
            // offset, read directly; the others, and headers past the linear part of the
            // frame (direct access covers no more), pay the load-bytes helper call.
            let ports = match offset {
                PLAIN_V4_PAYLOAD => frame.octets::<4>(PLAIN_V4_PAYLOAD),
                PLAIN_V6_PAYLOAD => frame.octets::<4>(PLAIN_V6_PAYLOAD),
                _ => None,
            }
            .or_else(|| frame.load::<4>(offset));
            if let Some(ports) = ports.map(u32::from_be_bytes) {
                transport.has_ports = true;
                transport.source_port = (ports >> 16) as u16;
                transport.destination_port = ports as u16;
            }
            if protocol == IPPROTO_TCP {
                let flags = match offset {
                    PLAIN_V4_PAYLOAD => frame.byte(PLAIN_V4_PAYLOAD + TCP_FLAGS),
                    PLAIN_V6_PAYLOAD => frame.byte(PLAIN_V6_PAYLOAD + TCP_FLAGS),
                    _ => None,
                }
                .or_else(|| frame.load_u8(offset + TCP_FLAGS));
                transport.tcp_flags = flags.unwrap_or(0);
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let icmp_type = frame.load_u8(offset).unwrap_or(0xff);
            transport.icmp_type = icmp_type;
            let is_echo = matches!(
                (protocol, icmp_type),
                (IPPROTO_ICMP, ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY)
                    | (IPPROTO_ICMPV6, ICMPV6_ECHO_REQUEST | ICMPV6_ECHO_REPLY)
            );
            if is_echo {
                if let Some(identifier) = frame.load_be16(offset + 4) {
                    transport.has_ports = true;
                    transport.destination_port = identifier;
                }
            }
        }
        _ => {}
    }
    transport
}

#[inline(always)]
fn no_ports(protocol: u8, fragment: u8, fragment_id: u32) -> Transport {
    Transport {
        protocol,
        fragment,
        fragment_id,
        has_ports: false,
        source_port: 0,
        destination_port: 0,
        icmp_type: 0,
        tcp_flags: 0,
    }
}

fn v4_mapped(v4: [u8; 4]) -> Ipv6Octets {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}
