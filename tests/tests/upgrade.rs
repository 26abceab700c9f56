//! Upgrades: a version whose maps are laid out differently takes over from the running
//! one under traffic, with every packet judged by the old filter or the new one, the
//! list, mode, confirm deadline and counters carried over, and the old maps removed
//! only after the switch. A crash at any step leaves a filter that enforces and that the
//! next start completes (the new version) or rolls back (the old one). An older version
//! refuses a newer layout and leaves it enforcing.
//!
//! "The next version" is this source built with `ALLOWLIST_TEST_LAYOUT` (one more
//! layout, more counter slots) and crash points; `cargo xtask test` builds it.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use allowlist_tests::{
    in_netns, traffic::UDP_PACING, udp_ipv4_frame_len, udp_send, wait_until, Binaries, Client,
    ConfigBuilder, Counter, Daemon, Mode, Probe, Topology, UdpSink, UdpStream, ALLOWED_LINK,
    BLOCKED_LINK,
};

const UDP_PORT: u16 = 7201;
const PROBE_PORT: u16 = 7202;
const PAYLOAD: usize = 150;
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(5);
const SETTLE: Duration = Duration::from_millis(300);
/// An entry added with allowlistctl, so the list is more than the config file says.
const ADDED: &str = "198.51.100.7/32";

/// Datagrams a listed client sends while an upgrade is cut short by a crash.
const CRASHED_DATAGRAMS: u64 = 10;

/// The steps of an upgrade at which the next version's crash points kill it.
const STEPS: [&str; 4] = [
    // its maps are built and filled beside the old ones; no interface runs it yet
    "layout-built",
    // one of the two interfaces runs the new program, the other still the old
    "layout-one-switched",
    // every interface runs the new program; the new maps are not yet stamped live
    "layout-switched",
    // stamped live; the old maps are not yet removed
    "layout-live",
];

fn current() -> Binaries {
    Binaries::locate().unwrap()
}

fn next() -> Binaries {
    Binaries::next_layout().unwrap()
}

/// The layout directories under the pin path (`v2`, `v3`), and whether the layout-1
/// `maps` and `program` are at its root.
fn layouts(pin_path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(pin_path)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('v') || name == "maps" || name == "program")
        .collect();
    names.sort();
    names
}

/// The current layout's directory name, and the next one's.
fn layout_dirs() -> (String, String) {
    (
        format!("v{}", allowlist_common::LAYOUT_VERSION),
        format!("v{}", allowlist_common::NEXT_TEST_LAYOUT),
    )
}

fn start_current(topology: &Topology) -> Daemon<'_> {
    let config = ConfigBuilder::allowed_client_v4(topology);
    let daemon = Daemon::start(topology, &config).unwrap();
    daemon.ctl_ok(&["add", ADDED, "--description", "added before the upgrade"]);
    daemon
}

fn assert_enforcing(probe: &Probe, when: &str) {
    assert!(
        probe.passes(Client::Allowed, false),
        "{when}: the listed client was dropped"
    );
    assert!(
        !probe.passes(Client::Blocked, false),
        "{when}: the unlisted client got through"
    );
}

fn assert_list_and_mode_kept(daemon: &Daemon, when: &str) {
    let status = daemon.status();
    assert_eq!(status["mode"], "enforce", "{when}: {status}");
    assert!(
        !daemon.listed(ADDED).is_empty(),
        "{when}: the entry added with allowlistctl is gone: {:?}",
        daemon.list()
    );
}

#[test]
fn an_upgrade_under_traffic_drops_no_listed_packet_passes_no_unlisted_one_and_keeps_list_mode_and_counters(
) {
    let topology = Topology::new().unwrap();
    topology.disable_ipv6().unwrap();
    topology.pin_client_neighbours().unwrap();
    let mut daemon = start_current(&topology);
    let (old_dir, new_dir) = layout_dirs();
    assert_eq!(layouts(daemon.pin_path()), vec![old_dir.clone()]);

    let sink = UdpSink::start(
        topology.host(),
        SocketAddr::new("0.0.0.0".parse().unwrap(), UDP_PORT),
    )
    .unwrap();
    // Some counts before, to see that the new version continues them.
    let before_traffic = daemon.stats();
    udp_send(
        topology.allowed(),
        None,
        SocketAddr::new(ALLOWED_LINK.host_v4.into(), UDP_PORT),
        20,
        PAYLOAD,
    )
    .unwrap();
    std::thread::sleep(SETTLE);
    let before_upgrade = daemon.stats();
    assert_eq!(
        before_upgrade
            .since(&before_traffic)
            .get("passed_listed")
            .packets,
        20
    );

    let interval = UDP_PACING * 2;
    let allowed_stream = UdpStream::start(
        topology.allowed(),
        Some(ALLOWED_LINK.client_v4.into()),
        SocketAddr::new(ALLOWED_LINK.host_v4.into(), UDP_PORT),
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
    std::thread::sleep(SETTLE);
    assert_eq!(daemon.terminate().unwrap().code(), Some(0));
    daemon.switch_binaries(next());
    daemon.restart().unwrap();
    std::thread::sleep(SETTLE);
    let allowed_sent = allowed_stream.stop().unwrap();
    let blocked_sent = blocked_stream.stop().unwrap();

    let allowed_source: IpAddr = ALLOWED_LINK.client_v4.into();
    let all_arrived = sink.wait_for(allowed_source, 20 + allowed_sent, ARRIVAL_TIMEOUT);
    std::thread::sleep(SETTLE);
    let received = sink.record_from(allowed_source);
    assert!(
        all_arrived && received.datagrams == 20 + allowed_sent,
        "listed datagrams lost in the upgrade: sent {allowed_sent} during it, received {}",
        received.datagrams - 20
    );
    assert_eq!(
        sink.count_from(BLOCKED_LINK.client_v4.into()),
        0,
        "unlisted datagrams got through during the upgrade (of {blocked_sent})"
    );
    assert_list_and_mode_kept(&daemon, "after the upgrade");
    assert_eq!(
        layouts(daemon.pin_path()),
        vec![new_dir],
        "the old layout's maps must be removed once the new program runs everywhere"
    );
    assert!(daemon
        .log()
        .contains("building this version's maps beside it"));

    // The counters continue from the old ones: every packet the old program judged before
    // the upgrade and nearly all judged during the switch (a packet counted on the same
    // CPU while the last of the old program's counts is added may be lost: a couple in a
    // few thousand here; not carrying the counters over loses most of them).
    let counted = daemon.stats().since(&before_upgrade);
    eprintln!(
        "during the upgrade: sent {allowed_sent} listed ({} counted passed_listed) and {blocked_sent} unlisted ({} counted dropped_not_listed)",
        counted.get("passed_listed").packets,
        counted.get("dropped_not_listed").packets
    );
    for (reason, sent) in [
        ("passed_listed", allowed_sent),
        ("dropped_not_listed", blocked_sent),
    ] {
        let packets = counted.get(reason).packets;
        assert!(
            packets <= sent && sent - packets <= 2 + sent / 100,
            "{reason}: {packets} counted of {sent} sent during the upgrade; the counters were not carried over"
        );
    }
    let after_upgrade = daemon.stats();
    let on_allowed = |daemon: &Daemon| {
        daemon.ctl_json(&["stats", "--interface", ALLOWED_LINK.host_dev])["counters"]
            ["passed_listed"]["packets"]
            .as_u64()
            .unwrap()
    };
    let on_allowed_before = on_allowed(&daemon);
    udp_send(
        topology.allowed(),
        None,
        SocketAddr::new(ALLOWED_LINK.host_v4.into(), UDP_PORT),
        10,
        PAYLOAD,
    )
    .unwrap();
    std::thread::sleep(SETTLE);
    assert_eq!(
        daemon.stats().since(&after_upgrade).get("passed_listed"),
        Counter {
            packets: 10,
            bytes: 10 * udp_ipv4_frame_len(PAYLOAD)
        },
        "the new program counts by the same reasons"
    );
    assert_eq!(
        on_allowed(&daemon) - on_allowed_before,
        10,
        "and on the interface that received them"
    );
}

#[test]
fn an_unconfirmed_activation_still_reverts_in_the_kernel_after_an_upgrade() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology).mode(Mode::Monitor);
    let mut daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    // Long enough to outlast a stop and a start on the next layout on a busy machine.
    daemon.ctl_ok(&["activate", "--confirm", "20s"]);
    let deadline = daemon.status()["confirm_deadline"].as_u64().unwrap();

    daemon.terminate().unwrap();
    daemon.switch_binaries(next());
    daemon.restart().unwrap();
    assert_eq!(daemon.status()["confirm_deadline"], deadline);
    // With no daemon, only the new maps' own deadline can revert it.
    daemon.kill9();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        wait_until(
            Duration::from_secs(deadline.saturating_sub(now) + 15),
            || probe.passes(Client::Blocked, false)
        ),
        "the upgraded filter stayed enforcing past the unconfirmed deadline"
    );
}

/// Replies to what the host sent pass by the flow table, which the egress flow tracker
/// fills: a flow the old tracker recorded must be in the new table, and the new tracker
/// must fill the table the new program reads. An unconnected UDP socket is not in
/// /proc/net/udp as a flow, so nothing but the flow table admits the replies.
#[test]
fn replies_to_what_the_host_sent_pass_across_an_upgrade_whichever_tracker_recorded_the_flow() {
    let topology = Topology::new().unwrap();
    let mut daemon = start_current(&topology);
    let peer = SocketAddr::new(BLOCKED_LINK.client_v4.into(), 7203);
    let peer_socket = in_netns(topology.blocked(), || UdpSocket::bind(peer)).unwrap();
    let host_socket = || {
        let socket = in_netns(topology.host(), || UdpSocket::bind("0.0.0.0:0")).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        socket
    };
    let reply_arrives = |host: &UdpSocket, what: &[u8]| {
        let port = host.local_addr().unwrap().port();
        peer_socket
            .send_to(what, SocketAddr::new(BLOCKED_LINK.host_v4.into(), port))
            .unwrap();
        let mut received = [0u8; 64];
        host.recv_from(&mut received)
            .is_ok_and(|(len, _)| &received[..len] == what)
    };

    let before = host_socket();
    assert!(
        !reply_arrives(&before, b"unsolicited"),
        "the unlisted peer got through without a flow"
    );
    before.send_to(b"hello", peer).unwrap();
    std::thread::sleep(SETTLE);
    daemon.terminate().unwrap();
    daemon.switch_binaries(next());
    daemon.restart().unwrap();
    assert!(
        reply_arrives(&before, b"reply to a flow from before"),
        "the flow the old tracker recorded was not carried over"
    );

    let after = host_socket();
    assert!(!reply_arrives(&after, b"unsolicited"));
    after.send_to(b"hello", peer).unwrap();
    std::thread::sleep(SETTLE);
    assert!(
        reply_arrives(&after, b"reply to a flow from after"),
        "the new flow tracker does not fill the table the new program reads"
    );
}

#[test]
fn a_filter_pinned_before_layouts_were_stamped_is_taken_over_and_its_maps_removed() {
    let topology = Topology::new().unwrap();
    let mut daemon = start_current(&topology);
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    let before = daemon.stats();
    daemon.kill9();
    // What a version before layout stamps pinned: program and maps at the pin path's
    // root, and no LAYOUT map.
    let pin_path = daemon.pin_path().to_path_buf();
    let (old_dir, _) = layout_dirs();
    let old = pin_path.join(&old_dir);
    std::fs::rename(old.join("maps"), pin_path.join("maps")).unwrap();
    std::fs::rename(old.join("program"), pin_path.join("program")).unwrap();
    std::fs::remove_file(pin_path.join("maps/LAYOUT")).unwrap();
    std::fs::remove_dir(&old).unwrap();
    assert_enforcing(&probe, "the legacy filter with no daemon");

    daemon.restart().unwrap();
    assert_enforcing(&probe, "after taking over the legacy filter");
    assert_list_and_mode_kept(&daemon, "after taking over the legacy filter");
    assert_eq!(layouts(&pin_path), vec![old_dir]);
    let counted = daemon.stats().since(&before);
    assert!(
        counted.get("passed_listed").packets >= 1 && counted.get("dropped_not_listed").packets >= 1,
        "the legacy counters were not carried over: {counted:?}"
    );
}

#[test]
fn a_crash_at_any_step_of_an_upgrade_leaves_a_filter_the_next_start_completes_or_rolls_back() {
    let topology = Topology::new().unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    let _sink = UdpSink::start(
        topology.host(),
        SocketAddr::new("0.0.0.0".parse().unwrap(), UDP_PORT),
    )
    .unwrap();
    let (old_dir, new_dir) = layout_dirs();
    for step in STEPS {
        for resume_with_next in [true, false] {
            let case = format!(
                "crash at {step}, then the {} version",
                if resume_with_next { "next" } else { "current" }
            );
            let mut daemon = start_current(&topology);
            let before = daemon.stats();
            daemon.terminate().unwrap();
            daemon.switch_binaries(next().crashing_at(step));
            let crashed = daemon.start_until_exit().unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&crashed),
                Some(libc::SIGKILL),
                "{case}: the crash point did not fire: {crashed}\n{}",
                daemon.log()
            );
            assert_enforcing(&probe, &format!("{case}: right after the crash"));
            // Judged by the old program or the new one, depending on the step.
            udp_send(
                topology.allowed(),
                None,
                SocketAddr::new(ALLOWED_LINK.host_v4.into(), UDP_PORT),
                CRASHED_DATAGRAMS,
                PAYLOAD,
            )
            .unwrap();

            if resume_with_next {
                daemon.switch_binaries(next());
                daemon.restart().unwrap();
                assert_eq!(layouts(daemon.pin_path()), vec![new_dir.clone()], "{case}");
                // Whichever program counted them, the finished upgrade has them.
                let counted = daemon.stats().since(&before).get("passed_listed").packets;
                assert!(
                    counted >= CRASHED_DATAGRAMS,
                    "{case}: only {counted} packets counted since before the upgrade, of at least {CRASHED_DATAGRAMS}"
                );
            } else if step == "layout-live" {
                // The next version's maps are live: the current one may not touch them.
                daemon.switch_binaries(current());
                let refused = daemon.start_until_exit().unwrap();
                assert_eq!(refused.code(), Some(1), "{case}");
                assert_enforcing(&probe, &format!("{case}: refused"));
                daemon.switch_binaries(next());
                daemon.restart().unwrap();
                assert_eq!(layouts(daemon.pin_path()), vec![new_dir.clone()], "{case}");
            } else {
                daemon.switch_binaries(current());
                daemon.restart().unwrap();
                assert_eq!(
                    layouts(daemon.pin_path()),
                    vec![old_dir.clone()],
                    "{case}: the half-built layout must be discarded"
                );
            }
            assert_enforcing(&probe, &case);
            assert_list_and_mode_kept(&daemon, &case);
        }
    }
}

#[test]
fn an_older_version_refuses_a_newer_layout_says_who_wrote_it_and_leaves_it_enforcing() {
    let topology = Topology::new().unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    let mut daemon = start_current(&topology);
    daemon.terminate().unwrap();
    daemon.switch_binaries(next());
    daemon.restart().unwrap();
    daemon.terminate().unwrap();

    daemon.switch_binaries(current());
    let refused = daemon.start_until_exit().unwrap();
    assert_eq!(refused.code(), Some(1));
    let log = daemon.log();
    let (_, new_dir) = layout_dirs();
    let newer = new_dir.trim_start_matches('v');
    for expected in [
        format!("map layout {newer}, written by allowlistd"),
        "left it untouched, still enforcing".to_string(),
        "allowlistd uninstall --pin-path".to_string(),
    ] {
        assert!(log.contains(&expected), "missing {expected:?} in:\n{log}");
    }
    assert_enforcing(&probe, "after the refused downgrade");
    assert_eq!(layouts(daemon.pin_path()), vec![new_dir]);

    // The way out the message gives: uninstall, then the older version starts afresh.
    let uninstall = daemon.uninstall().unwrap();
    assert!(uninstall.status.success(), "{uninstall:?}");
    daemon.restart().unwrap();
    assert_enforcing(&probe, "the older version after uninstall");
    assert_list_and_mode_kept(&daemon, "the older version after uninstall");
}
