//! Replacing the list is atomic: while thousands of reloads swap between two lists, a
//! source on both lists never loses a packet and a source on neither never gets one in.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use allowlist_tests::traffic::UDP_PACING;
use allowlist_tests::{
    ping_from, udp_ipv4_frame_len, ConfigBuilder, Counter, Daemon, Mode, Topology, UdpSink,
    UdpStream, ALLOWED_LINK, BLOCKED_LINK,
};

const UDP_PORT: u16 = 7002;
const PAYLOAD: usize = 64;
/// How many reloads; `ALLOWLIST_SWAPS` overrides it (say, for a longer soak).
fn swaps() -> usize {
    env_or("ALLOWLIST_SWAPS", 2000)
}

/// Filler entries per list, all different between the lists, so that every swap
/// rewrites hundreds of kernel entries. A debug-built daemon needs about 50 ms per swap
/// with 200 of them, which keeps 2000 swaps under two minutes;
/// `ALLOWLIST_SWAP_FILLER` overrides it.
fn filler_entries() -> u32 {
    env_or("ALLOWLIST_SWAP_FILLER", 200)
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// A second address of the allowed client, listed on A only: it shows that a reload
/// really changes what the kernel lets through.
const A_ONLY_SOURCE: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 77);

/// List A: the allowed client as an exact /32 (written last, so a daemon that applied
/// entries one by one would expose the gap longest) and unrelated /32s.
fn list_a(topology: &Topology) -> ConfigBuilder {
    ConfigBuilder::for_topology(topology)
        .mode(Mode::Enforce)
        .allow_all(
            (0..filler_entries()).map(|i| format!("172.16.{}.{}/32", i / 250, i % 250 + 1)),
            "filler A",
        )
        .allow("2001:db8:a::/48", "filler A v6")
        .allow(
            format!("{A_ONLY_SOURCE}/32"),
            "second address of the allowed client",
        )
        .allow(
            format!("{}/32", ALLOWED_LINK.client_v4),
            "allowed client, exact",
        )
}

/// List B: the allowed client only through the covering 10.10.1.0/30, and other
/// prefixes of mixed lengths. Neither list covers the blocked client (10.10.2.2) or
/// 10.10.1.77.
fn list_b(topology: &Topology) -> ConfigBuilder {
    ConfigBuilder::for_topology(topology)
        .mode(Mode::Enforce)
        .allow_all(
            (0..filler_entries())
                .map(|i| format!("198.{}.{}.0/{}", 18 + i / 250, i % 250, 24 + i % 5)),
            "filler B",
        )
        .allow("2001:db8:b::/48", "filler B v6")
        .allow("10.10.1.0/30", "allowed client, covering prefix")
}

#[test]
fn thousands_of_list_swaps_under_traffic_never_let_an_unlisted_packet_through_nor_drop_a_listed_one(
) {
    let topology = Topology::new().unwrap();
    // Exact counter checks below: nothing but the two streams may reach the host.
    topology.disable_ipv6().unwrap();
    topology.pin_client_neighbours().unwrap();
    topology
        .allowed()
        .ip(&[
            "addr",
            "add",
            &format!("{A_ONLY_SOURCE}/24"),
            "dev",
            ALLOWED_LINK.client_dev,
        ])
        .unwrap();
    let (a, b) = (list_a(&topology), list_b(&topology));
    let daemon = Daemon::start(&topology, &a).unwrap();

    // The lists differ where it matters, and reload applies them at once.
    let host: IpAddr = ALLOWED_LINK.host_v4.into();
    assert_eq!(
        ping_from(topology.allowed(), Some(A_ONLY_SOURCE.into()), host, 1).unwrap(),
        1,
        "list A"
    );
    daemon.apply(&b);
    assert_eq!(daemon.status()["entries"]["ipv4"], filler_entries() + 1);
    assert_eq!(
        ping_from(topology.allowed(), Some(A_ONLY_SOURCE.into()), host, 1).unwrap(),
        0,
        "list B"
    );
    daemon.apply(&a);
    assert_eq!(daemon.status()["entries"]["ipv4"], filler_entries() + 2);
    std::thread::sleep(Duration::from_millis(300));

    let sink = UdpSink::start(
        topology.host(),
        SocketAddr::new("0.0.0.0".parse().unwrap(), UDP_PORT),
    )
    .unwrap();
    let before = daemon.stats();
    // About 2,500 datagrams a second per client: dense enough that every swap happens
    // under traffic, light enough that two cores also have time for the reloads.
    let interval = UDP_PACING * 2;
    let allowed_stream = UdpStream::start(
        topology.allowed(),
        Some(ALLOWED_LINK.client_v4.into()),
        SocketAddr::new(host, UDP_PORT),
        PAYLOAD,
        interval,
    )
    .unwrap();
    let blocked_stream = UdpStream::start(
        topology.blocked(),
        None,
        SocketAddr::new(BLOCKED_LINK.host_v4.into(), UDP_PORT),
        PAYLOAD,
        interval,
    )
    .unwrap();

    let swaps = swaps();
    let started = Instant::now();
    for swap in 0..swaps {
        daemon.apply(if swap % 2 == 0 { &b } else { &a });
    }
    let swapping_took = started.elapsed();
    let allowed_sent = allowed_stream.stop().unwrap();
    let blocked_sent = blocked_stream.stop().unwrap();
    eprintln!(
        "{swaps} swaps in {swapping_took:?}; sent {allowed_sent} listed and {blocked_sent} unlisted datagrams"
    );

    let allowed_source = ALLOWED_LINK.client_v4.into();
    let all_arrived = sink.wait_for(allowed_source, allowed_sent, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let received = sink.record_from(allowed_source);
    assert!(
        all_arrived && received.is_complete_run(allowed_sent),
        "listed source lost datagrams during swaps: sent {allowed_sent}, received {} ({} distinct)",
        received.datagrams,
        {
            let mut distinct = received.sequences.clone();
            distinct.sort_unstable();
            distinct.dedup();
            distinct.len()
        }
    );
    assert_eq!(
        sink.count_from(BLOCKED_LINK.client_v4.into()),
        0,
        "unlisted source got datagrams through during swaps"
    );
    // The sink's view and the kernel's must agree: every datagram judged exactly once.
    let counted = daemon.stats().since(&before);
    assert_eq!(
        counted.get("passed_listed"),
        Counter {
            packets: allowed_sent,
            bytes: allowed_sent * udp_ipv4_frame_len(PAYLOAD)
        },
        "{counted:?}"
    );
    assert_eq!(
        counted.get("dropped_not_listed"),
        Counter {
            packets: blocked_sent,
            bytes: blocked_sent * udp_ipv4_frame_len(PAYLOAD)
        },
        "{counted:?}"
    );
    assert!(
        allowed_sent > swaps as u64,
        "too little traffic to overlap the swaps: {allowed_sent}"
    );
}
