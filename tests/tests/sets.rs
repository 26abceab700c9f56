//! Named sets: every entry belongs to one (`default` unless `--set` names another), so
//! that several scripts or teams can each own their entries. `import --set NAME
//! --replace` replaces that set alone; a source listed by several sets gets what any of
//! them allows; the config file's sets are read-only from the CLI; sets survive a
//! restart.

use allowlist_tests::{assert_exit_code, Client, ConfigBuilder, Daemon, Probe, Topology, Verdict};

const PROBE_PORT: u16 = 7131;
const BLOCKED_V4: &str = "10.10.2.2/32";

fn sets_of(daemon: &Daemon, network: &str) -> Vec<String> {
    let mut sets: Vec<String> = daemon
        .listed(network)
        .into_iter()
        .map(|entry| entry.set)
        .collect();
    sets.sort();
    sets
}

#[test]
fn replacing_one_set_leaves_the_other_sets_and_the_traffic_they_allow() {
    let topology = Topology::new().unwrap();
    let mut daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client(&topology)).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);

    // Two scripts each own a set; the same network may be in both.
    let out = daemon.ctl_ok(&["add", "10.10.2.2", "--set", "ci", "-d", "ci runner"]);
    assert!(out.contains("in set ci"), "{out}");
    daemon.ctl_ok(&["add", "10.10.2.2", "--set", "vpn"]);
    daemon.ctl_ok(&["add", "198.51.100.7", "-d", "mine"]);
    assert_eq!(sets_of(&daemon, BLOCKED_V4), ["ci", "vpn"]);
    assert_eq!(sets_of(&daemon, "198.51.100.7/32"), ["default"]);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);

    // The ci script's next run replaces its set: 10.10.2.2 leaves ci only, so the
    // vpn set still lets it in, and the default set is untouched.
    let file = daemon.files().dir().join("ci.csv");
    std::fs::write(&file, "ip_address,description\n203.0.113.5,new runner\n").unwrap();
    let out = daemon.ctl_ok(&["import", file.to_str().unwrap(), "--set", "ci", "--replace"]);
    assert!(out.contains("1 added, 0 updated, 1 removed"), "{out}");
    assert_eq!(sets_of(&daemon, BLOCKED_V4), ["vpn"]);
    assert_eq!(sets_of(&daemon, "203.0.113.5/32"), ["ci"]);
    assert_eq!(sets_of(&daemon, "198.51.100.7/32"), ["default"]);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);

    // Removing names the set; the network in another set is said to be there.
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["remove", "10.10.2.2"]),
        1,
        "remove from a set that does not hold it",
    );
    assert!(stderr.contains("listed in set vpn"), "{stderr}");
    daemon.ctl_ok(&["remove", "10.10.2.2", "--set", "vpn"]);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);

    // list and export take --set.
    let ci: Vec<_> = daemon
        .ctl_ok(&["list", "--set", "ci"])
        .lines()
        .map(String::from)
        .collect();
    assert!(
        ci.iter().any(|line| line.contains("203.0.113.5/32")),
        "{ci:?}"
    );
    assert!(
        !ci.iter().any(|line| line.contains("198.51.100.7")),
        "{ci:?}"
    );
    let export = daemon.ctl_ok(&["export", "--set", "ci"]);
    assert_eq!(
        export.lines().skip(1).collect::<Vec<_>>(),
        ["203.0.113.5/32,new runner,,"]
    );

    // Sets are kept across a restart.
    daemon.terminate().unwrap();
    daemon.restart().unwrap();
    assert_eq!(sets_of(&daemon, "203.0.113.5/32"), ["ci"]);
    assert_eq!(sets_of(&daemon, "198.51.100.7/32"), ["default"]);
}

#[test]
fn the_config_files_sets_are_read_only_from_the_cli() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(
        &topology,
        &ConfigBuilder::allowed_client(&topology).always("169.254.169.254", "metadata"),
    )
    .unwrap();
    assert_eq!(sets_of(&daemon, "10.10.1.2/32"), ["config"]);
    assert_eq!(sets_of(&daemon, "169.254.169.254/32"), ["always"]);
    for set in ["config", "always"] {
        let (_, stderr) = assert_exit_code(
            &daemon.ctl(&["add", "198.51.100.9", "--set", set]),
            1,
            "add to a config-file set",
        );
        assert!(
            stderr.contains(&format!("set {set} is read-only")),
            "{stderr}"
        );
    }
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["add", "198.51.100.9", "--set", "Bad Name"]),
        2,
        "an invalid set name",
    );
    assert!(stderr.contains("invalid set name"), "{stderr}");
    assert!(daemon.listed("198.51.100.9/32").is_empty());
}
