//! Minimum-size UDP frames, as the benchmarks feed them to XDP, built with the harness's
//! frame builders.
//!
//! The drop-rate generator (`allowlist-ebpf/src/bench.rs`) writes each frame's IPv4
//! source into a copy of [`udp_v4`]'s frame and fixes its checksum: it assumes exactly
//! this layout (Ethernet, a 20-byte IPv4 header with a checksum, UDP).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use allowlist_tests::frames::{self, Ipv4Header, Ipv6Header, Mac, IPPROTO_UDP};

/// The discard service: nothing in the benchmarks answers.
const UDP_PORT_DISCARD: u16 = 9;
const UDP_SOURCE_PORT: u16 = 1024;

/// A 60-byte IPv4/UDP frame (the Ethernet minimum without FCS) or a 66-byte IPv6 one.
pub fn udp(dst_mac: Mac, src_mac: Mac, src: IpAddr, dst: IpAddr) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => udp_v4(dst_mac, src_mac, src, dst),
        (IpAddr::V6(src), IpAddr::V6(dst)) => udp_v6(dst_mac, src_mac, src, dst),
        _ => panic!("source {src} and destination {dst} are of different families"),
    }
}

pub fn udp_v4(dst_mac: Mac, src_mac: Mac, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let datagram = frames::udp(UDP_SOURCE_PORT, UDP_PORT_DISCARD, &[0; 18]);
    let packet = Ipv4Header::new(src, dst, IPPROTO_UDP)
        .dont_fragment()
        .with_checksum()
        .packet(&datagram);
    frames::ethernet(dst_mac, src_mac, &[], frames::ETH_P_IPV4, &packet)
}

fn udp_v6(dst_mac: Mac, src_mac: Mac, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    // The UDP checksum is left 0: nothing in the benchmarks delivers IPv6 to a socket.
    let datagram = frames::udp(UDP_SOURCE_PORT, UDP_PORT_DISCARD, &[0; 4]);
    let packet = Ipv6Header::new(src, dst, IPPROTO_UDP).packet(&datagram);
    frames::ethernet(dst_mac, src_mac, &[], frames::ETH_P_IPV6, &packet)
}
