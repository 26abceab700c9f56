//! The filter lives in the kernel, not in the daemon: killing or stopping the daemon
//! leaves the host protected, a new daemon takes over the running filter without a gap
//! or a reset, and only an explicit `uninstall` removes it.

use std::net::SocketAddr;
use std::time::Duration;

use allowlist_tests::{
    ping, udp_ipv4_frame_len, udp_send, ConfigBuilder, Counter, Daemon, DaemonFiles, Topology,
    UdpSink, ALLOWED_LINK, BLOCKED_LINK,
};

const UDP_PORT: u16 = 7001;
const SETTLE: Duration = Duration::from_millis(300);
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(3);
const PAYLOAD: usize = 150;

/// Sends `count` datagrams from each client; checks that all of the allowed client's
/// and none of the blocked client's arrive.
fn send_and_check_enforcement(topology: &Topology, sink: &UdpSink, count: u64, phase: &str) {
    let allowed_source = ALLOWED_LINK.client_v4.into();
    let blocked_source = BLOCKED_LINK.client_v4.into();
    let allowed_before = sink.count_from(allowed_source);
    let to_blocked_host = SocketAddr::new(BLOCKED_LINK.host_v4.into(), UDP_PORT);
    let to_allowed_host = SocketAddr::new(ALLOWED_LINK.host_v4.into(), UDP_PORT);
    udp_send(topology.blocked(), None, to_blocked_host, count, PAYLOAD).unwrap();
    udp_send(topology.allowed(), None, to_allowed_host, count, PAYLOAD).unwrap();
    assert!(
        sink.wait_for(allowed_source, allowed_before + count, ARRIVAL_TIMEOUT),
        "{phase}: listed client's datagrams did not all arrive: {:?}",
        sink.record_from(allowed_source)
    );
    std::thread::sleep(SETTLE);
    assert_eq!(
        sink.count_from(blocked_source),
        0,
        "{phase}: unlisted client got through"
    );
}

#[test]
fn filter_keeps_enforcing_after_kill_9_and_a_restarted_daemon_takes_over_with_counters_intact() {
    let topology = Topology::new().unwrap();
    topology.disable_ipv6().unwrap();
    topology.pin_client_neighbours().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology);
    let mut daemon = Daemon::start(&topology, &config).unwrap();
    let sink = UdpSink::start(
        topology.host(),
        SocketAddr::new("0.0.0.0".parse().unwrap(), UDP_PORT),
    )
    .unwrap();
    let count = 25;
    let per_phase = Counter {
        packets: count,
        bytes: count * udp_ipv4_frame_len(PAYLOAD),
    };

    send_and_check_enforcement(&topology, &sink, count, "daemon running");
    let before_kill = daemon.stats();

    daemon.kill9();
    for dev in topology.guarded_interfaces() {
        assert!(
            topology.host().xdp_attached(dev).unwrap(),
            "XDP program gone from {dev} after kill -9"
        );
    }
    send_and_check_enforcement(&topology, &sink, count, "daemon killed");
    assert_eq!(
        ping(topology.blocked(), BLOCKED_LINK.host_v4.into(), 2).unwrap(),
        0,
        "daemon killed: ping from unlisted client"
    );
    assert_eq!(
        ping(topology.allowed(), ALLOWED_LINK.host_v4.into(), 2).unwrap(),
        2,
        "daemon killed: ping from listed client"
    );
    std::thread::sleep(SETTLE);

    daemon.restart().unwrap();
    let status = daemon.status();
    assert_eq!(status["mode"], "enforce", "{status}");
    assert_eq!(status["entries"]["ipv4"], 1, "{status}");
    // Counted while nobody watched: the datagrams and the 2 + 2 echo requests. A new
    // daemon that reset (or re-created) the counters fails here.
    let while_dead = daemon.stats().since(&before_kill);
    let echo_request_frame = 14 + 20 + 8 + 56;
    assert_eq!(
        while_dead.get("passed_listed"),
        Counter {
            packets: per_phase.packets + 2,
            bytes: per_phase.bytes + 2 * echo_request_frame
        },
        "{while_dead:?}"
    );
    assert_eq!(
        while_dead.get("dropped_not_listed"),
        Counter {
            packets: per_phase.packets + 2,
            bytes: per_phase.bytes + 2 * echo_request_frame
        },
        "{while_dead:?}"
    );

    let after_restart = daemon.stats();
    send_and_check_enforcement(&topology, &sink, count, "daemon restarted");
    let counted = daemon.stats().since(&after_restart);
    assert_eq!(counted.get("passed_listed"), per_phase, "{counted:?}");
    assert_eq!(counted.get("dropped_not_listed"), per_phase, "{counted:?}");
}

#[test]
fn sigterm_exits_0_and_leaves_the_filter_enforcing() {
    let topology = Topology::new().unwrap();
    topology.disable_ipv6().unwrap();
    topology.pin_client_neighbours().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology);
    let mut daemon = Daemon::start(&topology, &config).unwrap();
    let sink = UdpSink::start(
        topology.host(),
        SocketAddr::new("0.0.0.0".parse().unwrap(), UDP_PORT),
    )
    .unwrap();

    let status = daemon.terminate().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM must be a clean exit");
    for dev in topology.guarded_interfaces() {
        assert!(
            topology.host().xdp_attached(dev).unwrap(),
            "SIGTERM detached {dev} (fail open)"
        );
    }
    send_and_check_enforcement(&topology, &sink, 10, "daemon stopped by SIGTERM");
}

#[test]
fn uninstall_refuses_while_the_daemon_runs_then_detaches_and_removes_the_pins() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology);
    let mut daemon = Daemon::start(&topology, &config).unwrap();
    assert!(
        daemon.pin_path().exists(),
        "no pins at {}",
        daemon.pin_path().display()
    );

    let refused = daemon.uninstall().unwrap();
    assert_eq!(
        refused.status.code(),
        Some(1),
        "uninstall under a running daemon: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(daemon.is_running(), "uninstall must not stop the daemon");
    for dev in topology.guarded_interfaces() {
        assert!(
            topology.host().xdp_attached(dev).unwrap(),
            "refused uninstall detached {dev}"
        );
    }

    daemon.terminate().unwrap();
    let uninstalled = daemon.uninstall().unwrap();
    assert!(
        uninstalled.status.success(),
        "uninstall: {}",
        String::from_utf8_lossy(&uninstalled.stderr)
    );
    for dev in topology.guarded_interfaces() {
        assert!(
            !topology.host().xdp_attached(dev).unwrap(),
            "uninstall left a program on {dev}"
        );
    }
    assert!(
        !daemon.pin_path().exists(),
        "uninstall left {}",
        daemon.pin_path().display()
    );
    // With the filter gone the unlisted client is reachable again.
    assert_eq!(
        ping(topology.blocked(), BLOCKED_LINK.host_v4.into(), 2).unwrap(),
        2
    );
}

/// The config may be what is broken when an operator needs the filter gone, so
/// `uninstall --pin-path` reads no config at all; and since that path comes from a
/// person's hands, only a directory holding nothing but a filter's pins is removed.
#[test]
fn uninstall_with_pin_path_needs_no_config_and_never_removes_what_is_not_a_filter() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology);
    let mut daemon = Daemon::start(&topology, &config).unwrap();
    daemon.kill9();
    let files = daemon.files();
    std::fs::write(&files.config, "this is not TOML [").unwrap();
    let pin_path = daemon.pin_path().display().to_string();
    let binaries = daemon.binaries().clone();

    // Not a filter's pin directory: a bpffs directory with something else in it.
    let foreign = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/allowlist-test-foreign-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(foreign.join("someone-elses")).unwrap();
    let refused = files
        .run_daemon_to_exit(
            topology.host(),
            &binaries,
            &["uninstall", "--pin-path", &foreign.display().to_string()],
            Duration::from_secs(30),
        )
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    let kept = foreign.join("someone-elses").exists();
    let _ = std::fs::remove_dir_all(&foreign);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing was removed"), "{stderr}");
    assert!(kept, "uninstall removed another tool's pins");
    for dev in topology.guarded_interfaces() {
        assert!(topology.host().xdp_attached(dev).unwrap(), "{dev} detached");
    }

    let uninstalled = files
        .run_daemon_to_exit(
            topology.host(),
            &binaries,
            &["uninstall", "--pin-path", &pin_path],
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(
        uninstalled.status.success(),
        "uninstall --pin-path with a broken config: {}",
        String::from_utf8_lossy(&uninstalled.stderr)
    );
    for dev in topology.guarded_interfaces() {
        assert!(
            !topology.host().xdp_attached(dev).unwrap(),
            "uninstall left a program on {dev}"
        );
    }
    assert!(!daemon.pin_path().exists());
    assert_eq!(
        ping(topology.blocked(), BLOCKED_LINK.host_v4.into(), 2).unwrap(),
        2
    );
}

/// The runbook's last resort without the binary: with no daemon running, removing the
/// pin directory releases the links, and the host is open again.
#[test]
fn removing_the_pins_by_hand_with_no_daemon_running_detaches_the_filter() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology);
    let mut daemon = Daemon::start(&topology, &config).unwrap();
    assert_eq!(
        ping(topology.blocked(), BLOCKED_LINK.host_v4.into(), 1).unwrap(),
        0,
        "enforcing before"
    );
    daemon.kill9();
    std::fs::remove_dir_all(daemon.pin_path()).unwrap();
    for dev in topology.guarded_interfaces() {
        assert!(
            !topology.host().xdp_attached(dev).unwrap(),
            "{dev} still has the program with its pins gone"
        );
    }
    assert_eq!(
        ping(topology.blocked(), BLOCKED_LINK.host_v4.into(), 2).unwrap(),
        2
    );
}

/// Two daemons on one filter would take turns rewriting its slots (one says PASS while
/// the kernel drops), two on one state directory would overwrite each other's list: a
/// second daemon is refused, naming the first one's PID and control socket.
#[test]
fn a_second_daemon_on_the_same_pins_or_state_dir_is_refused_naming_the_first() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology);
    let first = Daemon::start(&topology, &config).unwrap();
    let first_pid = first.pid().unwrap();
    let first_socket = first.files().socket.display().to_string();

    for shared in ["pin_path", "state_dir"] {
        let second = DaemonFiles::new().unwrap();
        let (ours, theirs) = match shared {
            "pin_path" => (&second.pin_path, &first.files().pin_path),
            _ => (&second.state_dir, &first.files().state_dir),
        };
        let text = config
            .render(&second)
            .replace(&*ours.to_string_lossy(), &theirs.to_string_lossy());
        second.write_config(&text).unwrap();
        let run = second
            .run_daemon_to_exit(
                topology.host(),
                first.binaries(),
                &[],
                Duration::from_secs(20),
            )
            .unwrap_or_else(|error| {
                panic!("a second daemon sharing {shared} kept running: {error:#}")
            });
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "sharing {shared}: {stderr}");
        assert!(
            stderr.contains(&format!("PID {first_pid}")) && stderr.contains(&first_socket),
            "sharing {shared}: the refusal must name the first daemon: {stderr}"
        );
        assert!(!second.socket.exists(), "the second daemon opened a socket");
    }

    assert_eq!(first.status()["mode"], "enforce");
    for dev in topology.guarded_interfaces() {
        assert!(topology.host().xdp_attached(dev).unwrap(), "{dev} detached");
    }
    assert_eq!(
        ping(topology.blocked(), BLOCKED_LINK.host_v4.into(), 2).unwrap(),
        0,
        "the unlisted client got through after a refused second daemon"
    );
    assert_eq!(
        ping(topology.allowed(), ALLOWED_LINK.host_v4.into(), 2).unwrap(),
        2
    );
}
