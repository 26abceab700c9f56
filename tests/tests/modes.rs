//! Monitor and off modes pass everything; monitor counts what enforce would drop, off
//! counts everything as passed_off. Switching modes is a reload away.

use std::net::SocketAddr;
use std::time::Duration;

use allowlist_tests::{
    ping, tcp_connects, udp_ipv4_frame_len, udp_send, ConfigBuilder, Counter, Daemon, Mode, Stats,
    TcpServer, Topology, UdpSink, ALLOWED_LINK, BLOCKED_LINK,
};

const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;
const SETTLE: Duration = Duration::from_millis(300);
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(3);

/// A topology without IPv6 and without ARP refreshes, so the host receives nothing but
/// what a test sends and counters can be compared exactly.
fn quiet_topology() -> Topology {
    let topology = Topology::new().unwrap();
    topology.disable_ipv6().unwrap();
    topology.pin_client_neighbours().unwrap();
    topology
}

fn any_v4(port: u16) -> SocketAddr {
    SocketAddr::new("0.0.0.0".parse().unwrap(), port)
}

/// Sends `count` datagrams of `payload_len` bytes from each client and waits until the
/// sink has them all (both clients must get through in monitor and off modes).
fn send_from_both_clients(topology: &Topology, sink: &UdpSink, count: u64, payload_len: usize) {
    for (client, link) in [
        (topology.allowed(), ALLOWED_LINK),
        (topology.blocked(), BLOCKED_LINK),
    ] {
        let source = link.client_v4.into();
        let already = sink.count_from(source);
        udp_send(
            client,
            None,
            SocketAddr::new(link.host_v4.into(), UDP_PORT),
            count,
            payload_len,
        )
        .unwrap();
        assert!(
            sink.wait_for(source, already + count, ARRIVAL_TIMEOUT),
            "datagrams from {source} did not all arrive: {:?}",
            sink.record_from(source)
        );
    }
}

fn assert_only_these_counted(counted: &Stats, expected: &[(&str, Counter)]) {
    for (reason, counter) in counted.reasons() {
        let wanted = expected
            .iter()
            .find(|(expected_reason, _)| *expected_reason == reason)
            .map_or(Counter::default(), |(_, counter)| *counter);
        assert_eq!(counter, wanted, "{reason} in {counted:?}");
    }
}

fn frames(count: u64, payload_len: usize) -> Counter {
    Counter {
        packets: count,
        bytes: count * udp_ipv4_frame_len(payload_len),
    }
}

#[test]
fn monitor_passes_everything_and_counts_would_be_drops() {
    let topology = quiet_topology();
    let config = ConfigBuilder::allowed_client_v4(&topology).mode(Mode::Monitor);
    let daemon = Daemon::start(&topology, &config).unwrap();
    assert_eq!(daemon.status()["mode"], "monitor");
    let server = TcpServer::start(topology.host(), any_v4(TCP_PORT)).unwrap();
    let sink = UdpSink::start(topology.host(), any_v4(UDP_PORT)).unwrap();

    let blocked_host = BLOCKED_LINK.host_v4.into();
    assert_eq!(
        ping(topology.blocked(), blocked_host, 3).unwrap(),
        3,
        "ping from unlisted client"
    );
    assert!(tcp_connects(
        topology.blocked(),
        SocketAddr::new(blocked_host, TCP_PORT),
        ARRIVAL_TIMEOUT
    ));
    assert_eq!(server.accepted_from(), vec![BLOCKED_LINK.client_ip(false)]);
    std::thread::sleep(SETTLE); // let the connection's teardown pass before counting

    let before = daemon.stats();
    send_from_both_clients(&topology, &sink, 40, 100);
    std::thread::sleep(SETTLE);
    let counted = daemon.stats().since(&before);
    assert_only_these_counted(
        &counted,
        &[
            ("passed_listed", frames(40, 100)),
            ("monitor_would_drop", frames(40, 100)),
        ],
    );
}

#[test]
fn off_passes_everything_and_counts_it_as_passed_off() {
    let topology = quiet_topology();
    let config = ConfigBuilder::allowed_client_v4(&topology).mode(Mode::Off);
    let daemon = Daemon::start(&topology, &config).unwrap();
    assert_eq!(daemon.status()["mode"], "off");
    let server = TcpServer::start(topology.host(), any_v4(TCP_PORT)).unwrap();
    let sink = UdpSink::start(topology.host(), any_v4(UDP_PORT)).unwrap();

    let blocked_host = BLOCKED_LINK.host_v4.into();
    assert_eq!(
        ping(topology.blocked(), blocked_host, 3).unwrap(),
        3,
        "ping from unlisted client"
    );
    assert!(tcp_connects(
        topology.blocked(),
        SocketAddr::new(blocked_host, TCP_PORT),
        ARRIVAL_TIMEOUT
    ));
    assert_eq!(server.accepted_count(), 1);
    std::thread::sleep(SETTLE);

    let before = daemon.stats();
    send_from_both_clients(&topology, &sink, 30, 120);
    std::thread::sleep(SETTLE);
    let counted = daemon.stats().since(&before);
    assert_only_these_counted(&counted, &[("passed_off", frames(60, 120))]);
}

#[test]
fn reload_switches_monitor_to_enforce_and_back_at_once() {
    let topology = quiet_topology();
    let monitor = ConfigBuilder::allowed_client_v4(&topology).mode(Mode::Monitor);
    let daemon = Daemon::start(&topology, &monitor).unwrap();
    let sink = UdpSink::start(topology.host(), any_v4(UDP_PORT)).unwrap();
    let blocked_source = BLOCKED_LINK.client_v4.into();
    let to_host = SocketAddr::new(BLOCKED_LINK.host_v4.into(), UDP_PORT);

    udp_send(topology.blocked(), None, to_host, 10, 64).unwrap();
    assert!(
        sink.wait_for(blocked_source, 10, ARRIVAL_TIMEOUT),
        "monitor must pass the unlisted client"
    );

    // reload is synchronous: the very next packet is judged by the new mode.
    daemon.apply(&ConfigBuilder::allowed_client_v4(&topology));
    assert_eq!(daemon.status()["mode"], "enforce");
    udp_send(topology.blocked(), None, to_host, 10, 64).unwrap();
    std::thread::sleep(SETTLE);
    assert_eq!(
        sink.count_from(blocked_source),
        10,
        "enforce must drop the unlisted client"
    );

    daemon.apply(&monitor);
    assert_eq!(daemon.status()["mode"], "monitor");
    udp_send(topology.blocked(), None, to_host, 10, 64).unwrap();
    assert!(
        sink.wait_for(blocked_source, 20, ARRIVAL_TIMEOUT),
        "back in monitor, it passes again"
    );
}
