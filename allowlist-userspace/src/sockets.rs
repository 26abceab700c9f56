//! The host's own TCP and UDP sockets, read from `/proc/net/{tcp,udp}{,6}` of the
//! daemon's network namespace (the namespace of the interfaces it protects) with the
//! `procfs` crate: who is connected in (the lockout check must not cut them off), and
//! which flows the host opened before the egress tracker was there to see them (seeded
//! so that their replies pass).

use std::{collections::BTreeSet, net::IpAddr};

use allowlist_common::{FlowKey, Ipv6Octets, IPPROTO_TCP, IPPROTO_UDP};
use procfs::net::{TcpNetEntry, TcpState, UdpState};

/// An IPv4 client of a dual-stack socket shows as ::ffff:a.b.c.d; on the wire, and so to
/// the filter, it is IPv4.
pub fn unmap(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// The flow key's address form: IPv6 as is, IPv4 as ::ffff:a.b.c.d.
pub fn mapped(address: IpAddr) -> Ipv6Octets {
    match unmap(address) {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Every TCP socket, IPv4 and IPv6; a table that cannot be read counts as empty (an
/// IPv6-less kernel has no tcp6), with a word in the log.
fn tcp_sockets() -> Vec<TcpNetEntry> {
    let v4 = readable("/proc/net/tcp", procfs::net::tcp());
    let v6 = readable("/proc/net/tcp6", procfs::net::tcp6());
    v4.into_iter().chain(v6).collect()
}

fn readable<T>(table: &str, read: procfs::ProcResult<Vec<T>>) -> Vec<T> {
    read.unwrap_or_else(|error| {
        tracing::warn!(table, %error, "cannot read the host's sockets");
        Vec::new()
    })
}

fn listening_ports(sockets: &[TcpNetEntry]) -> BTreeSet<u16> {
    sockets
        .iter()
        .filter(|socket| socket.state == TcpState::Listen)
        .map(|socket| socket.local_address.port())
        .collect()
}

/// Remote address and local port of the established TCP connections to ports this host
/// listens on.
pub fn inbound_tcp_peers() -> Vec<(IpAddr, u16)> {
    let sockets = tcp_sockets();
    inbound(&sockets)
}

fn inbound(sockets: &[TcpNetEntry]) -> Vec<(IpAddr, u16)> {
    let listening = listening_ports(sockets);
    sockets
        .iter()
        .filter(|socket| socket.state == TcpState::Established)
        .filter(|socket| listening.contains(&socket.local_address.port()))
        .map(|socket| {
            (
                unmap(socket.remote_address.ip()),
                socket.local_address.port(),
            )
        })
        .collect()
}

/// The flows the host opened that are open now: established TCP connections not to a
/// listening port (those are inbound), and connected UDP sockets.
pub fn outbound_flows() -> Vec<FlowKey> {
    let tcp = tcp_sockets();
    let listening = listening_ports(&tcp);
    let tcp = tcp
        .iter()
        .filter(|socket| socket.state == TcpState::Established)
        .filter(|socket| !listening.contains(&socket.local_address.port()))
        .map(|socket| flow(IPPROTO_TCP, socket.local_address, socket.remote_address));
    let udp: Vec<FlowKey> = readable("/proc/net/udp", procfs::net::udp())
        .into_iter()
        .chain(readable("/proc/net/udp6", procfs::net::udp6()))
        .filter(|socket| socket.state == UdpState::Established)
        .map(|socket| flow(IPPROTO_UDP, socket.local_address, socket.remote_address))
        .collect();
    tcp.chain(udp).collect()
}

fn flow(protocol: u8, local: std::net::SocketAddr, remote: std::net::SocketAddr) -> FlowKey {
    FlowKey {
        remote: mapped(remote.ip()),
        local: mapped(local.ip()),
        remote_port: remote.port(),
        local_port: local.port(),
        protocol,
        _pad: [0; 3],
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};

    use super::*;

    #[test]
    fn ipv4_mapped_addresses_are_judged_as_ipv4() {
        assert_eq!(
            unmap("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            mapped("::ffff:192.0.2.1".parse().unwrap()),
            mapped("192.0.2.1".parse().unwrap())
        );
    }

    /// A connection to ourselves on loopback is both: inbound to the listener's port, and
    /// a flow this host opened from the client's ephemeral port.
    #[test]
    fn a_live_connection_shows_as_an_inbound_peer_and_as_an_outbound_flow() {
        let listener = TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, 0))).unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let client_port = client.local_addr().unwrap().port();

        assert!(
            inbound_tcp_peers().contains(&(IpAddr::from(Ipv6Addr::LOCALHOST), port)),
            "{:?}",
            inbound_tcp_peers()
        );
        let flows = outbound_flows();
        assert!(
            flows.iter().any(|flow| flow.protocol == IPPROTO_TCP
                && flow.local_port == client_port
                && flow.remote_port == port),
            "{flows:?}"
        );
    }
}
