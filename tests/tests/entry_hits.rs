//! Hits per entry: every listed entry counts the packets and bytes the kernel admitted by
//! it and when it last did; the counts survive list changes and daemon restarts, and
//! `list --unused` finds the entries that admitted nothing for a while.

use std::net::SocketAddr;
use std::time::Duration;

use allowlist_tests::{
    udp_ipv4_frame_len, udp_send, wait_until, ConfigBuilder, Daemon, Topology, UdpSink, UdpStream,
    ALLOWED_LINK,
};
use serde_json::Value;

const UDP_PORT: u16 = 7601;
const WAIT: Duration = Duration::from_secs(10);
const IDLE: &str = "198.51.100.0/24";

/// `list --json`'s entry for `network`.
fn listed(daemon: &Daemon, args: &[&str], network: &str) -> Option<Value> {
    let mut all = vec!["list"];
    all.extend_from_slice(args);
    daemon
        .ctl_json(&all)
        .as_array()?
        .iter()
        .find(|entry| entry["network"] == network)
        .cloned()
}

#[test]
fn an_allowed_clients_entry_counts_what_it_admitted_across_changes_and_restarts_and_the_idle_one_is_unused(
) {
    let topology = Topology::new().unwrap();
    topology.disable_ipv6().unwrap();
    topology.pin_client_neighbours().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology).allow(IDLE, "idle partner");
    let mut daemon = Daemon::start(&topology, &config).unwrap();
    let allowed = format!("{}/32", ALLOWED_LINK.client_v4);
    let sink = UdpSink::start(
        topology.host(),
        SocketAddr::new("0.0.0.0".parse().unwrap(), UDP_PORT),
    )
    .unwrap();
    let to_host = SocketAddr::new(ALLOWED_LINK.host_v4.into(), UDP_PORT);
    let (count, payload) = (11, 150);
    udp_send(topology.allowed(), None, to_host, count, payload).unwrap();
    assert!(sink.wait_for(ALLOWED_LINK.client_v4.into(), count, WAIT));

    let mut entry = Value::Null;
    let counted = wait_until(WAIT, || {
        entry = listed(&daemon, &[], &allowed).unwrap_or_default();
        entry["hits"]["packets"] == count
    });
    assert!(counted, "the allowed client's entry: {entry:#}");
    assert_eq!(
        entry["hits"]["bytes"],
        count * udp_ipv4_frame_len(payload),
        "{entry:#}"
    );
    assert!(entry["hits"]["last_hit"].is_string(), "{entry:#}");
    let idle = listed(&daemon, &[], IDLE).unwrap();
    assert_eq!(idle["hits"]["packets"], 0, "{idle:#}");
    assert_eq!(idle["hits"]["last_hit"], Value::Null, "{idle:#}");
    let table = daemon.ctl_ok(&["list"]);
    let idle_line = table.lines().find(|line| line.contains(IDLE)).unwrap();
    let columns: Vec<&str> = idle_line.split_whitespace().collect();
    assert_eq!(columns[columns.len() - 2..], ["0", "never"], "{table}");

    // A change in place, a whole new list and a new daemon keep the counts.
    daemon.ctl_ok(&["add", "203.0.113.0/24"]);
    daemon.reload();
    daemon.terminate().unwrap();
    daemon.restart().unwrap();
    let entry = listed(&daemon, &[], &allowed).unwrap();
    assert_eq!(entry["hits"]["packets"], count, "{entry:#}");
    let added = listed(&daemon, &[], "203.0.113.0/24").unwrap();
    assert_eq!(added["hits"]["packets"], 0, "{added:#}");

    // While the allowed client keeps sending, only the idle entry (listed for longer
    // than --unused) is unused.
    let stream = UdpStream::start(
        topology.allowed(),
        None,
        to_host,
        payload,
        Duration::from_millis(100),
    )
    .unwrap();
    let mut unused = Value::Null;
    let found = wait_until(WAIT, || {
        unused = daemon.ctl_json(&["list", "--unused", "2s"]);
        let networks: Vec<&str> = unused
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|entry| entry["network"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        networks.contains(&IDLE) && !networks.contains(&allowed.as_str())
    });
    stream.stop().unwrap();
    assert!(found, "list --unused 2s: {unused:#}");
}
