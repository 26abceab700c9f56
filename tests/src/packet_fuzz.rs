//! The packet fuzzer: random policies and random, mutated frames for the real XDP program
//! (through `BPF_PROG_TEST_RUN`), judged by [`crate::reference`] as well; any
//! disagreement in verdict or counted reason is a failure that prints the case.
//!
//! Frames are built with structure first, so that most reach deep into the parser —
//! Ethernet with 0–3 VLAN tags (or PPPoE, MPLS, ARP), IPv4 with options and fragment
//! fields, IPv6 with chains of extension headers, TCP/UDP/ICMP with ports drawn from the
//! policy — and then mutated: truncated anywhere, bytes overwritten, lengths lied about.
//! Sources are drawn from the listed networks, their neighbours and anywhere.
//!
//! A case is written in a small text format, so that a failure can be kept as a
//! regression case (`tests/fuzz/regressions/packets/*.case`) and replayed every run:
//!
//! ```text
//! mode enforce
//! dhcp_client true
//! pass_encapsulated false
//! return_traffic true
//! public 443/tcp
//! allow 192.0.2.0/24
//! allow 198.51.100.7/32 22/tcp,5985-5986/tcp
//! flow 6 203.0.113.5 443 10.0.0.1 51000      # protocol, remote, its port, local, its port
//! frame 02000000000102000000000208004500...
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use allowlist_common::{FEATURE_DHCP_CLIENT, FEATURE_PASS_ENCAPSULATED, FEATURE_RETURN_TRAFFIC};
use allowlist_userspace::{
    compile::{CompiledList, Reach},
    config::Mode,
    ports::{self, PortSpec},
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::frames::{
    self, Ipv4Header, Ipv6Header, VlanTag, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV4,
    ETH_P_IPV6, ETH_P_LLDP, ETH_P_MPLS_MULTICAST, ETH_P_MPLS_UNICAST, ETH_P_PPPOE_DISCOVERY,
    ETH_P_PPPOE_SESSION, ETH_P_QINQ_LEGACY, IPPROTO_DESTINATION_OPTIONS, IPPROTO_FRAGMENT,
    IPPROTO_HOP_BY_HOP, IPPROTO_ROUTING, PPP_IPCP, PPP_IPV4, PPP_IPV6, PPP_LCP, TEST_DST_MAC,
    TEST_SRC_MAC,
};
use crate::reference::{Flow, Policy};
use crate::rng::Rng;

/// A policy and the frames to judge under it, in order (fragment trains carry over).
#[derive(Clone, Debug)]
pub struct Case {
    pub policy: Policy,
    pub frames: Vec<Vec<u8>>,
}

impl Case {
    /// The kernel's form of the policy's list, or why it cannot be compiled.
    pub fn compiled(policy: &Policy) -> Result<CompiledList, String> {
        let entries = policy.entries.iter().map(|(network, ports)| {
            let reach = match ports {
                None => Reach::All,
                Some(ports) => Reach::from_ports(ports),
            };
            (*network, reach)
        });
        CompiledList::compile_with_ports(entries, &policy.public_ports)
            .map(|(list, _)| list)
            .map_err(|error| error.to_string())
    }

    /// The control record's feature bits for the policy.
    pub fn features(policy: &Policy) -> u32 {
        let mut features = 0;
        if policy.return_traffic {
            features |= FEATURE_RETURN_TRAFFIC;
        }
        if policy.dhcp_client {
            features |= FEATURE_DHCP_CLIENT;
        }
        if policy.pass_encapsulated {
            features |= FEATURE_PASS_ENCAPSULATED;
        }
        features
    }

    /// The case as text (the format in the module's documentation).
    pub fn to_text(&self) -> String {
        let policy = &self.policy;
        let join = |ports: &[PortSpec]| -> String {
            ports
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut text = format!(
            "mode {}\ndhcp_client {}\npass_encapsulated {}\nreturn_traffic {}\n",
            policy.mode, policy.dhcp_client, policy.pass_encapsulated, policy.return_traffic
        );
        if !policy.public_ports.is_empty() {
            text.push_str(&format!("public {}\n", join(&policy.public_ports)));
        }
        for (network, ports) in &policy.entries {
            match ports {
                None => text.push_str(&format!("allow {network}\n")),
                Some(ports) => text.push_str(&format!("allow {network} {}\n", join(ports))),
            }
        }
        for flow in &policy.flows {
            text.push_str(&format!(
                "flow {} {} {} {} {}\n",
                flow.protocol, flow.remote, flow.remote_port, flow.local, flow.local_port
            ));
        }
        for frame in &self.frames {
            let hex: String = frame.iter().map(|byte| format!("{byte:02x}")).collect();
            text.push_str(&format!("frame {hex}\n"));
        }
        text
    }

    /// Reads a case written by [`Case::to_text`]; `#` starts a comment.
    pub fn parse(text: &str) -> Result<Case, String> {
        let mut policy = Policy {
            entries: Vec::new(),
            public_ports: Vec::new(),
            mode: Mode::Enforce,
            dhcp_client: true,
            pass_encapsulated: false,
            return_traffic: true,
            flows: Vec::new(),
        };
        let mut frames = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bad = |what: &str| format!("line {}: {what}: {line:?}", index + 1);
            let (key, value) = line.split_once(' ').ok_or_else(|| bad("no value"))?;
            let flag = |value: &str| value.parse::<bool>().map_err(|_| bad("not true/false"));
            match key {
                "mode" => {
                    policy.mode = match value {
                        "off" => Mode::Off,
                        "monitor" => Mode::Monitor,
                        "enforce" => Mode::Enforce,
                        _ => return Err(bad("unknown mode")),
                    }
                }
                "dhcp_client" => policy.dhcp_client = flag(value)?,
                "pass_encapsulated" => policy.pass_encapsulated = flag(value)?,
                "return_traffic" => policy.return_traffic = flag(value)?,
                "flow" => {
                    let fields: Vec<&str> = value.split_whitespace().collect();
                    let [protocol, remote, remote_port, local, local_port] = fields[..] else {
                        return Err(bad("expected PROTOCOL REMOTE PORT LOCAL PORT"));
                    };
                    let number = |text: &str| text.parse::<u16>().map_err(|_| bad("not a port"));
                    let address =
                        |text: &str| text.parse::<IpAddr>().map_err(|_| bad("not an address"));
                    policy.flows.push(Flow {
                        protocol: protocol.parse().map_err(|_| bad("not a protocol"))?,
                        remote: address(remote)?,
                        remote_port: number(remote_port)?,
                        local: address(local)?,
                        local_port: number(local_port)?,
                    });
                }
                "public" => policy.public_ports = ports::parse_list(value).map_err(|e| bad(&e))?,
                "allow" => {
                    let mut parts = value.split_whitespace();
                    let network = parts
                        .next()
                        .and_then(|network| network.parse::<IpNet>().ok())
                        .ok_or_else(|| bad("not a network"))?;
                    let ports = parts
                        .next()
                        .map(ports::parse_list)
                        .transpose()
                        .map_err(|e| bad(&e))?;
                    policy.entries.push((network, ports));
                }
                "frame" => {
                    let bytes = (0..value.len())
                        .step_by(2)
                        .map(|at| {
                            value
                                .get(at..at + 2)
                                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                        })
                        .collect::<Option<Vec<u8>>>()
                        .ok_or_else(|| bad("not hex"))?;
                    frames.push(bytes);
                }
                _ => return Err(bad("unknown key")),
            }
        }
        Ok(Case { policy, frames })
    }
}

/// Port ranges the generator draws from: well-known services, the DHCP ports, and
/// arbitrary ones.
fn random_port_spec(rng: &mut Rng) -> PortSpec {
    const COMMON: [u16; 9] = [22, 53, 67, 68, 80, 443, 546, 547, 5985];
    let protocol = if rng.below(3) == 0 { 17 } else { 6 };
    let first = match rng.below(3) {
        0 => 1 + rng.below(65535) as u16,
        _ => COMMON[rng.below(COMMON.len() as u64) as usize],
    };
    let span = match rng.below(4) {
        0 => rng.below(1000) as u16,
        1 => 1,
        _ => 0,
    };
    PortSpec {
        protocol,
        first,
        last: first.saturating_add(span),
    }
}

fn random_ports(rng: &mut Rng) -> Vec<PortSpec> {
    (0..1 + rng.below(3))
        .map(|_| random_port_spec(rng))
        .collect()
}

/// A few base addresses per family, so that entries nest and overlap and sources fall
/// inside, beside and outside them.
struct Bases {
    v4: Vec<u32>,
    v6: Vec<u128>,
}

impl Bases {
    fn new(rng: &mut Rng) -> Bases {
        Bases {
            v4: (0..3).map(|_| rng.next_u64() as u32).collect(),
            v6: (0..3)
                .map(|_| (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64()))
                .collect(),
        }
    }

    fn near_v4(&self, rng: &mut Rng) -> Ipv4Addr {
        let base = self.v4[rng.below(self.v4.len() as u64) as usize];
        // Within its /24, /20 (the coarse screen's unit) or the /20 beside it, /16, ….
        let spread =
            [0u32, 0xff, 0xfff, 0x1fff, 0xffff, 0xff_ffff, u32::MAX][rng.below(7) as usize];
        Ipv4Addr::from(base ^ (rng.next_u64() as u32 & spread))
    }

    fn near_v6(&self, rng: &mut Rng) -> Ipv6Addr {
        let base = self.v6[rng.below(self.v6.len() as u64) as usize];
        let random = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
        let spread = [
            0u128,
            0xffff,
            u128::from(u64::MAX),
            u128::MAX >> 16,
            u128::MAX,
        ][rng.below(5) as usize];
        Ipv6Addr::from(base ^ (random & spread))
    }
}

/// A random policy and the bases its networks were drawn around.
pub fn random_policy(rng: &mut Rng) -> (Policy, Vec<IpNet>) {
    let bases = Bases::new(rng);
    let mut entries = Vec::new();
    for _ in 0..rng.below(24) {
        let network = if rng.below(2) == 0 {
            let len = [0u8, 8, 16, 19, 20, 21, 24, 28, 31, 32, 32][rng.below(11) as usize];
            let len = if len == 0 && rng.below(4) != 0 {
                24
            } else {
                len
            };
            IpNet::V4(
                Ipv4Net::new(bases.near_v4(rng), len)
                    .unwrap_or_default()
                    .trunc(),
            )
        } else {
            let len = [0u8, 16, 32, 48, 64, 96, 120, 128, 128][rng.below(9) as usize];
            let len = if len == 0 && rng.below(4) != 0 {
                48
            } else {
                len
            };
            IpNet::V6(
                Ipv6Net::new(bases.near_v6(rng), len)
                    .unwrap_or_default()
                    .trunc(),
            )
        };
        let ports = (rng.below(3) == 0).then(|| random_ports(rng));
        entries.push((network, ports));
    }
    let public_ports = if rng.below(3) == 0 {
        random_ports(rng)
    } else {
        Vec::new()
    };
    let mode = match rng.below(10) {
        0 => Mode::Off,
        1..=3 => Mode::Monitor,
        _ => Mode::Enforce,
    };
    // Flows the host opened: from the same neighbourhoods, to this host's addresses.
    let flows = (0..rng.below(6))
        .map(|_| {
            let v6 = rng.below(2) == 0;
            let protocol: u8 = match rng.below(4) {
                0 | 1 => 6,
                2 => 17,
                _ if v6 => 58,
                _ => 1,
            };
            let icmp = matches!(protocol, 1 | 58);
            Flow {
                protocol,
                remote: if v6 {
                    IpAddr::V6(bases.near_v6(rng))
                } else {
                    IpAddr::V4(bases.near_v4(rng))
                },
                remote_port: if icmp { 0 } else { 1 + rng.below(65535) as u16 },
                local: local_address(v6),
                local_port: rng.next_u64() as u16,
            }
        })
        .collect();
    let policy = Policy {
        entries,
        public_ports,
        mode,
        dhcp_client: rng.below(4) != 0,
        pass_encapsulated: rng.below(4) == 0,
        return_traffic: rng.below(4) != 0,
        flows,
    };
    let networks = policy.entries.iter().map(|(network, _)| *network).collect();
    (policy, networks)
}

/// The host's own addresses in the frames (their destination).
const LOCAL_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const LOCAL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// The host's own address in the frames (their destination).
pub fn local_address(v6: bool) -> IpAddr {
    if v6 {
        LOCAL_V6.into()
    } else {
        LOCAL_V4.into()
    }
}

/// The flow table key of a flow, as the daemon seeds it (IPv4 addresses IPv4-mapped).
pub fn flow_key(flow: &Flow) -> allowlist_common::FlowKey {
    let octets = |address: IpAddr| match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    allowlist_common::FlowKey {
        remote: octets(flow.remote),
        local: octets(flow.local),
        remote_port: flow.remote_port,
        local_port: flow.local_port,
        protocol: flow.protocol,
        _pad: [0; 3],
    }
}

/// Builds frames for one policy.
pub struct FrameMaker<'a> {
    policy: &'a Policy,
    networks: &'a [IpNet],
    bases: Bases,
    /// Sources of recent frames: reused now and then, so that fragments of one datagram
    /// (same source, destination, id, protocol) meet.
    recent: Vec<IpAddr>,
    /// First fragments sent (source, protocol, id), whose later fragments may follow.
    trains: Vec<(IpAddr, u8, u16)>,
}

impl<'a> FrameMaker<'a> {
    pub fn new(policy: &'a Policy, networks: &'a [IpNet], rng: &mut Rng) -> Self {
        FrameMaker {
            policy,
            networks,
            bases: Bases::new(rng),
            recent: Vec::new(),
            trains: Vec::new(),
        }
    }

    fn source(&mut self, rng: &mut Rng, v6: bool) -> IpAddr {
        let again: Vec<IpAddr> = self
            .recent
            .iter()
            .copied()
            .filter(|source| source.is_ipv6() == v6)
            .collect();
        let source = if !again.is_empty() && rng.below(3) == 0 {
            again[rng.below(again.len() as u64) as usize]
        } else {
            self.new_source(rng, v6)
        };
        self.recent.push(source);
        if self.recent.len() > 8 {
            self.recent.remove(0);
        }
        source
    }

    fn new_source(&self, rng: &mut Rng, v6: bool) -> IpAddr {
        let inside: Vec<&IpNet> = self
            .networks
            .iter()
            .filter(|network| network.addr().is_ipv6() == v6)
            .collect();
        if !inside.is_empty() && rng.below(3) != 0 {
            let network = inside[rng.below(inside.len() as u64) as usize];
            let host_bits = u32::from(network.max_prefix_len() - network.prefix_len());
            return match network {
                IpNet::V4(net) => {
                    let offset = if host_bits == 0 {
                        0
                    } else {
                        rng.next_u64() as u32 & (u32::MAX >> (32 - host_bits))
                    };
                    // Just outside, now and then.
                    let outside = if rng.below(6) == 0 {
                        1u32 << host_bits.min(31)
                    } else {
                        0
                    };
                    IpAddr::V4(Ipv4Addr::from(u32::from(net.network()) ^ offset ^ outside))
                }
                IpNet::V6(net) => {
                    let random = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
                    let offset = if host_bits == 0 {
                        0
                    } else {
                        random & (u128::MAX >> (128 - host_bits))
                    };
                    IpAddr::V6(Ipv6Addr::from(u128::from(net.network()) ^ offset))
                }
            };
        }
        if v6 {
            IpAddr::V6(self.bases.near_v6(rng))
        } else {
            IpAddr::V4(self.bases.near_v4(rng))
        }
    }

    fn destination_port(&self, rng: &mut Rng) -> u16 {
        let scoped: Vec<&PortSpec> = self
            .policy
            .entries
            .iter()
            .filter_map(|(_, ports)| ports.as_ref())
            .flatten()
            .chain(&self.policy.public_ports)
            .collect();
        match rng.below(4) {
            0 | 1 if !scoped.is_empty() => {
                let range = scoped[rng.below(scoped.len() as u64) as usize];
                range.first + rng.below(u64::from(range.last - range.first) + 1) as u16
            }
            2 => [68, 546, 22, 443][rng.below(4) as usize],
            _ => rng.next_u64() as u16,
        }
    }

    /// One frame: structure first, then (sometimes) mutation.
    pub fn frame(&mut self, rng: &mut Rng) -> Vec<u8> {
        // The order of the draws from `rng` is what a seed replays: keep it.
        let tags: Vec<VlanTag> = (0..[0, 0, 0, 1, 1, 2, 3][rng.below(7) as usize])
            .map(|_| VlanTag {
                tpid: [ETH_P_8021Q, ETH_P_8021AD, ETH_P_QINQ_LEGACY][rng.below(3) as usize],
                vid: rng.below(4096) as u16,
            })
            .collect();
        let (ether_type, payload): (u16, Vec<u8>) = match rng.below(20) {
            0 => {
                // ARP, LLDP or anything else that is not IP.
                let ether_type: u16 =
                    [ETH_P_ARP, ETH_P_LLDP, rng.next_u64() as u16][rng.below(3) as usize];
                (ether_type, (0..28).map(|_| rng.next_u64() as u8).collect())
            }
            1 => {
                // A PPPoE session carrying IP or link control, or PPPoE discovery; its
                // length field says 40 whatever follows.
                let ether_type = if rng.below(4) == 0 {
                    ETH_P_PPPOE_DISCOVERY
                } else {
                    ETH_P_PPPOE_SESSION
                };
                let mut session = vec![0x11, 0, 0x12, 0x34, 0, 40];
                let ppp = [PPP_IPV4, PPP_IPV6, PPP_LCP, PPP_IPCP][rng.below(4) as usize];
                session.extend_from_slice(&ppp.to_be_bytes());
                session.extend(self.ip_packet(rng, ppp == PPP_IPV6));
                (ether_type, session)
            }
            2 => {
                // MPLS.
                let ether_type = if rng.below(2) == 0 {
                    ETH_P_MPLS_UNICAST
                } else {
                    ETH_P_MPLS_MULTICAST
                };
                (ether_type, frames::mpls(1000, &self.ip_packet(rng, false)))
            }
            6 | 7 if !self.trains.is_empty() => {
                // A later fragment of a datagram whose first fragment went before.
                let (source, protocol, id) =
                    self.trains[rng.below(self.trains.len() as u64) as usize];
                let offset = 1 + rng.below(0x1fff) as u16;
                let more = if rng.below(2) == 0 { 0x2000 } else { 0 };
                let payload = (0..8).map(|_| rng.next_u64() as u8).collect();
                let packet = ip_header(
                    source,
                    local_address(source.is_ipv6()),
                    protocol,
                    more | offset,
                    id,
                    payload,
                );
                (ether_type_of(source), packet)
            }
            3..=5 if !self.policy.flows.is_empty() => {
                // A reply to a flow the host opened (or nearly: a field may be off).
                let flow = self.policy.flows[rng.below(self.policy.flows.len() as u64) as usize];
                (ether_type_of(flow.remote), self.reply(rng, &flow))
            }
            _ => {
                let v6 = rng.below(2) == 0;
                let ether_type = if v6 { ETH_P_IPV6 } else { ETH_P_IPV4 };
                (ether_type, self.ip_packet(rng, v6))
            }
        };
        let mut frame = frames::ethernet(TEST_DST_MAC, TEST_SRC_MAC, &tags, ether_type, &payload);
        mutate(&mut frame, rng);
        frame
    }

    /// An IP packet answering `flow`, now and then with one field changed.
    fn reply(&mut self, rng: &mut Rng, flow: &Flow) -> Vec<u8> {
        let mut flow = *flow;
        match rng.below(8) {
            0 => flow.remote_port = flow.remote_port.wrapping_add(1),
            1 => flow.local_port = flow.local_port.wrapping_add(1),
            2 => flow.protocol = if flow.protocol == 6 { 17 } else { 6 },
            _ => {}
        }
        let transport = match flow.protocol {
            1 | 58 => {
                let reply_type = if flow.protocol == 1 { 0 } else { 129 };
                frames::icmp_echo(reply_type, flow.local_port, 1)
            }
            protocol => {
                let mut header = flow.remote_port.to_be_bytes().to_vec();
                header.extend_from_slice(&flow.local_port.to_be_bytes());
                header.extend(std::iter::repeat_n(0u8, if protocol == 6 { 16 } else { 4 }));
                header
            }
        };
        let fragment: u16 = if rng.below(5) == 0 { 0x2000 } else { 0 };
        let id = rng.below(4) as u16;
        if fragment != 0 {
            self.trains.push((flow.remote, flow.protocol, id));
        }
        ip_header(
            flow.remote,
            flow.local,
            flow.protocol,
            fragment,
            id,
            transport,
        )
    }

    fn ip_packet(&mut self, rng: &mut Rng, v6: bool) -> Vec<u8> {
        let source = self.source(rng, v6);
        let protocol: u8 = [6, 6, 17, 17, 1, 58, rng.next_u64() as u8][rng.below(7) as usize];
        match source {
            IpAddr::V4(source) => {
                let most_words = if rng.below(4) == 0 { 11 } else { 1 };
                let options = 4 * rng.below(most_words) as usize;
                let fragment: u16 = match rng.below(6) {
                    0 => 0x2000,                                  // first fragment
                    1 => 0x2000 | (1 + rng.below(0x1fff) as u16), // a middle one
                    2 => 1 + rng.below(0x1fff) as u16,            // the last one
                    3 => 0x4000,                                  // don't fragment
                    _ => 0,
                };
                let id = rng.below(4) as u16;
                if fragment == 0x2000 {
                    self.trains.push((IpAddr::V4(source), protocol, id));
                }
                let transport = self.transport(rng, protocol, v6);
                // Options of type 1 (no-operation), which any parser must step over.
                Ipv4Header::new(source, LOCAL_V4, protocol)
                    .id(id)
                    .fragment(fragment)
                    .options(&vec![1; options])
                    .packet(&transport)
            }
            IpAddr::V6(source) => {
                let hop_limit = if rng.below(3) == 0 { 255 } else { 64 };
                let mut chain = Vec::new();
                let mut next = protocol;
                // Extension headers, innermost last: 0–6 of them.
                let count = [0, 0, 0, 1, 1, 2, 3, 4, 5, 6][rng.below(10) as usize];
                let mut headers: Vec<(u8, Vec<u8>)> = Vec::new();
                for _ in 0..count {
                    let kind = [
                        IPPROTO_HOP_BY_HOP,
                        IPPROTO_ROUTING,
                        IPPROTO_FRAGMENT,
                        IPPROTO_DESTINATION_OPTIONS,
                    ][rng.below(4) as usize];
                    let body = if kind == IPPROTO_FRAGMENT {
                        let offset_flags: u16 = match rng.below(4) {
                            0 => 1,
                            1 => ((1 + rng.below(0x1fff)) as u16) << 3,
                            2 => (((1 + rng.below(0x1fff)) as u16) << 3) | 1,
                            _ => 0,
                        };
                        // Its next header is filled in when the chain is linked.
                        frames::ipv6_fragment_header(0, offset_flags, rng.below(4) as u32)
                    } else {
                        let units = rng.below(2) as u8;
                        let mut body = vec![0, units];
                        body.extend(std::iter::repeat_n(0u8, usize::from(units) * 8 + 6));
                        body
                    };
                    headers.push((kind, body));
                }
                // Link them: each header's first byte names what follows it.
                for (kind, mut body) in headers.into_iter().rev() {
                    body[0] = next;
                    next = kind;
                    let mut linked = body;
                    linked.extend(chain);
                    chain = linked;
                }
                chain.extend(self.transport(rng, protocol, v6));
                Ipv6Header::new(source, LOCAL_V6, next)
                    .hop_limit(hop_limit)
                    .packet(&chain)
            }
        }
    }

    fn transport(&self, rng: &mut Rng, protocol: u8, v6: bool) -> Vec<u8> {
        match protocol {
            6 | 17 => {
                let source_port: u16 = match rng.below(4) {
                    0 => 67,
                    1 => 547,
                    _ => rng.next_u64() as u16,
                };
                let mut header = source_port.to_be_bytes().to_vec();
                header.extend_from_slice(&self.destination_port(rng).to_be_bytes());
                let rest = if protocol == 6 { 16 } else { 4 };
                header.extend((0..rest).map(|_| rng.next_u64() as u8));
                header
            }
            1 | 58 => {
                let icmp_type: u8 = if v6 && rng.below(2) == 0 {
                    133 + rng.below(5) as u8
                } else {
                    [0, 8, 128, 129, rng.next_u64() as u8][rng.below(5) as usize]
                };
                // An echo's identifier and sequence number; other types take them as
                // whatever their header's second word means.
                frames::icmp(icmp_type, 0, [0x12, 0x34, 0, 1], &[])
            }
            _ => (0..8).map(|_| rng.next_u64() as u8).collect(),
        }
    }
}

/// A plain IP header (no options or extension headers) around `transport`; `fragment`
/// and `id` are IPv4's fragment field and identification (IPv6 gets a fragment header
/// with the same offset and more-fragments flag when `fragment` is not zero).
fn ip_header(
    source: IpAddr,
    destination: IpAddr,
    protocol: u8,
    fragment: u16,
    id: u16,
    transport: Vec<u8>,
) -> Vec<u8> {
    match (source, destination) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            Ipv4Header::new(source, destination, protocol)
                .id(id)
                .fragment(fragment)
                .packet(&transport)
        }
        (IpAddr::V6(source), IpAddr::V6(destination)) => {
            let (next, mut payload) = if fragment != 0 {
                let more = u16::from(fragment & 0x2000 != 0);
                let offset_flags = ((fragment & 0x1fff) << 3) | more;
                let header = frames::ipv6_fragment_header(protocol, offset_flags, u32::from(id));
                (IPPROTO_FRAGMENT, header)
            } else {
                (protocol, Vec::new())
            };
            payload.extend(transport);
            Ipv6Header::new(source, destination, next).packet(&payload)
        }
        _ => Vec::new(),
    }
}

/// The ether type of IP packets from `source`.
fn ether_type_of(source: IpAddr) -> u16 {
    if source.is_ipv6() {
        ETH_P_IPV6
    } else {
        ETH_P_IPV4
    }
}

/// Cuts the frame anywhere, overwrites bytes, or leaves it whole.
fn mutate(frame: &mut Vec<u8>, rng: &mut Rng) {
    match rng.below(8) {
        0 => {
            let keep = rng.below(frame.len() as u64 + 1) as usize;
            frame.truncate(keep);
        }
        1 | 2 => {
            for _ in 0..1 + rng.below(4) {
                if frame.is_empty() {
                    break;
                }
                let at = rng.below(frame.len() as u64) as usize;
                frame[at] = rng.next_u64() as u8;
            }
        }
        3 => frame.extend((0..rng.below(64)).map(|_| rng.next_u64() as u8)),
        _ => {}
    }
}
