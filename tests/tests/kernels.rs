//! What depends on the running kernel, checked on whichever kernel runs the suite (this
//! host's, and Debian 12's 6.1 under `cargo xtask vm`): the daemon says which kernel it
//! runs on and how each interface's flow tracker is attached — a TCX link from Linux 6.6,
//! a tc filter before — keeps that attachment across restarts without doubling it, and
//! `uninstall` removes it.

use allowlist_tests::{ConfigBuilder, Daemon, Topology};

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

/// TCX arrived in Linux 6.6.
fn kernel_has_tcx(release: &str) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse::<u32>().ok());
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (6, 6)
}

/// The flow tracker filters on `interface`'s egress, as `tc` lists them (one line each,
/// which names the program).
fn tc_filters(topology: &Topology, interface: &str) -> usize {
    topology
        .host()
        .run(&["tc", "filter", "show", "dev", interface, "egress"])
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("track_flows"))
        .count()
}

#[test]
fn the_flow_tracker_is_attached_the_way_the_kernel_allows_kept_across_restarts_and_uninstalled() {
    let topology = Topology::new().unwrap();
    let mut daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client(&topology)).unwrap();
    let release = kernel_release();
    let (expected, filters) = if kernel_has_tcx(&release) {
        ("tcx", 0)
    } else {
        ("tc", 1)
    };

    for start in ["first start", "restart after kill -9"] {
        let status = daemon.status();
        assert_eq!(status["kernel"], release.as_str(), "{start}: {status}");
        for interface in status["interfaces"].as_array().unwrap() {
            assert_eq!(interface["egress"], expected, "{start}: {interface}");
            let name = interface["name"].as_str().unwrap();
            assert_eq!(
                tc_filters(&topology, name),
                filters,
                "{start}: tc filters of ours on {name}"
            );
        }
        assert!(
            daemon.ctl_ok(&["status"]).contains("flow tracker"),
            "{start}: `status` says how the flow tracker is attached"
        );
        daemon.kill9();
        daemon.restart().unwrap();
    }

    daemon.kill9();
    let uninstalled = daemon.uninstall().unwrap();
    assert!(uninstalled.status.success(), "{uninstalled:?}");
    for interface in topology.guarded_interfaces() {
        assert_eq!(
            tc_filters(&topology, interface),
            0,
            "{interface} after uninstall"
        );
    }
    // Uninstall leaves the clsact qdisc (it may serve others): a new start attaches to it.
    daemon.restart().unwrap();
    assert_eq!(daemon.status()["mode"], "enforce");
    for interface in topology.guarded_interfaces() {
        assert_eq!(
            tc_filters(&topology, interface),
            filters,
            "{interface} after a start following uninstall"
        );
    }
}

#[test]
fn kernel_versions_compare_by_major_then_minor() {
    assert!(kernel_has_tcx("6.18.44-fc-v595"));
    assert!(kernel_has_tcx("6.6.0"));
    assert!(!kernel_has_tcx("6.1.0-57-cloud-amd64"));
    assert!(!kernel_has_tcx("5.15.0-101-generic"));
}
