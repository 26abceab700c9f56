//! The harness itself, without any daemon: if these fail, every other end-to-end
//! failure is suspect.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use allowlist_tests::traffic::SourceRecord;
use allowlist_tests::{
    in_netns, neighbour_resolved, ping, tcp_connects, udp_send, Netns, TcpServer, Topology,
    UdpSink, VlanTag, ALLOWED_LINK, BLOCKED_LINK, VLAN_LINK,
};

const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;
const VLAN_PORT: u16 = 7003;
const TIMEOUT: Duration = Duration::from_secs(3);

#[test]
fn topology_carries_tcp_udp_icmp_over_v4_v6_and_vlan_without_a_filter() {
    let topology = Topology::new().unwrap();
    let server = TcpServer::start(
        topology.host(),
        SocketAddr::new("::".parse().unwrap(), TCP_PORT),
    )
    .unwrap();
    let sink = UdpSink::start(
        topology.host(),
        SocketAddr::new("::".parse().unwrap(), UDP_PORT),
    )
    .unwrap();

    for (client, link) in [
        (topology.allowed(), ALLOWED_LINK),
        (topology.blocked(), BLOCKED_LINK),
    ] {
        for v6 in [false, true] {
            let host = link.host_ip(v6);
            assert_eq!(
                ping(client, host, 2).unwrap(),
                2,
                "ping {host} from {}",
                client.name()
            );
            assert!(
                tcp_connects(client, SocketAddr::new(host, TCP_PORT), TIMEOUT),
                "TCP to {host}"
            );
            udp_send(client, None, SocketAddr::new(host, UDP_PORT), 5, 100).unwrap();
            let source = link.client_ip(v6);
            assert!(
                sink.wait_for(source, 5, TIMEOUT),
                "UDP from {source}: {:?}",
                sink.record_from(source)
            );
        }
    }
    let tap = topology.vlan_tap(VLAN_PORT).unwrap();
    for (source, tags) in [
        (
            VLAN_LINK.listed_client_v4,
            vec![VlanTag::dot1q(VLAN_LINK.vlan_id)],
        ),
        (
            VLAN_LINK.unlisted_client_v4,
            vec![VlanTag::dot1ad(7), VlanTag::dot1q(VLAN_LINK.vlan_id)],
        ),
    ] {
        let frame = topology.vlan_frame(source, tags, VLAN_PORT, 100).unwrap();
        topology.send_vlan_frames(&frame, 5).unwrap();
        assert!(
            tap.wait_for(source.into(), 5, TIMEOUT),
            "VLAN frames from {source}: {:?}",
            tap.record_from(source.into())
        );
        assert!(tap.record_from(source.into()).is_complete_run(5));
    }
    assert_eq!(server.accepted_count(), 4);
    assert!(neighbour_resolved(
        topology.host(),
        BLOCKED_LINK.host_dev,
        BLOCKED_LINK.client_v4.into()
    )
    .unwrap());
}

#[test]
fn udp_sink_counts_every_datagram_with_its_sequence_number() {
    let topology = Topology::new().unwrap();
    let sink = UdpSink::start(
        topology.host(),
        SocketAddr::new("0.0.0.0".parse().unwrap(), UDP_PORT),
    )
    .unwrap();
    let to = SocketAddr::new(ALLOWED_LINK.host_v4.into(), UDP_PORT);
    udp_send(topology.allowed(), None, to, 300, 200).unwrap();
    let source = ALLOWED_LINK.client_v4.into();
    assert!(sink.wait_for(source, 300, TIMEOUT));
    let record: SourceRecord = sink.record_from(source);
    assert!(record.is_complete_run(300), "{record:?}");
    assert_eq!(record.bytes, 300 * 200);
}

#[test]
fn a_silent_source_is_reported_as_unreachable_not_hung() {
    let topology = Topology::new().unwrap();
    // Nothing listens on this port: the connection is refused, quickly.
    let host = SocketAddr::new(ALLOWED_LINK.host_v4.into(), TCP_PORT);
    assert!(!tcp_connects(
        topology.allowed(),
        host,
        Duration::from_secs(1)
    ));
    // An address nobody has: no replies at all, and the helper still returns in time.
    let started = std::time::Instant::now();
    assert_eq!(
        ping(topology.allowed(), "10.10.1.99".parse().unwrap(), 2).unwrap(),
        0
    );
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[test]
fn concurrent_topologies_do_not_clash() {
    let names: Vec<Vec<String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    let topology = Topology::new().unwrap();
                    let sink = UdpSink::start(
                        topology.host(),
                        SocketAddr::new("0.0.0.0".parse().unwrap(), UDP_PORT),
                    )
                    .unwrap();
                    let to = SocketAddr::new(BLOCKED_LINK.host_v4.into(), UDP_PORT);
                    udp_send(topology.blocked(), None, to, 20, 64).unwrap();
                    let source = BLOCKED_LINK.client_v4.into();
                    assert!(sink.wait_for(source, 20, TIMEOUT));
                    // Each topology sees exactly its own client's datagrams.
                    std::thread::sleep(Duration::from_millis(200));
                    assert_eq!(sink.total(), 20);
                    [topology.host(), topology.allowed(), topology.blocked()]
                        .map(|netns| netns.name().to_owned())
                        .to_vec()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap())
            .collect()
    });
    let mut all: Vec<&String> = names.iter().flatten().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 9, "namespace names must be unique: {names:?}");
    for name in all {
        assert!(
            !Path::new("/run/netns").join(name).exists(),
            "{name} left behind"
        );
    }
}

#[test]
fn namespaces_are_deleted_when_a_test_panics() {
    let mut name = String::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let netns = Netns::new("p").unwrap();
        name = netns.name().to_owned();
        panic!("test failure while {name} exists");
    }));
    assert!(outcome.is_err());
    assert!(!name.is_empty());
    assert!(!Path::new("/run/netns").join(&name).exists());
}

#[test]
fn in_netns_runs_code_inside_the_namespace() {
    let netns = Netns::new("x").unwrap();
    netns
        .ip(&[
            "link", "add", "marker0", "type", "veth", "peer", "name", "marker1",
        ])
        .unwrap();
    assert!(in_netns(&netns, || interface_exists("marker0")));
    assert!(
        !interface_exists("marker0"),
        "the caller's thread must stay where it was"
    );
}

/// Looks `dev` up through a socket of the calling thread's network namespace.
fn interface_exists(dev: &str) -> bool {
    let name = std::ffi::CString::new(dev).unwrap();
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}
