//! Origins: the config file owns `[[allow]]` (origin "config") and `[[always]]` (origin
//! "always") entries, changed by editing the file and `allowlistctl reload`; the CLI owns
//! what it added, and a reload keeps those.

use allowlist_tests::{
    assert_exit_code, Client, ConfigBuilder, Daemon, Mode, Probe, Topology, Verdict, BLOCKED_LINK,
};

const PROBE_PORT: u16 = 7106;

#[test]
fn reload_applies_hand_edits_keeps_cli_entries_and_config_entries_cannot_be_removed_from_the_cli() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    daemon.ctl_ok(&["add", "fd10:1::2", "-d", "added with the CLI"]);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);
    assert_eq!(probe.verdict(Client::Allowed, true), Verdict::Pass);

    // Hand edit: the blocked client joins the [[allow]] list.
    let edited = config.clone().allow(
        format!("{}/32", BLOCKED_LINK.client_v4),
        "blocked client, let in by hand",
    );
    daemon.write_config(&edited);
    let out = daemon.ctl_ok(&["reload"]);
    assert!(out.contains("reloaded"), "{out}");
    assert_eq!(
        probe.verdict(Client::Blocked, false),
        Verdict::Pass,
        "after the reload"
    );
    let listed = daemon.listed("10.10.2.2/32");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].origin, "config");
    assert_eq!(listed[0].description, "blocked client, let in by hand");
    let cli = daemon.listed("fd10:1::2/128");
    assert_eq!(cli.len(), 1, "the reload dropped a CLI entry: {cli:?}");
    assert_eq!(cli[0].origin, "cli");
    assert_eq!(cli[0].description, "added with the CLI");
    assert_eq!(probe.verdict(Client::Allowed, true), Verdict::Pass);

    // The config owns its entries: the CLI can neither remove nor re-describe them.
    let list = daemon.list();
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["remove", "10.10.2.2"]),
        1,
        "remove of a config entry",
    );
    assert!(
        stderr.contains("config file"),
        "must name the config: {stderr}"
    );
    assert!(
        stderr.contains("reload"),
        "must say how to change it: {stderr}"
    );
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["add", "10.10.2.2", "-d", "mine now"]),
        1,
        "add of a config entry",
    );
    assert!(stderr.contains("config file"), "{stderr}");
    assert_eq!(daemon.list(), list, "a refused change changed the list");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);

    // Editing it out again and reloading drops it; the CLI entry stays.
    daemon.write_config(&config);
    daemon.ctl_ok(&["reload"]);
    assert!(daemon.listed("10.10.2.2/32").is_empty());
    assert_eq!(daemon.listed("fd10:1::2/128").len(), 1);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);
    assert_eq!(probe.verdict(Client::Allowed, true), Verdict::Pass);
}

#[test]
fn always_entries_are_listed_pass_after_import_replace_and_cannot_be_removed() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology)
        .always(format!("{}/128", BLOCKED_LINK.client_v6), "management host")
        .always("169.254.169.254", "metadata");
    let daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    daemon.ctl_ok(&["add", "10.10.2.2", "-d", "blocked client v4"]);

    let always = daemon.listed("fd10:2::2/128");
    assert_eq!(always.len(), 1, "{always:?}");
    assert_eq!(always[0].origin, "always");
    assert_eq!(always[0].description, "management host");
    assert_eq!(daemon.listed("169.254.169.254/32")[0].origin, "always");
    assert_eq!(probe.verdict(Client::Blocked, true), Verdict::Pass);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);

    // import --replace replaces what the CLI manages, never the [[always]] entries, even
    // when the file names one of them.
    let file = daemon.files().dir().join("replace.csv");
    std::fs::write(
        &file,
        "ip_address,description\n10.90.0.1,someone\nfd10:2::2,hijacked\n",
    )
    .unwrap();
    let out = daemon.ctl_ok(&["import", file.to_str().unwrap(), "--replace"]);
    assert!(out.contains("1 left to the config file"), "{out}");
    assert!(daemon.listed("10.10.2.2/32").is_empty());
    let always = daemon.listed("fd10:2::2/128");
    assert_eq!(always.len(), 1, "{always:?}");
    assert_eq!(always[0].origin, "always");
    assert_eq!(always[0].description, "management host");
    assert_eq!(
        probe.verdict(Client::Blocked, true),
        Verdict::Pass,
        "an [[always]] source after import --replace"
    );
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);

    let list = daemon.list();
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["remove", "fd10:2::2"]),
        1,
        "remove of an [[always]] entry",
    );
    assert!(stderr.contains("always"), "{stderr}");
    assert!(stderr.contains("config file"), "{stderr}");
    assert_exit_code(
        &daemon.ctl(&["remove", "169.254.169.254", "--force"]),
        1,
        "remove --force of an [[always]] entry",
    );
    assert_exit_code(
        &daemon.ctl(&["add", "fd10:2::2", "-d", "mine"]),
        1,
        "add of an [[always]] entry",
    );
    assert_eq!(daemon.list(), list);
    assert_eq!(probe.verdict(Client::Blocked, true), Verdict::Pass);

    let csv = daemon.ctl_ok(&["export"]);
    assert!(
        !csv.contains("fd10:2::2"),
        "export must leave [[always]] out: {csv}"
    );
    assert!(!csv.contains("169.254.169.254"), "{csv}");
}

#[test]
fn always_entries_do_not_count_toward_a_non_empty_list() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::for_topology(&topology)
        .mode(Mode::Monitor)
        .always(format!("{}/32", BLOCKED_LINK.client_v4), "management host");
    let daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();

    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["activate"]),
        1,
        "activate with nothing but [[always]] entries",
    );
    assert!(stderr.contains("empty"), "{stderr}");
    assert_eq!(daemon.status()["mode"], "monitor");

    daemon.ctl_ok(&["add", "10.10.1.2", "-d", "allowed client"]);
    daemon.ctl_ok(&["activate"]);
    assert_eq!(daemon.status()["mode"], "enforce");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
    assert_eq!(probe.verdict(Client::Blocked, true), Verdict::Drop);
    assert_eq!(probe.verdict(Client::Allowed, false), Verdict::Pass);

    // Nor may the last entry of the operator's own go while enforcing.
    assert_exit_code(
        &daemon.ctl(&["remove", "10.10.1.2"]),
        1,
        "removing the last non-[[always]] entry while enforcing",
    );
    assert_eq!(probe.verdict(Client::Allowed, false), Verdict::Pass);
}

#[test]
fn an_edited_config_mode_wins_over_the_cli_mode_at_reload() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology).mode(Mode::Monitor);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();

    daemon.ctl_ok(&["activate"]);
    // A reload of an unchanged `mode =` keeps what the CLI set.
    daemon.ctl_ok(&["reload"]);
    assert_eq!(daemon.status()["mode"], "enforce");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);

    // An edited one wins.
    daemon.write_config(&config.clone().mode(Mode::Off));
    daemon.ctl_ok(&["reload"]);
    assert_eq!(daemon.status()["mode"], "off");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
}
