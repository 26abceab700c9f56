//! Who is dropped: the XDP program remembers the sources it drops (and, in monitor mode,
//! those enforce would drop) in a bounded kernel table, and `allowlistctl top` and
//! `check` read it, with real packets between network namespaces.

use std::net::SocketAddr;
use std::time::Duration;

use allowlist_tests::{
    udp_ipv4_frame_len, udp_send, wait_until, ConfigBuilder, Daemon, Mode, Topology, UdpSink,
    ALLOWED_LINK, BLOCKED_LINK,
};
use serde_json::Value;

const UDP_PORT: u16 = 7401;
const WAIT: Duration = Duration::from_secs(10);

/// A topology whose clients send nothing but the test's datagrams: no IPv6
/// autoconfiguration or MLD, no ARP refreshes.
fn quiet_topology() -> Topology {
    let topology = Topology::new().unwrap();
    topology.disable_ipv6().unwrap();
    topology.pin_client_neighbours().unwrap();
    topology
}

/// `allowlistctl top ARGS --json` once it shows `source` with `packets` packets (the
/// kernel counts as the packets arrive; the test waits for the last of them).
fn top_once_counted(daemon: &Daemon, args: &[&str], source: &str, packets: u64) -> Vec<Value> {
    let mut all = vec!["top"];
    all.extend_from_slice(args);
    let mut rows = Vec::new();
    let counted = wait_until(WAIT, || {
        rows = daemon
            .ctl_json(&all)
            .as_array()
            .cloned()
            .unwrap_or_default();
        rows.iter()
            .any(|row| row["source"] == source && row["packets"] == packets)
    });
    assert!(
        counted,
        "top {args:?} never showed {source} with {packets} packets: {rows:#?}\nlog:\n{}",
        daemon.log()
    );
    rows
}

/// Datagrams from each client, to a socket the host listens on (so no ICMP error comes
/// back to the allowed sender). Returns once the host received the allowed client's.
fn send_from_both_clients(topology: &Topology, blocked: u64, allowed: u64, payload: usize) {
    let sink = UdpSink::start(
        topology.host(),
        SocketAddr::new("0.0.0.0".parse().unwrap(), UDP_PORT),
    )
    .unwrap();
    udp_send(
        topology.blocked(),
        None,
        SocketAddr::new(BLOCKED_LINK.host_v4.into(), UDP_PORT),
        blocked,
        payload,
    )
    .unwrap();
    udp_send(
        topology.allowed(),
        None,
        SocketAddr::new(ALLOWED_LINK.host_v4.into(), UDP_PORT),
        allowed,
        payload,
    )
    .unwrap();
    assert!(sink.wait_for(ALLOWED_LINK.client_v4.into(), allowed, WAIT));
}

#[test]
fn a_blocked_client_shows_up_in_top_with_its_count_reason_and_interface() {
    let topology = quiet_topology();
    let config = ConfigBuilder::allowed_client_v4(&topology);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let (blocked_count, payload) = (23, 333);
    send_from_both_clients(&topology, blocked_count, 11, payload);

    let blocked = BLOCKED_LINK.client_v4.to_string();
    let rows = top_once_counted(&daemon, &[], &blocked, blocked_count);
    assert_eq!(
        rows.len(),
        1,
        "only the blocked client was dropped: {rows:#?}"
    );
    let row = &rows[0];
    assert_eq!(row["reason"], "dropped_not_listed", "{row:#}");
    assert_eq!(row["interface"], BLOCKED_LINK.host_dev, "{row:#}");
    assert_eq!(row["dropped"], true, "{row:#}");
    // Last seen is the wall-clock second the packets arrived (the kernel stamps its tick
    // count; the daemon puts it on the wall clock).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let shown = row["last_seen"].as_str().unwrap();
    let last_seen = (now.saturating_sub(10)..=now)
        .find(|second| allowlist_userspace::clock::format_time(*second) == shown)
        .unwrap_or(0);
    assert!(
        last_seen <= now && now - last_seen <= 10,
        "last seen {last_seen}, now {now}: {row:#}"
    );
    assert_eq!(
        row["bytes"],
        blocked_count * udp_ipv4_frame_len(payload),
        "{row:#}"
    );
    // It agrees with the counter of its reason.
    assert_eq!(
        daemon.stats().get("dropped_not_listed").packets,
        blocked_count
    );

    // The table for people names it too.
    let table = daemon.ctl_ok(&["top"]);
    let line = table
        .lines()
        .find(|line| line.contains(&blocked))
        .unwrap_or_else(|| panic!("no row for {blocked}:\n{table}"));
    for expected in ["23", "dropped_not_listed", BLOCKED_LINK.host_dev] {
        assert!(line.contains(expected), "{expected} missing from {line:?}");
    }
    // Nothing was merely monitored.
    assert_eq!(
        daemon.ctl_json(&["top", "--would-drop"]),
        Value::Array(vec![])
    );

    // check shows what the table holds for that source, and nothing for a listed one.
    let check = daemon.check_json(&[&blocked]);
    let drops = check["recent_drops"].as_array().unwrap();
    assert_eq!(drops.len(), 1, "{check:#}");
    assert_eq!(drops[0]["packets"], blocked_count, "{check:#}");
    assert_eq!(drops[0]["reason"], "dropped_not_listed", "{check:#}");
    let text = daemon.check(&[&blocked]);
    assert!(
        text.contains("dropped 23 packets") && text.contains(BLOCKED_LINK.host_dev),
        "{text}"
    );
    let allowed = daemon.check_json(&[&ALLOWED_LINK.client_v4.to_string()]);
    assert_eq!(allowed["recent_drops"], Value::Array(vec![]), "{allowed:#}");
}

#[test]
fn in_monitor_mode_top_would_drop_lists_whom_enforcing_would_cut_off_as_csv_that_import_lists() {
    let topology = quiet_topology();
    let config = ConfigBuilder::allowed_client_v4(&topology).mode(Mode::Monitor);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let blocked_count = 17;
    send_from_both_clients(&topology, blocked_count, 5, 100);

    let blocked = BLOCKED_LINK.client_v4.to_string();
    let rows = top_once_counted(&daemon, &["--would-drop"], &blocked, blocked_count);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["reason"], "monitor_would_drop", "{rows:#?}");
    assert_eq!(rows[0]["dropped"], false, "{rows:#?}");
    // Monitor passed them: nothing was dropped.
    assert_eq!(daemon.ctl_json(&["top"]), Value::Array(vec![]));
    // --since and --limit select; a source seen just now is within a minute.
    assert_eq!(
        daemon.ctl_json(&["top", "--would-drop", "--since", "1m", "--limit", "1"]),
        Value::Array(rows.clone())
    );
    assert_eq!(
        daemon.ctl_json(&["top", "--would-drop", "--limit", "0"]),
        Value::Array(vec![])
    );

    // Whom enforcing would cut off, as a file import takes.
    let csv = daemon.ctl_ok(&["top", "--would-drop", "--csv"]);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("ip_address,description"), "{csv}");
    let row = lines
        .next()
        .unwrap_or_else(|| panic!("no source row:\n{csv}"));
    assert!(row.starts_with(&format!("{blocked},")), "{csv}");
    assert_eq!(lines.next(), None, "one row per source:\n{csv}");
    let file = daemon.files().dir().join("would-drop.csv");
    std::fs::write(&file, &csv).unwrap();
    daemon.ctl_ok(&["import", file.to_str().unwrap()]);
    let listed = daemon.listed(&format!("{blocked}/32"));
    assert_eq!(listed.len(), 1, "the imported source is listed");
    let check = daemon.check_json(&[&blocked]);
    assert_eq!(check["reason"], "passed_listed", "{check:#}");
}

#[test]
fn with_dropped_sources_0_nothing_is_remembered() {
    let topology = quiet_topology();
    let config = ConfigBuilder::allowed_client_v4(&topology).dropped_sources(0);
    let daemon = Daemon::start(&topology, &config).unwrap();
    send_from_both_clients(&topology, 9, 1, 100);
    assert!(
        wait_until(WAIT, || daemon.stats().get("dropped_not_listed").packets
            == 9),
        "the drops were not counted:\n{}",
        daemon.log()
    );
    assert_eq!(daemon.ctl_json(&["top"]), Value::Array(vec![]));
}

/// Runs `allowlistctl ARGS` (a --watch that never ends by itself) until its output holds
/// `frames` frames (lines containing `marker`), then ends it; returns the output.
fn watch_output(daemon: &Daemon, args: &[&str], marker: &str, frames: usize) -> String {
    use std::io::{BufRead, BufReader};
    let mut child = daemon
        .ctl_command(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut output = String::new();
    let mut seen = 0;
    while seen < frames {
        let Ok(line) = received.recv_timeout(WAIT) else {
            break;
        };
        seen += usize::from(line.contains(marker));
        output.push_str(&line);
        output.push('\n');
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen >= frames,
        "allowlistctl {args:?} showed {seen} frames:\n{output}"
    );
    output
}

#[test]
fn stats_and_top_watch_refresh_with_rates() {
    let topology = quiet_topology();
    let config = ConfigBuilder::allowed_client_v4(&topology);
    let daemon = Daemon::start(&topology, &config).unwrap();
    send_from_both_clients(&topology, 4, 3, 100);
    let blocked = BLOCKED_LINK.client_v4.to_string();
    top_once_counted(&daemon, &[], &blocked, 4);

    let stats = watch_output(
        &daemon,
        &["stats", "--watch", "--interval", "200ms"],
        "REASON",
        3,
    );
    assert!(
        stats.contains("PKT/S") && stats.contains("BIT/S"),
        "{stats}"
    );
    let rows: Vec<&str> = stats
        .lines()
        .filter(|line| line.contains("dropped_not_listed"))
        .collect();
    assert!(rows.len() >= 2, "{stats}");
    // Nothing more was sent, so from the second frame on the rate is 0.
    assert!(
        rows[1..]
            .iter()
            .all(|row| row.split_whitespace().nth(3) == Some("0")),
        "{stats}"
    );

    let top = watch_output(
        &daemon,
        &["top", "--watch", "--interval", "200ms"],
        "SOURCE",
        2,
    );
    assert!(top.contains("PKT/S"), "{top}");
    assert!(top.lines().any(|line| line.contains(&blocked)), "{top}");
}

/// Two sources whose keys share a slot of the CPUs' cache of recent drops (RECENT_DROPS):
/// each displaces the other into the LRU table, and `top` still shows each one's count
/// in full, added up from both places.
#[test]
fn sources_that_take_turns_in_one_slot_of_the_recent_cache_are_each_counted_in_full() {
    use allowlist_common::{DroppedSourceKey, Reason, RecentDrop};
    use std::net::{IpAddr, Ipv4Addr};

    let topology = quiet_topology();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client_v4(&topology)).unwrap();
    // `ip -o link show DEV`: "7: to_blocked@if6: <...> ...".
    let link = topology
        .host()
        .ip(&["-o", "link", "show", BLOCKED_LINK.host_dev])
        .unwrap();
    let ifindex: u32 = link.split(':').next().unwrap().trim().parse().unwrap();
    let key = |address: Ipv4Addr| DroppedSourceKey {
        source: address.to_ipv6_mapped().octets(),
        ifindex,
        reason: Reason::DroppedNotListed as u32,
    };
    // Consecutive addresses spread over the slots, so look further for two that share one.
    let mut seen = std::collections::HashMap::new();
    let (first, second) = (0..8u8)
        .flat_map(|third| (1..=254u8).map(move |fourth| Ipv4Addr::new(10, 99, third, fourth)))
        .find_map(|address| {
            seen.insert(RecentDrop::slot_of(&key(address)), address)
                .map(|earlier| (earlier, address))
        })
        .expect("two of 2,032 addresses share one of 1,024 slots");
    for address in [first, second] {
        topology
            .blocked()
            .ip(&["addr", "add", &format!("{address}/32"), "dev", "eth0"])
            .unwrap();
    }
    let to = SocketAddr::new(BLOCKED_LINK.host_v4.into(), UDP_PORT);
    for (from, count) in [(first, 5), (second, 7), (first, 3), (second, 2), (first, 1)] {
        udp_send(topology.blocked(), Some(IpAddr::V4(from)), to, count, 100).unwrap();
    }
    top_once_counted(&daemon, &[], &first.to_string(), 9);
    top_once_counted(&daemon, &[], &second.to_string(), 9);
    assert_eq!(daemon.stats().get("dropped_not_listed").packets, 18);
}
