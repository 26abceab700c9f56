//! Minimum-size UDP frames, as the benchmarks feed them to XDP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub type Mac = [u8; 6];

/// Where the generator writes each frame's IPv4 source (after Ethernet and 12 bytes of
/// IPv4 header); `allowlist-bench`'s `generate` program assumes exactly this layout.
pub const UDP_PORT_DISCARD: u16 = 9;

/// A 60-byte IPv4/UDP frame (the Ethernet minimum without FCS) or a 66-byte IPv6 one.
pub fn udp(dst_mac: Mac, src_mac: Mac, src: IpAddr, dst: IpAddr) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => udp_v4(dst_mac, src_mac, src, dst),
        (IpAddr::V6(src), IpAddr::V6(dst)) => udp_v6(dst_mac, src_mac, src, dst),
        _ => panic!("source {src} and destination {dst} are of different families"),
    }
}

pub fn udp_v4(dst_mac: Mac, src_mac: Mac, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    const PAYLOAD: usize = 18;
    let mut frame = ethernet(dst_mac, src_mac, 0x0800);
    let total_len = (20 + 8 + PAYLOAD) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total_len.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]); // id, DF, ttl, UDP, checksum
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let checksum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&udp_header(PAYLOAD));
    frame.resize(frame.len() + PAYLOAD, 0);
    frame
}

fn udp_v6(dst_mac: Mac, src_mac: Mac, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    const PAYLOAD: usize = 4;
    let mut frame = ethernet(dst_mac, src_mac, 0x86dd);
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&((8 + PAYLOAD) as u16).to_be_bytes());
    frame.extend_from_slice(&[17, 64]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    // The UDP checksum is left 0: nothing in the benchmarks delivers IPv6 to a socket.
    frame.extend_from_slice(&udp_header(PAYLOAD));
    frame.resize(frame.len() + PAYLOAD, 0);
    frame
}

fn ethernet(dst_mac: Mac, src_mac: Mac, ether_type: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame
}

fn udp_header(payload: usize) -> [u8; 8] {
    let mut udp = [0u8; 8];
    udp[0..2].copy_from_slice(&1024u16.to_be_bytes());
    udp[2..4].copy_from_slice(&UDP_PORT_DISCARD.to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    udp
}

fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
