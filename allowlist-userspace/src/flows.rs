//! Connections the host opened before the flow tracker saw them (a download running when
//! the daemon starts): read from /proc/net/{tcp,udp}{,6} and written into the flow
//! table, so enforcing never cuts the host's own connections.

use std::{collections::BTreeSet, fs, net::IpAddr};

use allowlist_common::{FlowKey, Ipv6Octets, IPPROTO_TCP, IPPROTO_UDP};

use crate::safety::{parse_proc_tcp_line, unmap, TCP_ESTABLISHED, TCP_LISTEN};

/// Established TCP connections to remote ports from local ports nobody listens on, and
/// connected UDP sockets (the same state number in /proc/net/udp).
pub fn outbound() -> Vec<FlowKey> {
    let mut flows = Vec::new();
    for (protocol, tables) in [
        (IPPROTO_TCP, ["/proc/net/tcp", "/proc/net/tcp6"]),
        (IPPROTO_UDP, ["/proc/net/udp", "/proc/net/udp6"]),
    ] {
        let sockets: Vec<_> = tables
            .iter()
            .filter_map(|table| fs::read_to_string(table).ok())
            .flat_map(|text| {
                text.lines()
                    .skip(1)
                    .filter_map(parse_proc_tcp_line)
                    .collect::<Vec<_>>()
            })
            .collect();
        let listening: BTreeSet<u16> = sockets
            .iter()
            .filter(|socket| protocol == IPPROTO_TCP && socket.state == TCP_LISTEN)
            .map(|socket| socket.local_port)
            .collect();
        for socket in sockets {
            if socket.state != TCP_ESTABLISHED || listening.contains(&socket.local_port) {
                continue;
            }
            flows.push(FlowKey {
                remote: mapped(unmap(socket.remote)),
                local: mapped(unmap(socket.local)),
                remote_port: socket.remote_port,
                local_port: socket.local_port,
                protocol,
                _pad: [0; 3],
            });
        }
    }
    flows
}

/// The flow key's address form: IPv6 as is, IPv4 as ::ffff:a.b.c.d.
pub fn mapped(address: IpAddr) -> Ipv6Octets {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}
