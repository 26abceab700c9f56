//! The daemon runs as root with no more capabilities than the packaged unit's
//! CapabilityBoundingSet= (read from allowlist-userspace/debian/allowlist.service): with
//! exactly that set it starts, attaches and enforces; without any one of it, it refuses to
//! start, naming what is missing, and changes nothing. `setpriv --bounding-set` limits
//! it as systemd would.

use std::net::IpAddr;
use std::time::Duration;

use allowlist_tests::{
    ping, Binaries, ConfigBuilder, Daemon, DaemonFiles, Topology, ALLOWED_LINK, BLOCKED_LINK,
};

const UNIT: &str = include_str!("../../allowlist-userspace/debian/allowlist.service");
/// Gives the control socket to a group, the one use of CAP_CHOWN.
const SOCKET_GROUP: &str = "nogroup";

/// The names in the unit's CapabilityBoundingSet=, e.g. `CAP_BPF`.
fn unit_capabilities() -> Vec<String> {
    let line = UNIT
        .lines()
        .find_map(|line| line.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit has a CapabilityBoundingSet= line");
    line.split_whitespace().map(str::to_string).collect()
}

/// The test binaries, the daemon run by `setpriv` with `capabilities` as its bounding set
/// (which, for root, is what it ends up holding) and nothing inheritable.
fn limited_to(capabilities: &[String]) -> Binaries {
    let set: String = capabilities
        .iter()
        .map(|name| format!(",+{}", name.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let mut binaries = Binaries::locate().unwrap();
    binaries.daemon_prefix = vec![
        "setpriv".into(),
        format!("--bounding-set=-all{set}").into(),
        "--inh-caps=-all".into(),
    ];
    binaries
}

/// Capability numbers as linux/capability.h has them, for reading /proc/PID/status.
fn capability_number(name: &str) -> u32 {
    match name {
        "CAP_CHOWN" => 0,
        "CAP_NET_ADMIN" => 12,
        "CAP_SYS_ADMIN" => 21,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("add {other} to capability_number"),
    }
}

fn effective_capabilities(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .unwrap();
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

fn host_reachable_from(topology: &Topology, blocked: bool) -> u32 {
    let (client, host): (_, IpAddr) = if blocked {
        (topology.blocked(), BLOCKED_LINK.host_v4.into())
    } else {
        (topology.allowed(), ALLOWED_LINK.host_v4.into())
    };
    ping(client, host, 2).unwrap()
}

#[test]
fn with_only_the_units_capabilities_the_daemon_starts_attaches_and_enforces() {
    let capabilities = unit_capabilities();
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology).socket_group(SOCKET_GROUP);
    let mut daemon = Daemon::launch(
        topology.host(),
        Some(&config),
        DaemonFiles::new().unwrap(),
        limited_to(&capabilities),
    )
    .unwrap();
    daemon.wait_ready().unwrap();

    let expected = capabilities
        .iter()
        .fold(0u64, |set, name| set | 1 << capability_number(name));
    assert_eq!(
        effective_capabilities(daemon.pid().unwrap()),
        expected,
        "the daemon holds other capabilities than {capabilities:?}"
    );
    for dev in topology.guarded_interfaces() {
        assert!(topology.host().xdp_attached(dev).unwrap(), "{dev} detached");
    }
    assert_eq!(host_reachable_from(&topology, true), 0, "unlisted got in");
    assert_eq!(host_reachable_from(&topology, false), 2, "listed kept out");
}

#[test]
fn without_any_one_of_them_the_daemon_refuses_to_start_naming_it_and_changes_nothing() {
    let capabilities = unit_capabilities();
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology).socket_group(SOCKET_GROUP);
    for missing in &capabilities {
        let rest: Vec<String> = capabilities
            .iter()
            .filter(|name| *name != missing)
            .cloned()
            .collect();
        let files = DaemonFiles::new().unwrap();
        let (socket, pin_path) = (files.socket.clone(), files.pin_path.clone());
        let mut daemon =
            Daemon::launch(topology.host(), Some(&config), files, limited_to(&rest)).unwrap();
        let status = daemon
            .wait_exit(Duration::from_secs(20))
            .unwrap_or_else(|error| panic!("without {missing}: {error:#}"));
        let log = daemon.log();
        assert_eq!(status.code(), Some(1), "without {missing}: {log}");
        assert!(
            log.contains(&format!(
                "missing capabilities {missing}: {missing} is needed"
            )),
            "without {missing}, the error must name it: {log}"
        );
        assert!(log.contains("Nothing was changed"), "{log}");
        assert!(!log.contains("panicked"), "without {missing}: {log}");
        assert!(!socket.exists(), "without {missing}: a socket was opened");
        assert!(!pin_path.exists(), "without {missing}: pins were made");
        for dev in topology.guarded_interfaces() {
            assert!(
                !topology.host().xdp_attached(dev).unwrap(),
                "without {missing}: {dev} was attached"
            );
        }
    }
}

#[test]
fn cap_chown_is_needed_only_to_give_the_socket_to_a_group() {
    let without_chown: Vec<String> = unit_capabilities()
        .into_iter()
        .filter(|name| name != "CAP_CHOWN")
        .collect();
    let topology = Topology::new().unwrap();
    let mut daemon = Daemon::launch(
        topology.host(),
        Some(&ConfigBuilder::allowed_client_v4(&topology)),
        DaemonFiles::new().unwrap(),
        limited_to(&without_chown),
    )
    .unwrap();
    daemon.wait_ready().unwrap();
    assert_eq!(daemon.status()["mode"], "enforce");
    assert_eq!(host_reachable_from(&topology, true), 0, "unlisted got in");
}
