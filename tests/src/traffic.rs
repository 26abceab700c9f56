//! Real traffic between namespaces: TCP, UDP with sequence numbers, ICMP echo, and
//! neighbour (ARP / IPv6 ND) state.
//!
//! Sockets are created inside a namespace with [`in_netns`] and then used from ordinary
//! threads: a socket belongs to the namespace it was created in for its whole life.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::frames::{ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, UDP_HEADER_LEN, VLAN_TAG_LEN};
use crate::netns::{in_netns, Netns};
use crate::process::output_with_timeout;

/// Gap between datagrams in [`udp_send`]. The host end of a veth queues at most a few
/// hundred frames; a sender that outruns the receiver loses frames before XDP sees them,
/// which would look like the filter dropping them.
pub const UDP_PACING: Duration = Duration::from_micros(200);

/// Smallest UDP payload the helpers send: it carries a 64-bit sequence number.
pub const MIN_UDP_PAYLOAD: usize = 8;

/// Bytes XDP sees for one untagged IPv4 UDP datagram: Ethernet + IPv4 + UDP headers
/// plus the payload (veths neither pad short frames nor append an FCS).
pub fn udp_ipv4_frame_len(payload_len: usize) -> u64 {
    (ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN + payload_len) as u64
}

/// As [`udp_ipv4_frame_len`], for a frame carrying one 802.1Q tag.
pub fn vlan_udp_ipv4_frame_len(payload_len: usize) -> u64 {
    udp_ipv4_frame_len(payload_len) + VLAN_TAG_LEN as u64
}

/// Folds IPv4-mapped IPv6 addresses (what a dual-stack socket reports for IPv4 peers)
/// back to IPv4, so callers can compare with the addresses they know.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// A TCP server in a namespace that greets every connection with [`TcpServer::GREETING`]
/// and then echoes what it reads. It records the peer of every accepted connection.
pub struct TcpServer {
    local: SocketAddr,
    accepted: Arc<Mutex<Vec<IpAddr>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl TcpServer {
    pub const GREETING: &'static [u8] = b"allowlist-test-server\n";

    /// Listens on `bind` inside `netns`. `[::]:PORT` accepts IPv4 and IPv6.
    pub fn start(netns: &Netns, bind: SocketAddr) -> Result<Self> {
        let listener = in_netns(netns, || TcpListener::bind(bind))
            .with_context(|| format!("binding TCP {bind} in {}", netns.name()))?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let accepted = Arc::clone(&accepted);
            let stop = Arc::clone(&stop);
            thread::spawn(move || accept_until_stopped(listener, &accepted, &stop))
        };
        Ok(Self {
            local,
            accepted,
            stop,
            acceptor: Some(acceptor),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Peers of all connections accepted so far, in order.
    pub fn accepted_from(&self) -> Vec<IpAddr> {
        self.accepted.lock().unwrap().clone()
    }

    pub fn accepted_count(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_until_stopped(listener: TcpListener, accepted: &Mutex<Vec<IpAddr>>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                accepted.lock().unwrap().push(canonical(peer.ip()));
                thread::spawn(move || greet_and_echo(stream));
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(error) => {
                eprintln!("TcpServer: accept failed: {error}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn greet_and_echo(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    // Long enough for a daemon to start between two lines of a conversation, also in an
    // emulated guest (`cargo xtask vm`), which is many times slower.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    if stream.write_all(TcpServer::GREETING).is_err() {
        return;
    }
    let mut buffer = [0u8; 1024];
    while let Ok(n) = stream.read(&mut buffer) {
        if n == 0 || stream.write_all(&buffer[..n]).is_err() {
            return;
        }
    }
}

/// Whether a client in `netns` completes a TCP conversation with the [`TcpServer`] at
/// `server` within `timeout`: handshake, greeting received, one line echoed back.
/// Dropped SYNs show up as a connect timeout, so keep `timeout` short for sources that
/// are expected to be blocked.
pub fn tcp_connects(netns: &Netns, server: SocketAddr, timeout: Duration) -> bool {
    in_netns(netns, || -> Result<()> {
        let mut stream = TcpStream::connect_timeout(&server, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut greeting = vec![0u8; TcpServer::GREETING.len()];
        stream.read_exact(&mut greeting)?;
        if greeting != TcpServer::GREETING {
            bail!("unexpected greeting {greeting:?}");
        }
        let probe = b"echo me\n";
        stream.write_all(probe)?;
        let mut echoed = [0u8; 8];
        stream.read_exact(&mut echoed)?;
        if &echoed != probe {
            bail!("unexpected echo {echoed:?}");
        }
        Ok(())
    })
    .is_ok()
}

/// What a [`UdpSink`] received from one source address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceRecord {
    pub datagrams: u64,
    /// UDP payload bytes.
    pub bytes: u64,
    /// Sequence numbers in arrival order (the first 8 payload bytes, big endian).
    pub sequences: Vec<u64>,
}

impl SourceRecord {
    /// Whether exactly the sequence numbers `0..sent` arrived, each once (in any order).
    pub fn is_complete_run(&self, sent: u64) -> bool {
        let mut sorted = self.sequences.clone();
        sorted.sort_unstable();
        sorted.len() as u64 == sent && sorted.iter().copied().eq(0..sent)
    }
}

/// What a receiver recorded from `source` so far (nothing yet: an empty record).
pub(crate) fn record_of(
    records: &Mutex<HashMap<IpAddr, SourceRecord>>,
    source: IpAddr,
) -> SourceRecord {
    records
        .lock()
        .unwrap()
        .get(&source)
        .cloned()
        .unwrap_or_default()
}

/// A UDP receiver in a namespace that counts datagrams per source address.
pub struct UdpSink {
    local: SocketAddr,
    records: Arc<Mutex<HashMap<IpAddr, SourceRecord>>>,
    stop: Arc<AtomicBool>,
    receiver: Option<JoinHandle<()>>,
}

impl UdpSink {
    /// Receive buffer asked for with SO_RCVBUFFORCE: long bursts must not overflow the
    /// socket, or the sink would miss datagrams that XDP passed.
    const RECEIVE_BUFFER: libc::c_int = 32 << 20;

    /// Listens on `bind` inside `netns`. `[::]:PORT` receives IPv4 and IPv6.
    pub fn start(netns: &Netns, bind: SocketAddr) -> Result<Self> {
        let socket = in_netns(netns, || UdpSocket::bind(bind))
            .with_context(|| format!("binding UDP {bind} in {}", netns.name()))?;
        set_receive_buffer(&socket, Self::RECEIVE_BUFFER)?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let local = socket.local_addr()?;
        let records = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let receiver = {
            let records = Arc::clone(&records);
            let stop = Arc::clone(&stop);
            thread::spawn(move || receive_until_stopped(socket, &records, &stop))
        };
        Ok(Self {
            local,
            records,
            stop,
            receiver: Some(receiver),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn record_from(&self, source: IpAddr) -> SourceRecord {
        record_of(&self.records, source)
    }

    pub fn count_from(&self, source: IpAddr) -> u64 {
        self.records
            .lock()
            .unwrap()
            .get(&source)
            .map_or(0, |record| record.datagrams)
    }

    pub fn total(&self) -> u64 {
        self.records
            .lock()
            .unwrap()
            .values()
            .map(|record| record.datagrams)
            .sum()
    }

    /// Waits until at least `count` datagrams from `source` arrived; whether they did.
    pub fn wait_for(&self, source: IpAddr, count: u64, timeout: Duration) -> bool {
        crate::process::wait_until(timeout, || self.count_from(source) >= count)
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(receiver) = self.receiver.take() {
            let _ = receiver.join();
        }
    }
}

fn set_receive_buffer(socket: &UdpSocket, bytes: libc::c_int) -> Result<()> {
    // SAFETY: setsockopt with a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_RCVBUFFORCE");
    }
    Ok(())
}

fn receive_until_stopped(
    socket: UdpSocket,
    records: &Mutex<HashMap<IpAddr, SourceRecord>>,
    stop: &AtomicBool,
) {
    let mut buffer = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buffer) {
            Ok((len, peer)) => {
                let sequence = buffer[..len]
                    .get(..8)
                    .map(|bytes| u64::from_be_bytes(bytes.try_into().unwrap()));
                let mut records = records.lock().unwrap();
                let record = records.entry(canonical(peer.ip())).or_default();
                record.datagrams += 1;
                record.bytes += len as u64;
                if let Some(sequence) = sequence {
                    record.sequences.push(sequence);
                }
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(error) => {
                eprintln!("UdpSink: recv failed: {error}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A UDP socket in `netns`, bound to `from` (or to any address of `to`'s family).
fn udp_socket_in(netns: &Netns, from: Option<IpAddr>, to: SocketAddr) -> Result<UdpSocket> {
    let local = SocketAddr::new(from.unwrap_or_else(|| unspecified_like(to.ip())), 0);
    let socket = in_netns(netns, || UdpSocket::bind(local))
        .with_context(|| format!("binding UDP {local} in {}", netns.name()))?;
    socket.connect(to)?;
    Ok(socket)
}

fn datagram(sequence: u64, payload_len: usize) -> Vec<u8> {
    let mut payload = vec![0xa5; payload_len];
    payload[..8].copy_from_slice(&sequence.to_be_bytes());
    payload
}

/// Sends `count` datagrams of `payload_len` bytes from `netns` (from source address
/// `from`, or the routed default) to `to`, numbered 0..count, paced by [`UDP_PACING`].
/// Returns how many the kernel accepted, which is `count` unless sending failed.
pub fn udp_send(
    netns: &Netns,
    from: Option<IpAddr>,
    to: SocketAddr,
    count: u64,
    payload_len: usize,
) -> Result<u64> {
    assert!(
        payload_len >= MIN_UDP_PAYLOAD,
        "payload must hold a sequence number"
    );
    let socket = udp_socket_in(netns, from, to)?;
    for sequence in 0..count {
        socket
            .send(&datagram(sequence, payload_len))
            .with_context(|| format!("sending datagram {sequence} to {to}"))?;
        thread::sleep(UDP_PACING);
    }
    Ok(count)
}

/// A background UDP sender that numbers its datagrams and runs until stopped.
pub struct UdpStream {
    stop: Arc<AtomicBool>,
    sender: JoinHandle<Result<u64>>,
}

impl UdpStream {
    /// Starts sending `payload_len`-byte datagrams from `netns` to `to`, one every
    /// `interval`.
    pub fn start(
        netns: &Netns,
        from: Option<IpAddr>,
        to: SocketAddr,
        payload_len: usize,
        interval: Duration,
    ) -> Result<Self> {
        assert!(
            payload_len >= MIN_UDP_PAYLOAD,
            "payload must hold a sequence number"
        );
        let socket = udp_socket_in(netns, from, to)?;
        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || -> Result<u64> {
                let mut sent = 0u64;
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    socket
                        .send(&datagram(sent, payload_len))
                        .with_context(|| format!("sending datagram {sent} to {to}"))?;
                    sent += 1;
                    // Paced against a schedule, not by a fixed sleep, so the rate holds
                    // while the machine is busy with reloads; but never in bursts that
                    // could overflow the veth queue after a stall.
                    next += interval;
                    let now = Instant::now();
                    if next > now {
                        thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
                Ok(sent)
            })
        };
        Ok(Self { stop, sender })
    }

    /// Stops sending; returns how many datagrams were sent.
    pub fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.sender
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

fn ping_args(source: Option<IpAddr>, target: IpAddr, count: u32) -> Vec<String> {
    let mut args: Vec<String> = [
        "ping",
        "-n",
        "-q",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "1",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    if target.is_ipv6() {
        args.push("-6".into());
    }
    if let Some(source) = source {
        args.extend(["-I".into(), source.to_string()]);
    }
    args.push(target.to_string());
    args
}

/// Sends `count` ICMP echo requests from `netns` to `target`; returns how many replies
/// came back.
pub fn ping(netns: &Netns, target: IpAddr, count: u32) -> Result<u32> {
    ping_from(netns, None, target, count)
}

/// As [`ping`], from a chosen source address.
pub fn ping_from(netns: &Netns, source: Option<IpAddr>, target: IpAddr, count: u32) -> Result<u32> {
    let args = ping_args(source, target, count);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let timeout = Duration::from_millis(200 * u64::from(count)) + Duration::from_secs(5);
    let output = output_with_timeout(&mut netns.command(&args), timeout)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // "3 packets transmitted, 0 received, 100% packet loss, time 405ms"
    stdout
        .split(',')
        .find_map(|part| part.trim().strip_suffix(" received"))
        .and_then(|received| received.trim().parse().ok())
        .with_context(|| {
            format!(
                "no summary in ping output: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

/// Whether `netns` has a usable neighbour entry (one with a link-layer address) for
/// `address` on `dev`: proof that ARP or IPv6 neighbour discovery completed.
pub fn neighbour_resolved(netns: &Netns, dev: &str, address: IpAddr) -> Result<bool> {
    let json = netns.ip(&[
        "-j",
        "neigh",
        "show",
        "dev",
        dev,
        "to",
        &address.to_string(),
    ])?;
    let entries: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("parsing `ip -j neigh`: {json}"))?;
    Ok(entries.as_array().into_iter().flatten().any(|entry| {
        let has_lladdr = entry.get("lladdr").and_then(|mac| mac.as_str()).is_some();
        let failed = entry["state"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|state| matches!(state.as_str(), Some("FAILED" | "INCOMPLETE")));
        has_lladdr && !failed
    }))
}
