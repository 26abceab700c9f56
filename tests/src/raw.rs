//! Hand-built Ethernet frames over AF_PACKET: VLAN-tagged (and PPPoE or MPLS
//! encapsulated) traffic without any kernel support for it.
//!
//! The test kernel has neither 802.1Q devices nor bridge VLAN filtering, so a tagged
//! path cannot be built from interfaces. Instead the client writes complete frames
//! (802.1Q / 802.1ad tags in the frame itself, as on a wire) straight onto its veth, and
//! a packet tap on the host end records which of them got past XDP: a tap sees every
//! frame the XDP program passed and none that it dropped.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::frames::{
    self, Ipv4Header, Mac, VlanTag, BROADCAST_MAC, ETHERNET_HEADER_LEN, ETH_P_8021AD, ETH_P_8021Q,
    ETH_P_ARP, ETH_P_IPV4, ETH_P_MPLS_MULTICAST, ETH_P_MPLS_UNICAST, ETH_P_PPPOE_SESSION,
    ETH_P_QINQ_LEGACY, IPPROTO_UDP, IPV4_HEADER_LEN, MPLS_LABEL_LEN, PPPOE_HEADER_LEN, PPP_IPV4,
    PPP_PROTOCOL_LEN, UDP_HEADER_LEN, VLAN_TAG_LEN,
};
use crate::netns::{in_netns, Netns};
use crate::traffic::{record_of, SourceRecord, MIN_UDP_PAYLOAD, UDP_PACING};

/// Every protocol, for a packet socket that taps all of an interface's frames.
const ETH_P_ALL: u16 = 0x0003;

/// A MAC address parsed from `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<Mac> {
    let octets: Vec<u8> = text
        .split(':')
        .map(|octet| u8::from_str_radix(octet, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC {text:?}"))?;
    octets
        .try_into()
        .ok()
        .with_context(|| format!("bad MAC {text:?}"))
}

/// What sits between the VLAN tags and the IPv4 header of a [`UdpFrame`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Encapsulation {
    /// The IPv4 header follows the tags (ether type 0x0800).
    #[default]
    None,
    /// A PPPoE session (ether type 0x8864, RFC 2516) carrying PPP protocol 0x0021, IPv4.
    PppoeSession { session_id: u16 },
    /// One MPLS label, bottom of stack (ether type 0x8847).
    Mpls { label: u32 },
}

impl Encapsulation {
    fn header_len(self) -> usize {
        match self {
            Encapsulation::None => 0,
            Encapsulation::PppoeSession { .. } => PPPOE_HEADER_LEN + PPP_PROTOCOL_LEN,
            Encapsulation::Mpls { .. } => MPLS_LABEL_LEN,
        }
    }
}

/// An IPv4/UDP frame to build; `tags` are written outermost first.
#[derive(Clone, Debug)]
pub struct UdpFrame {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub tags: Vec<VlanTag>,
    pub encapsulation: Encapsulation,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_len: usize,
}

impl UdpFrame {
    /// Length of the frame on the wire (no FCS): what XDP counts.
    pub fn frame_len(&self) -> usize {
        ETHERNET_HEADER_LEN
            + VLAN_TAG_LEN * self.tags.len()
            + self.encapsulation.header_len()
            + IPV4_HEADER_LEN
            + UDP_HEADER_LEN
            + self.payload_len
    }

    /// The frame bytes, carrying `sequence` in the first 8 payload bytes (and, cut to 16
    /// bits, in the IPv4 identification). Don't fragment is set; the IPv4 header has its
    /// checksum (the host's stack checks it), the UDP datagram none (legal on IPv4).
    pub fn build(&self, sequence: u64) -> Vec<u8> {
        let mut payload = vec![0xa5; self.payload_len];
        payload[..8].copy_from_slice(&sequence.to_be_bytes());
        let ip = Ipv4Header::new(self.src, self.dst, IPPROTO_UDP)
            .id(sequence as u16)
            .dont_fragment()
            .with_checksum()
            .packet(&frames::udp(self.src_port, self.dst_port, &payload));
        let (ether_type, packet) = match self.encapsulation {
            Encapsulation::None => (ETH_P_IPV4, ip),
            Encapsulation::PppoeSession { session_id } => (
                ETH_P_PPPOE_SESSION,
                frames::pppoe_session(session_id, PPP_IPV4, &ip),
            ),
            Encapsulation::Mpls { label } => (ETH_P_MPLS_UNICAST, frames::mpls(label, &ip)),
        };
        frames::ethernet(self.dst_mac, self.src_mac, &self.tags, ether_type, &packet)
    }
}

fn packet_socket(protocol: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned by the returned OwnedFd.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(protocol.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn link_address(ifindex: u32, protocol: u16) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol.to_be();
    address.sll_ifindex = ifindex as i32;
    address.sll_halen = 6;
    address
}

fn ifindex(dev: &str) -> Result<u32> {
    let name = std::ffi::CString::new(dev)?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(
        index != 0,
        "no interface {dev}: {}",
        io::Error::last_os_error()
    );
    Ok(index)
}

/// A packet socket bound to `dev` inside `netns`, with its interface index.
fn bound_packet_socket(netns: &Netns, dev: &str, protocol: u16) -> Result<(OwnedFd, u32)> {
    in_netns(netns, || -> Result<(OwnedFd, u32)> {
        let index = ifindex(dev)?;
        let socket = packet_socket(protocol).context("AF_PACKET socket")?;
        let address = link_address(index, protocol);
        // SAFETY: bind with a pointer to a live sockaddr_ll and its exact size.
        let rc = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("binding AF_PACKET socket");
        }
        Ok((socket, index))
    })
    .with_context(|| format!("packet socket on {dev} in {}", netns.name()))
}

/// Writes `count` copies of `frame` (numbered 0..count) onto `dev` in `netns`, paced
/// like [`crate::udp_send`]. Returns how many were sent.
pub fn send_frames(netns: &Netns, dev: &str, frame: &UdpFrame, count: u64) -> Result<u64> {
    assert!(
        frame.payload_len >= MIN_UDP_PAYLOAD,
        "payload must hold a sequence number"
    );
    let frames: Vec<Vec<u8>> = (0..count).map(|sequence| frame.build(sequence)).collect();
    send_raw_frames(netns, dev, frame.dst_mac, &frames)?;
    Ok(count)
}

/// Writes already-built frames (any protocol) onto `dev` in `netns`, in order, paced
/// like [`send_frames`]. For frames [`UdpFrame`] cannot describe (IPv6, fragments,
/// extension headers).
pub fn send_raw_frames(netns: &Netns, dev: &str, dst_mac: Mac, frames: &[Vec<u8>]) -> Result<()> {
    // Protocol 0: this socket only sends, it must not queue up received frames.
    let (socket, index) = bound_packet_socket(netns, dev, 0)?;
    let mut address = link_address(index, 0);
    address.sll_addr[..6].copy_from_slice(&dst_mac);
    for (number, bytes) in frames.iter().enumerate() {
        // SAFETY: sendto with a live buffer and a live sockaddr_ll of exact size.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent != bytes.len() as isize {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("sending raw frame {number} on {dev}"));
        }
        thread::sleep(UDP_PACING);
    }
    Ok(())
}

/// An ARP request from `src_mac` (who has `target`, tell `sender`), broadcast.
pub fn arp_request(src_mac: Mac, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    frames::ethernet(
        BROADCAST_MAC,
        src_mac,
        &[],
        ETH_P_ARP,
        &frames::arp_request(src_mac, sender, target),
    )
}

/// Records IPv4/UDP frames received on one interface, per source address, after XDP:
/// a frame the program dropped never reaches it. ARP frames are counted per sender.
pub struct FrameTap {
    records: Arc<Mutex<HashMap<IpAddr, SourceRecord>>>,
    arp_senders: Arc<Mutex<HashMap<Ipv4Addr, u64>>>,
    stop: Arc<AtomicBool>,
    receiver: Option<JoinHandle<()>>,
}

impl FrameTap {
    /// Taps `dev` in `netns`, recording frames to UDP port `dst_port`.
    pub fn start(netns: &Netns, dev: &str, dst_port: u16) -> Result<Self> {
        let (socket, _) = bound_packet_socket(netns, dev, ETH_P_ALL)?;
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // SAFETY: setsockopt with a pointer to a live timeval and its exact size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        ensure!(rc == 0, "SO_RCVTIMEO: {}", io::Error::last_os_error());
        // Only what arrives on the wire matters; the host's own frames are not evidence.
        let ignore_outgoing: libc::c_int = 1;
        // SAFETY: setsockopt with a pointer to a live c_int and its exact size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_IGNORE_OUTGOING,
                (&ignore_outgoing as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        ensure!(
            rc == 0,
            "PACKET_IGNORE_OUTGOING: {}",
            io::Error::last_os_error()
        );
        let records = Arc::new(Mutex::new(HashMap::new()));
        let arp_senders = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let receiver = {
            let records = Arc::clone(&records);
            let arp_senders = Arc::clone(&arp_senders);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                tap_until_stopped(socket, dst_port, &records, &arp_senders, &stop)
            })
        };
        Ok(Self {
            records,
            arp_senders,
            stop,
            receiver: Some(receiver),
        })
    }

    pub fn record_from(&self, source: IpAddr) -> SourceRecord {
        record_of(&self.records, source)
    }

    pub fn count_from(&self, source: IpAddr) -> u64 {
        self.record_from(source).datagrams
    }

    /// Waits until at least `count` frames from `source` were seen; whether they were.
    pub fn wait_for(&self, source: IpAddr, count: u64, timeout: Duration) -> bool {
        crate::process::wait_until(timeout, || self.count_from(source) >= count)
    }

    /// ARP frames seen whose sender protocol address is `sender`.
    pub fn arp_count_from(&self, sender: Ipv4Addr) -> u64 {
        let senders = self.arp_senders.lock().unwrap();
        senders.get(&sender).copied().unwrap_or(0)
    }

    /// Waits until at least `count` ARP frames from `sender` were seen; whether they were.
    pub fn wait_for_arp(&self, sender: Ipv4Addr, count: u64, timeout: Duration) -> bool {
        crate::process::wait_until(timeout, || self.arp_count_from(sender) >= count)
    }
}

impl Drop for FrameTap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(receiver) = self.receiver.take() {
            let _ = receiver.join();
        }
    }
}

fn tap_until_stopped(
    socket: OwnedFd,
    dst_port: u16,
    records: &Mutex<HashMap<IpAddr, SourceRecord>>,
    arp_senders: &Mutex<HashMap<Ipv4Addr, u64>>,
    stop: &AtomicBool,
) {
    let mut buffer = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: recv into a live buffer of the given length.
        let len = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if len < 0 {
            continue; // timeout (or EINTR): check `stop` again
        }
        let frame = &buffer[..len as usize];
        if let Some(sender) = parse_arp_sender(frame) {
            *arp_senders.lock().unwrap().entry(sender).or_default() += 1;
        }
        if let Some((source, sequence, payload_len)) = parse_udp(frame, dst_port) {
            let mut records = records.lock().unwrap();
            let record = records.entry(IpAddr::V4(source)).or_default();
            record.datagrams += 1;
            record.bytes += payload_len as u64;
            record.sequences.push(sequence);
        }
    }
}

fn be16_at(frame: &[u8], offset: usize) -> Option<u16> {
    Some(u16::from_be_bytes(
        frame.get(offset..offset + 2)?.try_into().ok()?,
    ))
}

/// The ether type after any number of in-frame VLAN tags, and the offset of what follows
/// it. (The kernel may have moved the outer tag into metadata before the tap saw the
/// frame; either form parses.)
fn after_tags(frame: &[u8]) -> Option<(u16, usize)> {
    let mut offset = 12;
    let mut ethertype = be16_at(frame, offset)?;
    while matches!(ethertype, ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ_LEGACY) {
        offset += 4;
        ethertype = be16_at(frame, offset)?;
    }
    Some((ethertype, offset + 2))
}

/// The sender protocol address of an ARP frame for IPv4 (behind any VLAN tags).
fn parse_arp_sender(frame: &[u8]) -> Option<Ipv4Addr> {
    let (ethertype, offset) = after_tags(frame)?;
    if ethertype != ETH_P_ARP || be16_at(frame, offset + 2)? != ETH_P_IPV4 {
        return None;
    }
    let sender: [u8; 4] = frame.get(offset + 14..offset + 18)?.try_into().ok()?;
    Some(Ipv4Addr::from(sender))
}

/// Source address, sequence number and payload length of an IPv4/UDP frame to
/// `dst_port`, behind any number of in-frame VLAN tags, then optionally a PPPoE session
/// or an MPLS label stack.
fn parse_udp(frame: &[u8], dst_port: u16) -> Option<(Ipv4Addr, u64, usize)> {
    let (ethertype, mut offset) = after_tags(frame)?;
    match ethertype {
        ETH_P_IPV4 => {}
        ETH_P_PPPOE_SESSION => {
            if be16_at(frame, offset + PPPOE_HEADER_LEN)? != PPP_IPV4 {
                return None;
            }
            offset += PPPOE_HEADER_LEN + PPP_PROTOCOL_LEN;
        }
        ETH_P_MPLS_UNICAST | ETH_P_MPLS_MULTICAST => loop {
            let bottom_of_stack = frame.get(offset + 2)? & 1 != 0;
            offset += MPLS_LABEL_LEN;
            if bottom_of_stack {
                break;
            }
        },
        _ => return None,
    }
    let ip = frame.get(offset..)?;
    if ip.first()? >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(ip.first()? & 0x0f) * 4;
    if ip.get(9)? != &IPPROTO_UDP {
        return None;
    }
    let source: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
    let source = Ipv4Addr::from(source);
    let udp = ip.get(header_len..)?;
    if u16::from_be_bytes(udp.get(2..4)?.try_into().ok()?) != dst_port {
        return None;
    }
    let payload = udp.get(8..)?;
    let sequence = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    Some((source, sequence, payload.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_parse_back_with_their_tags_skipped() {
        let frame = UdpFrame {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            tags: vec![VlanTag::dot1ad(200), VlanTag::dot1q(100)],
            encapsulation: Encapsulation::None,
            src: Ipv4Addr::new(10, 10, 100, 2),
            dst: Ipv4Addr::new(10, 10, 100, 1),
            src_port: 40000,
            dst_port: 7003,
            payload_len: 64,
        };
        let bytes = frame.build(42);
        assert_eq!(bytes.len(), frame.frame_len());
        assert_eq!(bytes.len(), 14 + 8 + 20 + 8 + 64);
        assert_eq!(&bytes[12..14], &[0x88, 0xa8]);
        assert_eq!(&bytes[16..18], &[0x81, 0x00]);
        assert_eq!(parse_udp(&bytes, 7003), Some((frame.src, 42, 64)));
        assert_eq!(parse_udp(&bytes, 7004), None);
        // A valid IPv4 header sums to zero including its checksum.
        assert_eq!(frames::internet_checksum(&bytes[22..42]), 0);
    }

    #[test]
    fn encapsulated_frames_and_arp_parse_back() {
        let plain = UdpFrame {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            tags: vec![VlanTag::dot1ad(200), VlanTag::dot1q(100), VlanTag::dot1q(7)],
            encapsulation: Encapsulation::None,
            src: Ipv4Addr::new(10, 10, 100, 2),
            dst: Ipv4Addr::new(10, 10, 100, 1),
            src_port: 40000,
            dst_port: 7005,
            payload_len: 64,
        };
        let pppoe = UdpFrame {
            tags: Vec::new(),
            encapsulation: Encapsulation::PppoeSession { session_id: 0x1234 },
            ..plain.clone()
        };
        let mpls = UdpFrame {
            tags: Vec::new(),
            encapsulation: Encapsulation::Mpls { label: 100 },
            ..plain.clone()
        };
        for frame in [&plain, &pppoe, &mpls] {
            let bytes = frame.build(7);
            assert_eq!(bytes.len(), frame.frame_len(), "{frame:?}");
            assert_eq!(
                parse_udp(&bytes, 7005),
                Some((frame.src, 7, 64)),
                "{frame:?}"
            );
        }
        let bytes = pppoe.build(0);
        assert_eq!(&bytes[12..14], &[0x88, 0x64]);
        assert_eq!(&bytes[18..20], &((2 + 20 + 8 + 64) as u16).to_be_bytes());
        assert_eq!(&bytes[20..22], &[0x00, 0x21]);
        let bytes = mpls.build(0);
        assert_eq!(&bytes[12..18], &[0x88, 0x47, 0x00, 0x06, 0x41, 64]);

        let sender = Ipv4Addr::new(10, 10, 100, 3);
        let arp = arp_request([2, 0, 0, 0, 0, 1], sender, Ipv4Addr::new(10, 10, 100, 1));
        assert_eq!(arp.len(), 14 + 28);
        assert_eq!(parse_arp_sender(&arp), Some(sender));
        assert_eq!(parse_udp(&arp, 7005), None);
        assert_eq!(parse_arp_sender(&plain.build(0)), None);
    }
}
