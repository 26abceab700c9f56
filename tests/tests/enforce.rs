//! Enforce mode: listed sources get through, everything else from IP is dropped, and
//! the link-level machinery (ARP, IPv6 neighbour discovery) keeps working regardless.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use allowlist_tests::{
    neighbour_resolved, ping, tcp_connects, udp_send, ConfigBuilder, Counter, Daemon, TcpServer,
    Topology, UdpSink, VlanTag, XdpMode, ALLOWED_LINK, BLOCKED_LINK, VLAN_LINK,
};

const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;
const VLAN_PORT: u16 = 7003;
/// Long enough for a passed packet to arrive; what has not arrived by then was dropped.
const SETTLE: Duration = Duration::from_millis(300);
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(3);
/// A dropped SYN looks like a connect timeout; listed clients connect in microseconds.
const BLOCKED_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The allowed client by /32 and /128 plus the listed VLAN address; the blocked client
/// and the second VLAN address are on no list.
fn allowed_client_only(topology: &Topology) -> ConfigBuilder {
    ConfigBuilder::allowed_client(topology).allow(
        format!("{}/32", VLAN_LINK.listed_client_v4),
        "allowed client on VLAN 100",
    )
}

fn any_port(port: u16) -> SocketAddr {
    SocketAddr::new("::".parse().unwrap(), port)
}

#[test]
fn enforce_passes_listed_and_drops_unlisted_tcp_udp_icmp_v4_v6() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &allowed_client_only(&topology)).unwrap();
    for dev in topology.guarded_interfaces() {
        assert!(
            topology.host().xdp_attached(dev).unwrap(),
            "no XDP program on {dev}"
        );
    }
    let status = daemon.status();
    assert_eq!(status["mode"], "enforce", "{status}");
    assert_eq!(status["entries"]["ipv4"], 2, "{status}");
    assert_eq!(status["entries"]["ipv6"], 1, "{status}");

    let server = TcpServer::start(topology.host(), any_port(TCP_PORT)).unwrap();
    let sink = UdpSink::start(topology.host(), any_port(UDP_PORT)).unwrap();
    for v6 in [false, true] {
        let family = if v6 { "IPv6" } else { "IPv4" };
        let (allowed_host, blocked_host) = (ALLOWED_LINK.host_ip(v6), BLOCKED_LINK.host_ip(v6));
        let (allowed_source, blocked_source) =
            (ALLOWED_LINK.client_ip(v6), BLOCKED_LINK.client_ip(v6));

        assert_eq!(
            ping(topology.allowed(), allowed_host, 3).unwrap(),
            3,
            "{family} ping from listed client"
        );
        assert_eq!(
            ping(topology.blocked(), blocked_host, 3).unwrap(),
            0,
            "{family} ping from unlisted client"
        );

        assert!(
            tcp_connects(
                topology.allowed(),
                SocketAddr::new(allowed_host, TCP_PORT),
                ARRIVAL_TIMEOUT
            ),
            "{family} TCP from listed client"
        );
        assert!(
            !tcp_connects(
                topology.blocked(),
                SocketAddr::new(blocked_host, TCP_PORT),
                BLOCKED_CONNECT_TIMEOUT
            ),
            "{family} TCP from unlisted client"
        );

        udp_send(
            topology.blocked(),
            None,
            SocketAddr::new(blocked_host, UDP_PORT),
            20,
            100,
        )
        .unwrap();
        udp_send(
            topology.allowed(),
            None,
            SocketAddr::new(allowed_host, UDP_PORT),
            20,
            100,
        )
        .unwrap();
        assert!(
            sink.wait_for(allowed_source, 20, ARRIVAL_TIMEOUT),
            "{family} UDP from listed client: {:?}",
            sink.record_from(allowed_source)
        );
        std::thread::sleep(SETTLE);
        assert_eq!(
            sink.count_from(allowed_source),
            20,
            "{family} UDP from listed client"
        );
        assert_eq!(
            sink.count_from(blocked_source),
            0,
            "{family} UDP from unlisted client"
        );
    }
    assert_eq!(
        server.accepted_from(),
        vec![ALLOWED_LINK.client_ip(false), ALLOWED_LINK.client_ip(true)],
        "only the listed client's connections may be accepted"
    );

    // 2 × (3 echo requests + 20 datagrams + at least one SYN) from the unlisted client.
    let stats = daemon.stats();
    assert!(
        stats.get("dropped_not_listed").packets >= 2 * (3 + 20 + 1),
        "{stats:?}"
    );
    assert!(
        stats.get("passed_listed").packets >= 2 * (3 + 20 + 3),
        "{stats:?}"
    );
}

#[test]
fn enforce_lets_arp_and_neighbour_discovery_through_for_unlisted_sources() {
    let topology = Topology::new().unwrap();
    // Without return traffic, the echo replies to the host's own pings are dropped,
    // which isolates what this test is about: link-layer resolution still works.
    let config = allowed_client_only(&topology).return_traffic(false);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let before = daemon.stats();

    for v6 in [false, true] {
        let blocked_client = BLOCKED_LINK.client_ip(v6);
        assert!(
            !neighbour_resolved(topology.host(), BLOCKED_LINK.host_dev, blocked_client).unwrap(),
            "a fresh host must not know {blocked_client} yet"
        );
        // The host's echo requests go out; the client's replies are IP from an unlisted
        // source and must be dropped. But to send the requests at all the host needs the
        // client's link-layer address: the ARP reply / neighbour advertisement must pass.
        assert_eq!(
            ping(topology.host(), blocked_client, 2).unwrap(),
            0,
            "echo replies from {blocked_client}"
        );
        assert!(
            neighbour_resolved(topology.host(), BLOCKED_LINK.host_dev, blocked_client).unwrap(),
            "the host could not resolve {blocked_client}: {}",
            topology
                .host()
                .ip(&["neigh", "show", "dev", BLOCKED_LINK.host_dev])
                .unwrap()
        );
    }

    let counted = daemon.stats().since(&before);
    assert!(
        counted.get("passed_non_ip").packets >= 1,
        "ARP reply not counted: {counted:?}"
    );
    assert!(
        counted.get("passed_exempt").packets >= 1,
        "neighbour advertisement not counted: {counted:?}"
    );
    assert!(
        counted.get("dropped_not_listed").packets >= 4,
        "echo replies not dropped: {counted:?}"
    );
}

#[test]
fn enforce_judges_vlan_tagged_frames_by_their_inner_source() {
    let topology = Topology::new().unwrap();
    // IPv6 chatter on the carrier veth would blur the exact counts below.
    topology.disable_ipv6().unwrap();
    let daemon = Daemon::start(&topology, &allowed_client_only(&topology)).unwrap();
    let tap = topology.vlan_tap(VLAN_PORT).unwrap();
    let before = daemon.stats();

    let dot1q = vec![VlanTag::dot1q(VLAN_LINK.vlan_id)];
    let qinq = vec![VlanTag::dot1ad(7), VlanTag::dot1q(VLAN_LINK.vlan_id)];
    let payload_len = 100;
    let mut passed = Counter::default();
    let mut dropped = Counter::default();
    for tags in [dot1q, qinq] {
        let listed = topology
            .vlan_frame(
                VLAN_LINK.listed_client_v4,
                tags.clone(),
                VLAN_PORT,
                payload_len,
            )
            .unwrap();
        let unlisted = topology
            .vlan_frame(VLAN_LINK.unlisted_client_v4, tags, VLAN_PORT, payload_len)
            .unwrap();
        let tap_before_listed = tap.count_from(listed.src.into());
        topology.send_vlan_frames(&unlisted, 15).unwrap();
        topology.send_vlan_frames(&listed, 25).unwrap();
        passed.packets += 25;
        passed.bytes += 25 * listed.frame_len() as u64;
        dropped.packets += 15;
        dropped.bytes += 15 * unlisted.frame_len() as u64;

        let expected = tap_before_listed + 25;
        assert!(
            tap.wait_for(listed.src.into(), expected, ARRIVAL_TIMEOUT),
            "listed VLAN source {} with {} tag(s): {:?}",
            listed.src,
            listed.tags.len(),
            tap.record_from(listed.src.into())
        );
        std::thread::sleep(SETTLE);
        assert_eq!(
            tap.count_from(IpAddr::from(VLAN_LINK.unlisted_client_v4)),
            0,
            "unlisted VLAN source got through"
        );
    }

    // The byte counts prove the program saw the tags in the frames (4 bytes each).
    let counted = daemon.stats().since(&before);
    assert_eq!(counted.get("passed_listed"), passed, "{counted:?}");
    assert_eq!(counted.get("dropped_not_listed"), dropped, "{counted:?}");
}

#[test]
fn enforce_works_the_same_with_generic_xdp() {
    let topology = Topology::new().unwrap();
    let config = allowed_client_only(&topology).xdp_mode(XdpMode::Generic);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let status = daemon.status();
    let modes: Vec<&str> = status["interfaces"]
        .as_array()
        .unwrap_or_else(|| panic!("no interfaces in {status}"))
        .iter()
        .map(|interface| interface["xdp_mode"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(modes, ["generic", "generic"], "{status}");

    let sink = UdpSink::start(topology.host(), any_port(UDP_PORT)).unwrap();
    for v6 in [false, true] {
        let allowed_source = ALLOWED_LINK.client_ip(v6);
        udp_send(
            topology.blocked(),
            None,
            SocketAddr::new(BLOCKED_LINK.host_ip(v6), UDP_PORT),
            10,
            100,
        )
        .unwrap();
        udp_send(
            topology.allowed(),
            None,
            SocketAddr::new(ALLOWED_LINK.host_ip(v6), UDP_PORT),
            10,
            100,
        )
        .unwrap();
        assert!(
            sink.wait_for(allowed_source, 10, ARRIVAL_TIMEOUT),
            "from {allowed_source}"
        );
    }
    let tap = topology.vlan_tap(VLAN_PORT).unwrap();
    let tags = vec![VlanTag::dot1q(VLAN_LINK.vlan_id)];
    let listed = topology
        .vlan_frame(VLAN_LINK.listed_client_v4, tags.clone(), VLAN_PORT, 64)
        .unwrap();
    let unlisted = topology
        .vlan_frame(VLAN_LINK.unlisted_client_v4, tags, VLAN_PORT, 64)
        .unwrap();
    topology.send_vlan_frames(&unlisted, 10).unwrap();
    topology.send_vlan_frames(&listed, 10).unwrap();
    assert!(
        tap.wait_for(listed.src.into(), 10, ARRIVAL_TIMEOUT),
        "listed VLAN source"
    );
    std::thread::sleep(SETTLE);
    assert_eq!(
        tap.count_from(unlisted.src.into()),
        0,
        "unlisted VLAN source got through"
    );
    for v6 in [false, true] {
        assert_eq!(
            sink.count_from(BLOCKED_LINK.client_ip(v6)),
            0,
            "unlisted client got through"
        );
    }
}
