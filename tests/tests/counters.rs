//! The counters report exactly the traffic the filter judged: one count per packet,
//! under exactly one reason, with the bytes of the whole Ethernet frame.

use std::net::SocketAddr;
use std::time::Duration;

use allowlist_tests::{
    udp_ipv4_frame_len, udp_send, ConfigBuilder, Counter, Daemon, Topology, UdpSink, ALLOWED_LINK,
    BLOCKED_LINK,
};

const UDP_PORT: u16 = 7001;
const SETTLE: Duration = Duration::from_millis(300);

#[test]
fn counters_match_udp_traffic_exactly_in_packets_and_bytes() {
    let topology = Topology::new().unwrap();
    // Nothing but the test's datagrams may reach the host: no IPv6 autoconfiguration or
    // MLD, no ARP refreshes.
    topology.disable_ipv6().unwrap();
    topology.pin_client_neighbours().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let sink = UdpSink::start(
        topology.host(),
        SocketAddr::new("0.0.0.0".parse().unwrap(), UDP_PORT),
    )
    .unwrap();

    // Different counts and sizes per client, so swapped or mixed-up counters show.
    let (allowed_count, allowed_payload) = (37, 200);
    let (blocked_count, blocked_payload) = (23, 333);
    let before = daemon.stats();
    let to_allowed_host = SocketAddr::new(ALLOWED_LINK.host_v4.into(), UDP_PORT);
    let to_blocked_host = SocketAddr::new(BLOCKED_LINK.host_v4.into(), UDP_PORT);
    udp_send(
        topology.blocked(),
        None,
        to_blocked_host,
        blocked_count,
        blocked_payload,
    )
    .unwrap();
    udp_send(
        topology.allowed(),
        None,
        to_allowed_host,
        allowed_count,
        allowed_payload,
    )
    .unwrap();
    let allowed_source = ALLOWED_LINK.client_v4.into();
    assert!(sink.wait_for(allowed_source, allowed_count, Duration::from_secs(3)));
    std::thread::sleep(SETTLE);
    let counted = daemon.stats().since(&before);

    assert_eq!(sink.count_from(BLOCKED_LINK.client_v4.into()), 0);
    assert_eq!(
        counted.get("passed_listed"),
        Counter {
            packets: allowed_count,
            bytes: allowed_count * udp_ipv4_frame_len(allowed_payload)
        },
        "{counted:?}"
    );
    assert_eq!(
        counted.get("dropped_not_listed"),
        Counter {
            packets: blocked_count,
            bytes: blocked_count * udp_ipv4_frame_len(blocked_payload)
        },
        "{counted:?}"
    );
    for (reason, counter) in counted.reasons() {
        if !matches!(reason, "passed_listed" | "dropped_not_listed") {
            assert_eq!(
                counter,
                Counter::default(),
                "nothing else was sent, yet {reason} moved: {counted:?}"
            );
        }
    }
}
