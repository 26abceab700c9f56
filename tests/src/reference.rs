//! The packet path as README.md specifies it ("Packet path", "Fragments and extension
//! headers", "Port scopes", "Public ports", the counter reasons), written in plain Rust
//! from that text and not from the eBPF program, so that the packet fuzzer can hold the
//! real program to the documented behaviour. Where the two disagree, one of them is
//! wrong: the program, or the README.
//!
//! The reference judges the bytes of a frame, as the program does, under a policy of
//! entries (each allowing all ports or some), public ports, a mode and features, and the
//! flows the host opened (which the fuzzer writes into the program's flow table too). It
//! remembers, as the program does, which fragment trains a first fragment opened.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use allowlist_common::Reason;
use allowlist_userspace::{config::Mode, ports::PortSpec};
use ipnet::IpNet;

const TCP: u8 = 6;
const UDP: u8 = 17;

/// What the filter is told: the list, the ports open to all, the mode and features.
#[derive(Clone, Debug)]
pub struct Policy {
    /// A network and the ports it may reach (`None`: all).
    pub entries: Vec<(IpNet, Option<Vec<PortSpec>>)>,
    pub public_ports: Vec<PortSpec>,
    pub mode: Mode,
    /// `dhcp_client = true`: DHCP replies to the host's client pass.
    pub dhcp_client: bool,
    /// `encapsulated_ip = "pass"`.
    pub pass_encapsulated: bool,
    /// `return_traffic = true`: replies to the flows below pass.
    pub return_traffic: bool,
    /// Flows the host opened, recently.
    pub flows: Vec<Flow>,
}

/// A flow the host opened, as its replies see it: they come from `remote` (port
/// `remote_port`) to `local` (port `local_port`). For ICMP echo, `local_port` is the
/// echo identifier and `remote_port` is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub protocol: u8,
    pub remote: IpAddr,
    pub remote_port: u16,
    pub local: IpAddr,
    pub local_port: u16,
}

/// A datagram's fragments, as the README names them: same source, destination, id and
/// protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Train {
    source: IpAddr,
    destination: IpAddr,
    id: u32,
    protocol: u8,
}

/// The reference judge, with the fragment trains it has seen admitted.
pub struct Judge {
    policy: Policy,
    admitted_trains: HashSet<Train>,
}

/// Which part of a datagram a packet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fragment {
    Whole,
    First,
    Later,
}

/// The network layer the README's parse yields.
enum Network {
    NonIp,
    Encapsulated,
    Malformed,
    NeighbourDiscovery,
    Ip {
        source: IpAddr,
        destination: IpAddr,
        /// IPv4 protocol or IPv6 next header.
        protocol: u8,
        /// Where the IPv4 options end / the IPv6 fixed header ends.
        payload: usize,
        v4_fragment: Option<(u16, u16)>,
    },
}

/// The transport header as far as verdicts need it.
struct Transport {
    protocol: u8,
    fragment: Fragment,
    fragment_id: u32,
    /// (source port, destination port) of TCP or UDP, when the header is there.
    ports: Option<(u16, u16)>,
    /// The identifier of an ICMP or ICMPv6 echo reply, when it is there.
    echo_reply_id: Option<u16>,
}

impl Judge {
    pub fn new(policy: Policy) -> Judge {
        Judge {
            policy,
            admitted_trains: HashSet::new(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The reason the README says this frame is counted under (which decides the
    /// verdict: [`Reason::drops`]).
    pub fn judge(&mut self, frame: &[u8]) -> Reason {
        let mode = self.policy.mode;
        if mode == Mode::Off {
            return Reason::PassedOff;
        }
        let by_mode = |enforced: Reason, monitored: Reason| match mode {
            Mode::Enforce => enforced,
            _ => monitored,
        };
        let (source, destination, protocol, payload, v4_fragment) = match network(frame) {
            Network::NonIp => return Reason::PassedNonIp,
            Network::NeighbourDiscovery => return Reason::PassedExempt,
            Network::Malformed => {
                return by_mode(Reason::DroppedMalformed, Reason::MonitorMalformed)
            }
            Network::Encapsulated if self.policy.pass_encapsulated => {
                return Reason::PassedEncapsulated
            }
            Network::Encapsulated => {
                return by_mode(Reason::DroppedEncapsulated, Reason::MonitorEncapsulated)
            }
            Network::Ip {
                source,
                destination,
                protocol,
                payload,
                v4_fragment,
            } => (source, destination, protocol, payload, v4_fragment),
        };

        // "Overlapping entries combine — a source may use a port if any entry covering
        // it allows that port."
        let covering: Vec<&Option<Vec<PortSpec>>> = self
            .policy
            .entries
            .iter()
            .filter(|(network, _)| network.contains(&source))
            .map(|(_, ports)| ports)
            .collect();
        if covering.iter().any(|ports| ports.is_none()) {
            return Reason::PassedListed;
        }
        let listed = !covering.is_empty();

        let transport = transport(frame, source.is_ipv6(), protocol, payload, v4_fragment);
        if let Some(reason) = self.admit_by_ports(&covering, &transport, source, destination) {
            if transport.fragment == Fragment::First {
                self.admitted_trains.insert(Train {
                    source,
                    destination,
                    id: transport.fragment_id,
                    protocol: transport.protocol,
                });
            }
            return reason;
        }
        let train = Train {
            source,
            destination,
            id: transport.fragment_id,
            protocol: transport.protocol,
        };
        if transport.fragment == Fragment::Later && self.admitted_trains.contains(&train) {
            return Reason::PassedFragment;
        }
        if listed {
            by_mode(Reason::DroppedPortNotAllowed, Reason::MonitorPortNotAllowed)
        } else {
            by_mode(Reason::DroppedNotListed, Reason::MonitorNotListed)
        }
    }

    /// A port its entries allow, a reply to a flow the host opened, a DHCP reply to the
    /// host's client, a public port: in that order.
    fn admit_by_ports(
        &self,
        covering: &[&Option<Vec<PortSpec>>],
        transport: &Transport,
        source: IpAddr,
        destination: IpAddr,
    ) -> Option<Reason> {
        let protocol = transport.protocol;
        // "a reply is admitted only if its exact (remote address, remote port, local
        // address, local port, protocol) matches a flow the host opened recently".
        let reply_to = |remote_port: u16, local_port: u16| Flow {
            protocol,
            remote: source,
            remote_port,
            local: destination,
            local_port,
        };
        if let Some(identifier) = transport.echo_reply_id {
            return (self.policy.return_traffic
                && self.policy.flows.contains(&reply_to(0, identifier)))
            .then_some(Reason::PassedReturnTraffic);
        }
        let (source_port, destination_port) = transport.ports?;
        let allowed = covering
            .iter()
            .filter_map(|ports| ports.as_ref())
            .flatten()
            .any(|range| range.contains(protocol, destination_port));
        if allowed {
            return Some(Reason::PassedListed);
        }
        if self.policy.return_traffic
            && self
                .policy
                .flows
                .contains(&reply_to(source_port, destination_port))
        {
            return Some(Reason::PassedReturnTraffic);
        }
        if self.policy.dhcp_client
            && protocol == UDP
            && matches!((source_port, destination_port), (67, 68) | (547, 546))
        {
            return Some(Reason::PassedExempt);
        }
        if self
            .policy
            .public_ports
            .iter()
            .any(|range| range.contains(protocol, destination_port))
        {
            return Some(Reason::PassedPublicPort);
        }
        None
    }
}

fn be16(frame: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?))
}

fn be32(frame: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?))
}

/// "parse Ethernet, ≤ 2 VLAN tags (802.1Q / 802.1ad / 0x9100)", then IP, or IP it
/// cannot see into, or not IP.
fn network(frame: &[u8]) -> Network {
    const TAGS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
    // Shorter than an Ethernet header: nothing IP about it.
    let Some(mut ether_type) = be16(frame, 12) else {
        return Network::NonIp;
    };
    let mut offset = 14;
    for _ in 0..2 {
        if !TAGS.contains(&ether_type) {
            break;
        }
        // A tag cut off before its ether type: a frame that claims more than it has.
        let Some(inner) = be16(frame, offset + 2) else {
            return Network::Malformed;
        };
        ether_type = inner;
        offset += 4;
    }
    match ether_type {
        0x0800 => ipv4(frame, offset),
        0x86dd => ipv6(frame, offset),
        // A third tag.
        tag if TAGS.contains(&tag) => Network::Encapsulated,
        // PPPoE session: IPv4 or IPv6 inside (or too short to say) is IP the filter
        // cannot see into; PPP link control is not IP.
        0x8864 => match be16(frame, offset + 6) {
            None | Some(0x0021 | 0x0057) => Network::Encapsulated,
            Some(_) => Network::NonIp,
        },
        // MPLS, unicast and multicast.
        0x8847 | 0x8848 => Network::Encapsulated,
        _ => Network::NonIp,
    }
}

/// An IPv4 header is malformed when it is cut short (20 bytes), is not version 4, has an
/// IHL under 5, claims more header than the frame holds, or a total length shorter than
/// its header. A total length beyond the frame is not checked.
fn ipv4(frame: &[u8], offset: usize) -> Network {
    let Some(header) = frame.get(offset..offset + 20) else {
        return Network::Malformed;
    };
    let header_len = usize::from(header[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if header[0] >> 4 != 4
        || header_len < 20
        || total_len < header_len
        || offset + header_len > frame.len()
    {
        return Network::Malformed;
    }
    let address = |at: usize| {
        IpAddr::V4(Ipv4Addr::new(
            header[at],
            header[at + 1],
            header[at + 2],
            header[at + 3],
        ))
    };
    Network::Ip {
        source: address(12),
        destination: address(16),
        protocol: header[9],
        payload: offset + header_len,
        v4_fragment: Some((
            u16::from_be_bytes([header[6], header[7]]),
            u16::from_be_bytes([header[4], header[5]]),
        )),
    }
}

/// An IPv6 header is malformed when it is cut short (40 bytes) or is not version 6.
/// Neighbour discovery: ICMPv6 directly after the header, hop limit 255, type 133–137.
fn ipv6(frame: &[u8], offset: usize) -> Network {
    let Some(header) = frame.get(offset..offset + 40) else {
        return Network::Malformed;
    };
    if header[0] >> 4 != 6 {
        return Network::Malformed;
    }
    let next_header = header[6];
    let hop_limit = header[7];
    if next_header == 58 && hop_limit == 255 {
        if let Some(icmp_type) = frame.get(offset + 40) {
            if (133..=137).contains(icmp_type) {
                return Network::NeighbourDiscovery;
            }
        }
    }
    let address = |at: usize| {
        let octets: [u8; 16] = header[at..at + 16].try_into().unwrap_or([0; 16]);
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    Network::Ip {
        source: address(8),
        destination: address(24),
        protocol: next_header,
        payload: offset + 40,
        v4_fragment: None,
    }
}

/// "transport header (through IPv4 options and fragments, ≤ 4 IPv6 extension headers)".
/// Later fragments carry no ports; so does a TCP or UDP header cut short, and a packet
/// whose extension headers go deeper than 4 or are cut short.
fn transport(
    frame: &[u8],
    is_v6: bool,
    protocol: u8,
    payload: usize,
    v4_fragment: Option<(u16, u16)>,
) -> Transport {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const DESTINATION_OPTIONS: u8 = 60;
    let mut transport = Transport {
        protocol,
        fragment: Fragment::Whole,
        fragment_id: 0,
        ports: None,
        echo_reply_id: None,
    };
    let mut offset = payload;
    if is_v6 {
        for _ in 0..4 {
            match transport.protocol {
                FRAGMENT => {
                    let (Some(&next), Some(offset_flags), Some(id)) = (
                        frame.get(offset),
                        be16(frame, offset + 2),
                        be32(frame, offset + 4),
                    ) else {
                        return transport;
                    };
                    transport.protocol = next;
                    transport.fragment_id = id;
                    transport.fragment = if offset_flags >> 3 != 0 {
                        Fragment::Later
                    } else if offset_flags & 1 != 0 {
                        Fragment::First
                    } else {
                        Fragment::Whole
                    };
                    offset += 8;
                }
                HOP_BY_HOP | ROUTING | DESTINATION_OPTIONS => {
                    let (Some(&next), Some(&units)) = (frame.get(offset), frame.get(offset + 1))
                    else {
                        return transport;
                    };
                    transport.protocol = next;
                    offset += (usize::from(units) + 1) * 8;
                }
                _ => break,
            }
        }
        if matches!(
            transport.protocol,
            HOP_BY_HOP | ROUTING | FRAGMENT | DESTINATION_OPTIONS
        ) {
            return transport;
        }
    } else if let Some((flags_offset, id)) = v4_fragment {
        transport.fragment_id = u32::from(id);
        transport.fragment = if flags_offset & 0x1fff != 0 {
            Fragment::Later
        } else if flags_offset & 0x2000 != 0 {
            Fragment::First
        } else {
            Fragment::Whole
        };
    }
    if transport.fragment == Fragment::Later {
        return transport;
    }
    match (transport.protocol, frame.get(offset)) {
        (TCP | UDP, _) => transport.ports = be16(frame, offset).zip(be16(frame, offset + 2)),
        // Echo replies (ICMP type 0, ICMPv6 type 129) carry their identifier at 4.
        (1, Some(0)) | (58, Some(129)) => transport.echo_reply_id = be16(frame, offset + 4),
        _ => {}
    }
    transport
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{self, Ipv4Header};

    fn policy(mode: Mode) -> Policy {
        Policy {
            entries: vec![
                ("192.0.2.0/24".parse().unwrap(), None),
                (
                    "198.51.100.7/32".parse().unwrap(),
                    Some(allowlist_userspace::ports::parse_list("22/tcp").unwrap()),
                ),
            ],
            public_ports: allowlist_userspace::ports::parse_list("443/tcp").unwrap(),
            mode,
            dhcp_client: true,
            pass_encapsulated: false,
            return_traffic: true,
            flows: Vec::new(),
        }
    }

    fn udp4(source: [u8; 4], destination_port: u16) -> Vec<u8> {
        let packet = Ipv4Header::new(source.into(), Ipv4Addr::new(10, 0, 0, 1), UDP)
            .id(1)
            .packet(&frames::udp(1234, destination_port, &[]));
        frames::ethernet([0; 6], [0; 6], &[], frames::ETH_P_IPV4, &packet)
    }

    #[test]
    fn the_reference_reads_the_readme_as_written() {
        let mut judge = Judge::new(policy(Mode::Enforce));
        assert_eq!(judge.judge(&udp4([192, 0, 2, 9], 9)), Reason::PassedListed);
        assert_eq!(
            judge.judge(&udp4([198, 51, 100, 7], 9)),
            Reason::DroppedPortNotAllowed
        );
        assert_eq!(
            judge.judge(&udp4([203, 0, 113, 1], 9)),
            Reason::DroppedNotListed
        );
        assert_eq!(
            judge.judge(&udp4([203, 0, 113, 1], 68)),
            Reason::DroppedNotListed
        );
        assert_eq!(judge.judge(&[0; 10]), Reason::PassedNonIp);
        let mut truncated = udp4([203, 0, 113, 1], 9);
        truncated.truncate(30);
        assert_eq!(judge.judge(&truncated), Reason::DroppedMalformed);
        let mut monitor = Judge::new(policy(Mode::Monitor));
        assert_eq!(
            monitor.judge(&udp4([203, 0, 113, 1], 9)),
            Reason::MonitorNotListed
        );
    }
}
