//! Issue 5: return traffic for flows the host opens, per-entry port scopes, public
//! ports, fragments and IPv6 extension headers, judged by real packets through the
//! real daemon.
//!
//! Fragment policy under test: a later fragment of an IPv4/IPv6 datagram carries no
//! ports, so it passes only if the first fragment of the same datagram (same source,
//! destination, identification and protocol) was admitted by a port rule, return
//! traffic or a public port (`passed_fragment`). A source listed for everything passes
//! whole anyway. A fragmented datagram to a port its source may not reach is dropped
//! at its first fragment, and its later fragments find no admitted train, so none of it
//! reaches the host.
//!
//! IPv6 extension headers (hop-by-hop, routing, fragment, destination options) are
//! walked up to four deep to find the ports; a packet whose transport header lies
//! deeper has no ports as far as the filter is concerned, so only allow-all entries
//! admit it.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use allowlist_tests::frames::{self, Ipv6Header, Mac};
use allowlist_tests::raw::parse_mac;
use allowlist_tests::{
    in_netns, ping, send_raw_frames, tcp_connects, udp_send, ConfigBuilder, Daemon, Netns, Stats,
    TcpServer, Topology, UdpSink, ALLOWED_LINK, BLOCKED_LINK,
};

/// A dropped SYN looks like a connect timeout; passed ones connect in microseconds.
const BLOCKED_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Long enough for a passed packet to arrive; what has not arrived by then was dropped.
const SETTLE: Duration = Duration::from_millis(300);
/// What the bulk server sends on every connection.
const BULK_BYTES: usize = 2 << 20;

fn any_port(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)
}

fn family(v6: bool) -> &'static str {
    if v6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// A TCP server that writes [`BULK_BYTES`] (a counting pattern) to every connection
/// and closes it.
struct BulkServer {
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl BulkServer {
    fn start(netns: &Netns, bind: SocketAddr) -> Self {
        let listener = in_netns(netns, || TcpListener::bind(bind)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            thread::spawn(move || {
                                let _ = stream.set_nonblocking(false);
                                let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
                                let _ = stream.write_all(&bulk_pattern());
                            });
                        }
                        Err(error) if error.kind() == ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(10));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Self {
            stop,
            acceptor: Some(acceptor),
        }
    }
}

impl Drop for BulkServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn bulk_pattern() -> Vec<u8> {
    (0..BULK_BYTES).map(|i| (i % 251) as u8).collect()
}

/// Connects from `netns` to a [`BulkServer`] and reads everything; whether exactly the
/// pattern arrived.
fn bulk_download(netns: &Netns, server: SocketAddr) -> Result<(), String> {
    in_netns(netns, || {
        let mut stream = TcpStream::connect_timeout(&server, ARRIVAL_TIMEOUT)
            .map_err(|error| format!("connect: {error}"))?;
        stream
            .set_read_timeout(Some(ARRIVAL_TIMEOUT))
            .map_err(|error| error.to_string())?;
        let mut received = Vec::with_capacity(BULK_BYTES);
        stream
            .read_to_end(&mut received)
            .map_err(|error| format!("read after {} bytes: {error}", received.len()))?;
        if received != bulk_pattern() {
            return Err(format!(
                "received {} bytes, not the {BULK_BYTES}-byte pattern",
                received.len()
            ));
        }
        Ok(())
    })
}

/// A UDP echo server: sends every datagram back to its sender.
struct UdpEcho {
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

impl UdpEcho {
    fn start(netns: &Netns, bind: SocketAddr) -> Self {
        let socket = in_netns(netns, || UdpSocket::bind(bind)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut buffer = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((len, peer)) = socket.recv_from(&mut buffer) {
                        let _ = socket.send_to(&buffer[..len], peer);
                    }
                }
            })
        };
        Self {
            stop,
            worker: Some(worker),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Sends `count` requests from a fresh socket in `netns` to `server`; how many echoes
/// came back.
fn udp_round_trips(netns: &Netns, server: SocketAddr, count: u32) -> u32 {
    let local = if server.is_ipv6() {
        any_port(0)
    } else {
        "0.0.0.0:0".parse().unwrap()
    };
    let socket = in_netns(netns, || UdpSocket::bind(local)).unwrap();
    socket.connect(server).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut answered = 0;
    for n in 0..count {
        let request = format!("request {n}");
        socket.send(request.as_bytes()).unwrap();
        let mut buffer = [0u8; 64];
        if let Ok(len) = socket.recv(&mut buffer) {
            if &buffer[..len] == request.as_bytes() {
                answered += 1;
            }
        }
    }
    answered
}

fn counter(stats: &Stats, reason: &str) -> u64 {
    stats.get(reason).packets
}

#[test]
fn host_initiated_flows_get_replies_from_unlisted_hosts_but_unlisted_hosts_cannot_initiate() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client(&topology)).unwrap();
    let before = daemon.stats();

    let _bulk = BulkServer::start(topology.blocked(), any_port(9100));
    let _echo_tcp = TcpServer::start(topology.blocked(), any_port(9101)).unwrap();
    let _echo_udp = UdpEcho::start(topology.blocked(), any_port(9102));
    let host_server = TcpServer::start(topology.host(), any_port(9103)).unwrap();

    for v6 in [false, true] {
        let name = family(v6);
        let remote = BLOCKED_LINK.client_ip(v6);
        assert!(
            tcp_connects(
                topology.host(),
                SocketAddr::new(remote, 9101),
                ARRIVAL_TIMEOUT
            ),
            "{name}: host's TCP conversation with the unlisted client"
        );
        let started = Instant::now();
        bulk_download(topology.host(), SocketAddr::new(remote, 9100))
            .unwrap_or_else(|error| panic!("{name}: 2 MB download from unlisted client: {error}"));
        eprintln!("{name}: 2 MB download took {:?}", started.elapsed());
        assert_eq!(
            udp_round_trips(topology.host(), SocketAddr::new(remote, 9102), 5),
            5,
            "{name}: UDP request/response from the host to the unlisted client"
        );
        assert_eq!(
            ping(topology.host(), remote, 3).unwrap(),
            3,
            "{name}: host pings the unlisted client"
        );

        // The other direction stays closed.
        assert!(
            !tcp_connects(
                topology.blocked(),
                SocketAddr::new(BLOCKED_LINK.host_ip(v6), 9103),
                BLOCKED_CONNECT_TIMEOUT
            ),
            "{name}: unlisted client opened a TCP connection to the host"
        );
        assert_eq!(
            ping(topology.blocked(), BLOCKED_LINK.host_ip(v6), 2).unwrap(),
            0,
            "{name}: unlisted client's ping to the host was answered"
        );
    }
    assert_eq!(host_server.accepted_count(), 0);

    let delta = daemon.stats().since(&before);
    // Two 2 MB downloads alone are well over a thousand reply segments.
    assert!(
        counter(&delta, "passed_return_traffic") > 1000,
        "passed_return_traffic: {delta:?}"
    );
    assert!(
        counter(&delta, "dropped_not_listed") >= 2 * (1 + 2),
        "the unlisted client's SYNs and pings: {delta:?}"
    );
}

#[test]
fn without_return_traffic_the_hosts_own_connections_to_unlisted_hosts_fail() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client(&topology).return_traffic(false);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let _server = TcpServer::start(topology.blocked(), any_port(9200)).unwrap();
    let before = daemon.stats();
    for v6 in [false, true] {
        assert!(
            !tcp_connects(
                topology.host(),
                SocketAddr::new(BLOCKED_LINK.client_ip(v6), 9200),
                BLOCKED_CONNECT_TIMEOUT
            ),
            "{}: host connected although return traffic is off",
            family(v6)
        );
        assert_eq!(
            ping(topology.host(), BLOCKED_LINK.client_ip(v6), 2).unwrap(),
            0,
            "{}: ping replies passed although return traffic is off",
            family(v6)
        );
    }
    let delta = daemon.stats().since(&before);
    assert_eq!(counter(&delta, "passed_return_traffic"), 0, "{delta:?}");
    assert!(
        counter(&delta, "dropped_not_listed") >= 2 * (1 + 2),
        "SYN-ACKs and echo replies dropped: {delta:?}"
    );
}

#[test]
fn port_scoped_entries_admit_only_their_ports_and_combine_with_allow_all_entries() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client(&topology).allow_ports(
        format!("{}/32", BLOCKED_LINK.client_v4),
        "",
        &["9001/tcp"],
    );
    let daemon = Daemon::start(&topology, &config).unwrap();
    let _ssh = TcpServer::start(topology.host(), any_port(9001)).unwrap();
    let other = TcpServer::start(topology.host(), any_port(9002)).unwrap();
    let reaches = |v6: bool, port: u16| {
        tcp_connects(
            topology.blocked(),
            SocketAddr::new(BLOCKED_LINK.host_ip(v6), port),
            BLOCKED_CONNECT_TIMEOUT,
        )
    };
    let check = |address: &str, port: &str| daemon.check(&[address, "--port", port]);

    // From the config.
    let before = daemon.stats();
    assert!(reaches(false, 9001), "IPv4 to the entry's port 9001/tcp");
    assert!(!reaches(false, 9002), "IPv4 to 9002/tcp, not in the entry");
    let delta = daemon.stats().since(&before);
    assert!(
        counter(&delta, "dropped_port_not_allowed") >= 1,
        "the SYN to 9002: {delta:?}"
    );
    let text = check("10.10.2.2", "9001/tcp");
    assert!(text.contains("PASS"), "{text}");
    let text = check("10.10.2.2", "9002/tcp");
    assert!(text.contains("DROP"), "{text}");
    assert!(text.contains("dropped_port_not_allowed"), "{text}");
    // The IPv6 address is on no list yet.
    assert!(!reaches(true, 9001), "IPv6 before it was listed");

    // Live, through the CLI, for the IPv6 address.
    daemon.ctl_ok(&[
        "add",
        &BLOCKED_LINK.client_v6.to_string(),
        "--ports",
        "9001/tcp,9005/udp",
    ]);
    let before = daemon.stats();
    assert!(reaches(true, 9001), "IPv6 to 9001/tcp after `add --ports`");
    assert!(!reaches(true, 9002), "IPv6 to 9002/tcp after `add --ports`");
    let delta = daemon.stats().since(&before);
    assert!(
        counter(&delta, "dropped_port_not_allowed") >= 1,
        "the IPv6 SYN to 9002: {delta:?}"
    );
    let v6 = BLOCKED_LINK.client_v6.to_string();
    let text = check(&v6, "9001/tcp");
    assert!(text.contains("PASS"), "{text}");
    let text = check(&v6, "9002/tcp");
    assert!(text.contains("DROP"), "{text}");
    // Protocol matters: 9001/udp is not 9001/tcp.
    let text = check(&v6, "9001/udp");
    assert!(text.contains("DROP"), "{text}");
    assert_eq!(other.accepted_count(), 0, "nothing may have reached 9002");

    // A port-scoped /32 inside an allow-all /24 does not narrow the /24.
    daemon.ctl_ok(&["add", "10.10.2.0/24", "-d", "blocked subnet"]);
    assert!(reaches(false, 9002), "9002 through the allow-all /24");
    assert!(reaches(false, 9001), "9001 through either entry");
    let text = check("10.10.2.2", "9002/tcp");
    assert!(text.contains("PASS"), "{text}");
    assert_eq!(other.accepted_from(), vec![BLOCKED_LINK.client_ip(false)]);
}

#[test]
fn public_ports_are_reachable_from_any_source_and_no_others() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client(&topology).public_ports(&["8443/tcp"]);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let public = TcpServer::start(topology.host(), any_port(8443)).unwrap();
    let private = TcpServer::start(topology.host(), any_port(8444)).unwrap();
    let before = daemon.stats();
    for v6 in [false, true] {
        let host = BLOCKED_LINK.host_ip(v6);
        assert!(
            tcp_connects(
                topology.blocked(),
                SocketAddr::new(host, 8443),
                ARRIVAL_TIMEOUT
            ),
            "{}: unlisted client to public 8443/tcp",
            family(v6)
        );
        assert!(
            !tcp_connects(
                topology.blocked(),
                SocketAddr::new(host, 8444),
                BLOCKED_CONNECT_TIMEOUT
            ),
            "{}: unlisted client to non-public 8444/tcp",
            family(v6)
        );
    }
    assert_eq!(public.accepted_count(), 2);
    assert_eq!(private.accepted_count(), 0);
    let delta = daemon.stats().since(&before);
    assert!(
        counter(&delta, "passed_public_port") >= 2 * 3,
        "SYN, ACK, data per connection: {delta:?}"
    );
    assert!(
        counter(&delta, "dropped_not_listed") >= 2,
        "SYNs to 8444: {delta:?}"
    );
    let text = daemon.check(&["10.10.2.2", "--port", "8443/tcp"]);
    assert!(text.contains("PASS"), "{text}");
    let text = daemon.check(&["10.10.2.2", "--port", "8444/tcp"]);
    assert!(text.contains("DROP"), "{text}");

    // DHCP replies to the host's client (server port 67 to client port 68) pass from
    // anyone by default; the same port from another source port does not.
    let dhcp = UdpSink::start(topology.host(), "0.0.0.0:68".parse().unwrap()).unwrap();
    let blocked = BLOCKED_LINK.client_ip(false);
    let before = daemon.stats();
    for (source_port, expected) in [(67u16, true), (69, false)] {
        let arrived = dhcp.count_from(blocked);
        in_netns(topology.blocked(), || {
            let socket = UdpSocket::bind(SocketAddr::new(blocked, source_port)).unwrap();
            socket
                .send_to(&[0u8; 16], SocketAddr::new(BLOCKED_LINK.host_ip(false), 68))
                .unwrap();
        });
        let got = dhcp.wait_for(blocked, arrived + 1, Duration::from_millis(500));
        assert_eq!(
            got, expected,
            "UDP {source_port} -> 68 from the unlisted client"
        );
    }
    let delta = daemon.stats().since(&before);
    assert!(counter(&delta, "passed_exempt") >= 1, "{delta:?}");
}

/// See the module docs for the policy. The kernel fragments the 3000-byte datagrams
/// itself (veth MTU 1500): three fragments each, over IPv4 and IPv6.
#[test]
fn fragmented_datagrams_pass_whole_to_public_ports_and_from_allow_all_sources_only() {
    const PUBLIC_UDP: u16 = 9301;
    const PRIVATE_UDP: u16 = 9302;
    const DATAGRAMS: u64 = 5;
    const PAYLOAD: usize = 3000;
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client(&topology).public_ports(&["9301/udp"]);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let public = UdpSink::start(topology.host(), any_port(PUBLIC_UDP)).unwrap();
    let private = UdpSink::start(topology.host(), any_port(PRIVATE_UDP)).unwrap();

    for v6 in [false, true] {
        let name = family(v6);
        let blocked = BLOCKED_LINK.client_ip(v6);
        let allowed = ALLOWED_LINK.client_ip(v6);
        let before = daemon.stats();
        for port in [PUBLIC_UDP, PRIVATE_UDP] {
            udp_send(
                topology.blocked(),
                None,
                SocketAddr::new(BLOCKED_LINK.host_ip(v6), port),
                DATAGRAMS,
                PAYLOAD,
            )
            .unwrap();
        }
        udp_send(
            topology.allowed(),
            None,
            SocketAddr::new(ALLOWED_LINK.host_ip(v6), PRIVATE_UDP),
            DATAGRAMS,
            PAYLOAD,
        )
        .unwrap();
        assert!(
            public.wait_for(blocked, DATAGRAMS, ARRIVAL_TIMEOUT),
            "{name}: fragmented datagrams from the unlisted client to the public port: {:?}",
            public.record_from(blocked).datagrams
        );
        assert!(
            private.wait_for(allowed, DATAGRAMS, ARRIVAL_TIMEOUT),
            "{name}: fragmented datagrams from the listed client: {:?}",
            private.record_from(allowed).datagrams
        );
        thread::sleep(SETTLE);
        let record = public.record_from(blocked);
        assert!(record.is_complete_run(DATAGRAMS), "{name}: {record:?}");
        assert_eq!(record.bytes, DATAGRAMS * PAYLOAD as u64, "{name}");
        assert_eq!(
            private.record_from(allowed).bytes,
            DATAGRAMS * PAYLOAD as u64
        );
        assert_eq!(
            private.count_from(blocked),
            0,
            "{name}: fragmented datagrams from the unlisted client to a non-public port"
        );
        let delta = daemon.stats().since(&before);
        // Each datagram is a first fragment (passed_public_port) and two later ones.
        assert!(
            counter(&delta, "passed_fragment") >= 2 * DATAGRAMS,
            "{name}: later fragments to the public port: {delta:?}"
        );
        assert!(
            counter(&delta, "passed_public_port") >= DATAGRAMS,
            "{name}: first fragments to the public port: {delta:?}"
        );
        assert!(
            counter(&delta, "dropped_not_listed") >= 3 * DATAGRAMS,
            "{name}: all fragments to the non-public port: {delta:?}"
        );
    }
}

const HOP_BY_HOP: u8 = frames::IPPROTO_HOP_BY_HOP;
const DESTINATION_OPTIONS: u8 = frames::IPPROTO_DESTINATION_OPTIONS;
const UDP: u8 = frames::IPPROTO_UDP;

/// An Ethernet frame (`macs`: source, destination) with an IPv6/UDP datagram from `src`
/// to `dst`, with the given extension headers (each 8 bytes of PadN) before the UDP
/// header. The UDP checksum is filled in: the host's stack delivers these datagrams.
fn ipv6_udp_frame(
    macs: (Mac, Mac),
    (src, dst): (Ipv6Addr, Ipv6Addr),
    extensions: &[u8],
    dst_port: u16,
    sequence: u64,
) -> Vec<u8> {
    let mut payload = vec![0x5a; 32];
    payload[..8].copy_from_slice(&sequence.to_be_bytes());
    let mut udp = frames::udp(40000, dst_port, &payload);
    let checksum = frames::ipv6_udp_checksum(src, dst, &udp);
    udp[6..8].copy_from_slice(&checksum.to_be_bytes());

    let mut chain = Vec::new();
    for (index, _) in extensions.iter().enumerate() {
        let next = extensions.get(index + 1).copied().unwrap_or(UDP);
        // Next header, length 0 (8 bytes), PadN of 4 bytes.
        chain.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    }
    chain.extend_from_slice(&udp);
    let first = extensions.first().copied().unwrap_or(UDP);
    let packet = Ipv6Header::new(src, dst, first).packet(&chain);
    frames::ethernet(macs.1, macs.0, &[], frames::ETH_P_IPV6, &packet)
}

#[test]
fn ipv6_extension_headers_are_walked_to_find_public_ports() {
    const PUBLIC_UDP: u16 = 9401;
    const PRIVATE_UDP: u16 = 9402;
    const FRAMES: u64 = 5;
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client(&topology).public_ports(&["9401/udp"]);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let public = UdpSink::start(topology.host(), any_port(PUBLIC_UDP)).unwrap();
    let private = UdpSink::start(topology.host(), any_port(PRIVATE_UDP)).unwrap();
    let macs = (
        parse_mac(&topology.blocked().mac(BLOCKED_LINK.client_dev).unwrap()).unwrap(),
        parse_mac(&topology.host().mac(BLOCKED_LINK.host_dev).unwrap()).unwrap(),
    );
    let addresses = (BLOCKED_LINK.client_v6, BLOCKED_LINK.host_v6);
    let source = IpAddr::V6(BLOCKED_LINK.client_v6);
    let send = |extensions: &[u8], port: u16, first_sequence: u64| {
        let frames: Vec<Vec<u8>> = (first_sequence..first_sequence + FRAMES)
            .map(|sequence| ipv6_udp_frame(macs, addresses, extensions, port, sequence))
            .collect();
        send_raw_frames(topology.blocked(), BLOCKED_LINK.client_dev, macs.1, &frames).unwrap();
    };

    let cases: [(&str, &[u8]); 3] = [
        ("hop-by-hop", &[HOP_BY_HOP]),
        ("destination options", &[DESTINATION_OPTIONS]),
        (
            "hop-by-hop + 3 destination options",
            &[
                HOP_BY_HOP,
                DESTINATION_OPTIONS,
                DESTINATION_OPTIONS,
                DESTINATION_OPTIONS,
            ],
        ),
    ];
    for (index, (name, extensions)) in cases.iter().enumerate() {
        let first = index as u64 * FRAMES;
        let before = daemon.stats();
        send(extensions, PUBLIC_UDP, first);
        send(extensions, PRIVATE_UDP, first);
        assert!(
            public.wait_for(source, first + FRAMES, ARRIVAL_TIMEOUT),
            "{name}: to the public port, {} of {} arrived",
            public.count_from(source),
            first + FRAMES
        );
        thread::sleep(SETTLE);
        assert_eq!(
            private.count_from(source),
            0,
            "{name}: to a non-public port"
        );
        let delta = daemon.stats().since(&before);
        assert!(
            counter(&delta, "passed_public_port") >= FRAMES,
            "{name}: {delta:?}"
        );
        assert!(
            counter(&delta, "dropped_not_listed") >= FRAMES,
            "{name}: {delta:?}"
        );
    }

    // Five headers deep: past the walk, no ports, so even the public port is closed to
    // a source without an allow-all entry.
    let before = daemon.stats();
    let deep = [
        HOP_BY_HOP,
        DESTINATION_OPTIONS,
        DESTINATION_OPTIONS,
        DESTINATION_OPTIONS,
        DESTINATION_OPTIONS,
    ];
    let received = public.count_from(source);
    send(&deep, PUBLIC_UDP, 1000);
    thread::sleep(SETTLE);
    assert_eq!(
        public.count_from(source),
        received,
        "five extension headers deep"
    );
    let delta = daemon.stats().since(&before);
    assert!(
        counter(&delta, "dropped_not_listed") >= FRAMES,
        "five extension headers deep: {delta:?}"
    );
}

/// Exchanges a line with a [`TcpServer`] (greeting already read) every few
/// milliseconds until stopped; returns (round trips, first failure).
fn keep_talking(mut stream: TcpStream, stop: Arc<AtomicBool>) -> (u64, Option<String>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut round_trips = 0;
    while !stop.load(Ordering::Relaxed) {
        let line = format!("{round_trips:015}\n");
        if let Err(error) = stream.write_all(line.as_bytes()) {
            return (round_trips, Some(format!("write: {error}")));
        }
        let mut echoed = [0u8; 16];
        if let Err(error) = stream.read_exact(&mut echoed) {
            return (round_trips, Some(format!("read: {error}")));
        }
        if echoed != line.as_bytes() {
            return (round_trips, Some(format!("echo mismatch: {echoed:?}")));
        }
        round_trips += 1;
        thread::sleep(Duration::from_millis(5));
    }
    (round_trips, None)
}

#[test]
fn an_established_connection_survives_a_flood_of_new_flows() {
    const PORTS_PER_SOCKET: u16 = 40_000;
    const FLOOD_SOCKETS: usize = 3;
    const FLOOD_BASE_PORT: u16 = 10_000;
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client(&topology)).unwrap();
    let _server = TcpServer::start(topology.blocked(), any_port(9500)).unwrap();
    let remote = BLOCKED_LINK.client_ip(false);

    let mut stream = in_netns(topology.host(), || {
        TcpStream::connect_timeout(&SocketAddr::new(remote, 9500), ARRIVAL_TIMEOUT)
    })
    .expect("host connects to the unlisted client");
    let mut greeting = vec![0u8; TcpServer::GREETING.len()];
    stream.set_read_timeout(Some(ARRIVAL_TIMEOUT)).unwrap();
    stream.read_exact(&mut greeting).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let talker = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || keep_talking(stream, stop))
    };

    // 120,000 new UDP flows (three source ports × 40,000 destination ports) against a
    // table of 65,536. The connection above keeps sending meanwhile, which keeps its
    // flow recent.
    let before = daemon.stats();
    let flood = Instant::now();
    let (sent, sockets) = in_netns(topology.host(), || {
        let mut sent = 0u64;
        let mut sockets = Vec::new();
        for _ in 0..FLOOD_SOCKETS {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            for port in 1..=PORTS_PER_SOCKET {
                // ENOBUFS under pressure is not a failure of the filter; retry once.
                let target = SocketAddr::new(remote, FLOOD_BASE_PORT + port);
                if socket.send_to(b"flood", target).is_ok()
                    || socket.send_to(b"flood", target).is_ok()
                {
                    sent += 1;
                }
            }
            sockets.push(socket);
        }
        (sent, sockets)
    });
    eprintln!("flood: {sent} datagrams in {:?}", flood.elapsed());
    assert!(
        sent > 65_536,
        "the flood must exceed the flow table: {sent}"
    );

    // Evidence that the table did overflow: the oldest flood flow (never answered) was
    // evicted, so a "reply" to it is dropped, while the newest still admits one.
    let reply_arrives = |socket: &UdpSocket, remote_port: u16| {
        let local_port = socket.local_addr().unwrap().port();
        in_netns(topology.blocked(), || {
            let replier = UdpSocket::bind(SocketAddr::new(remote, remote_port)).unwrap();
            replier
                .send_to(
                    b"reply",
                    SocketAddr::new(BLOCKED_LINK.host_ip(false), local_port),
                )
                .unwrap();
        });
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buffer = [0u8; 16];
        socket.recv_from(&mut buffer).is_ok()
    };
    assert!(
        !reply_arrives(&sockets[0], FLOOD_BASE_PORT + 1),
        "the oldest flood flow is still tracked: the table never overflowed"
    );
    assert!(
        reply_arrives(
            &sockets[FLOOD_SOCKETS - 1],
            FLOOD_BASE_PORT + PORTS_PER_SOCKET
        ),
        "the newest flood flow is not tracked: the flood never reached the flow table"
    );

    // Keep talking a while after the flood too.
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (round_trips, failure) = talker.join().unwrap();
    eprintln!("{round_trips} round trips during and after the flood");
    assert_eq!(
        failure, None,
        "the established connection broke after {round_trips} round trips"
    );
    assert!(round_trips > 50, "too few round trips: {round_trips}");
    // And new host-initiated connections still work.
    assert!(tcp_connects(
        topology.host(),
        SocketAddr::new(remote, 9500),
        ARRIVAL_TIMEOUT
    ));
    let delta = daemon.stats().since(&before);
    assert!(
        counter(&delta, "passed_return_traffic") >= round_trips,
        "{delta:?}"
    );
}

#[test]
fn connections_the_host_opened_before_the_daemon_started_keep_working() {
    let topology = Topology::new().unwrap();
    let _server = TcpServer::start(topology.blocked(), any_port(9600)).unwrap();
    // Opened before the daemon (and its flow tracker) exist: only the seeding from
    // /proc/net/{tcp,udp} can make their replies return traffic.
    let mut streams = Vec::new();
    for v6 in [false, true] {
        let remote = SocketAddr::new(BLOCKED_LINK.client_ip(v6), 9600);
        let mut stream = in_netns(topology.host(), || {
            TcpStream::connect_timeout(&remote, ARRIVAL_TIMEOUT)
        })
        .unwrap();
        stream.set_read_timeout(Some(ARRIVAL_TIMEOUT)).unwrap();
        let mut greeting = vec![0u8; TcpServer::GREETING.len()];
        stream.read_exact(&mut greeting).unwrap();
        streams.push((v6, stream));
    }
    let remote_udp = SocketAddr::new(BLOCKED_LINK.client_ip(false), 9601);
    let connected_udp = in_netns(topology.host(), || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.connect(remote_udp).unwrap();
        socket
    });

    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client(&topology)).unwrap();
    let before = daemon.stats();
    for (v6, stream) in &mut streams {
        stream.write_all(b"after start\n").unwrap();
        let mut echoed = [0u8; 12];
        stream.read_exact(&mut echoed).unwrap_or_else(|error| {
            panic!(
                "{}: the pre-existing connection lost its replies: {error}",
                family(*v6)
            )
        });
        assert_eq!(&echoed, b"after start\n");
    }
    // The remote speaks first on the connected UDP socket: the host sends nothing after
    // the daemon started, so only a seeded flow admits it.
    let local_port = connected_udp.local_addr().unwrap().port();
    in_netns(topology.blocked(), || {
        let replier = UdpSocket::bind(remote_udp).unwrap();
        replier
            .send_to(
                b"unsolicited?",
                SocketAddr::new(BLOCKED_LINK.host_ip(false), local_port),
            )
            .unwrap();
    });
    connected_udp
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buffer = [0u8; 32];
    assert!(
        connected_udp.recv(&mut buffer).is_ok(),
        "a datagram on the host's pre-existing connected UDP socket was dropped"
    );
    let delta = daemon.stats().since(&before);
    assert!(counter(&delta, "passed_return_traffic") >= 3, "{delta:?}");
    // A fresh connection from the unlisted client is still refused.
    let host_server = TcpServer::start(topology.host(), any_port(9602)).unwrap();
    assert!(!tcp_connects(
        topology.blocked(),
        SocketAddr::new(BLOCKED_LINK.host_ip(false), 9602),
        BLOCKED_CONNECT_TIMEOUT
    ));
    assert_eq!(host_server.accepted_count(), 0);
}
