//! Switching modes from the CLI: activate (refused on an empty list), monitor, deactivate,
//! commit-confirm, and a list and mode that survive the daemon stopping or dying.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allowlist_tests::{
    assert_exit_code, wait_until, Client, ConfigBuilder, Daemon, ListedEntry, Mode, Probe,
    Topology, Verdict,
};

const PROBE_PORT: u16 = 7103;
/// How long a revert may take past its deadline (the deadline has 1 s resolution).
const REVERT_TIMEOUT: Duration = Duration::from_secs(15);

fn mode(daemon: &Daemon) -> String {
    daemon.status()["mode"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn activate_is_refused_on_an_empty_list_and_deactivate_keeps_the_list() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::for_topology(&topology).mode(Mode::Monitor);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();

    let (_, stderr) =
        assert_exit_code(&daemon.ctl(&["activate"]), 1, "activate with an empty list");
    assert!(stderr.contains("empty"), "{stderr}");
    assert_eq!(mode(&daemon), "monitor");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
    assert_eq!(probe.verdict(Client::Allowed, false), Verdict::Pass);

    daemon.ctl_ok(&["add", "10.10.1.2", "-d", "allowed client v4"]);
    daemon.ctl_ok(&["add", "fd10:1::2", "-d", "allowed client v6"]);
    let list = daemon.list();

    daemon.ctl_ok(&["deactivate"]);
    assert_eq!(mode(&daemon), "off");
    assert_eq!(daemon.list(), list, "deactivate must keep the list");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);

    daemon.ctl_ok(&["monitor"]);
    assert_eq!(mode(&daemon), "monitor");
    assert_eq!(daemon.list(), list, "monitor must keep the list");

    daemon.ctl_ok(&["activate"]);
    assert_eq!(mode(&daemon), "enforce");
    for v6 in [false, true] {
        assert_eq!(probe.verdict(Client::Allowed, v6), Verdict::Pass);
        assert_eq!(probe.verdict(Client::Blocked, v6), Verdict::Drop);
    }

    // While enforcing, the last entry cannot go: neither by remove nor by an empty
    // import --replace.
    daemon.ctl_ok(&["remove", "fd10:1::2"]);
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["remove", "10.10.1.2"]),
        1,
        "removing the last entry while enforcing",
    );
    assert!(stderr.contains("empty"), "{stderr}");
    let empty = daemon.files().dir().join("empty.csv");
    std::fs::write(&empty, "ip_address,description\n").unwrap();
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["import", empty.to_str().unwrap(), "--replace"]),
        1,
        "import --replace of an empty file while enforcing",
    );
    assert!(stderr.contains("empty"), "{stderr}");
    assert_eq!(daemon.listed("10.10.1.2/32").len(), 1);
    assert_eq!(mode(&daemon), "enforce");
    assert_eq!(probe.verdict(Client::Allowed, false), Verdict::Pass);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);

    daemon.ctl_ok(&["deactivate"]);
    assert_eq!(mode(&daemon), "off");
    assert_eq!(daemon.listed("10.10.1.2/32").len(), 1);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
}

#[test]
fn activate_with_confirm_reverts_to_the_previous_mode_unless_confirmed() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology).mode(Mode::Monitor);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();

    let (_, stderr) =
        assert_exit_code(&daemon.ctl(&["confirm"]), 1, "confirm with nothing pending");
    assert!(stderr.contains("nothing to confirm"), "{stderr}");

    // 6 s: long enough for the status and both probes below to come first on a busy
    // machine.
    let activated = Instant::now();
    let asked_at = unix_now();
    let out = daemon.ctl_ok(&["activate", "--confirm", "6s"]);
    assert!(out.contains("reverts to monitor"), "{out}");
    let status = daemon.status();
    assert_eq!(status["mode"], "enforce", "{status}");
    let deadline = status["confirm_deadline"]
        .as_u64()
        .unwrap_or_else(|| panic!("no confirm_deadline while pending: {status}"));
    assert!(
        (asked_at + 5..=unix_now() + 7).contains(&deadline),
        "deadline {deadline} is not ~6 s after {asked_at}"
    );
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);
    assert_eq!(probe.verdict(Client::Allowed, false), Verdict::Pass);

    assert!(
        wait_until(REVERT_TIMEOUT, || mode(&daemon) == "monitor"),
        "not reverted {:?} after activate --confirm 6s",
        activated.elapsed()
    );
    assert!(
        activated.elapsed() >= Duration::from_secs(5),
        "reverted after {:?}, before the deadline",
        activated.elapsed()
    );
    let status = daemon.status();
    assert!(status["confirm_deadline"].is_null(), "{status}");
    assert_eq!(
        probe.verdict(Client::Blocked, false),
        Verdict::Pass,
        "after the revert to monitor"
    );
    assert_exit_code(&daemon.ctl(&["confirm"]), 1, "confirm after the revert");
}

#[test]
fn a_confirmed_activation_stays_enforcing_past_the_deadline() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology).mode(Mode::Monitor);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();

    daemon.ctl_ok(&["activate", "--confirm", "2s"]);
    let deadline = daemon.status()["confirm_deadline"].as_u64().unwrap();
    let out = daemon.ctl_ok(&["confirm"]);
    assert!(out.contains("confirmed"), "{out}");
    let status = daemon.status();
    assert!(status["confirm_deadline"].is_null(), "{status}");

    // Past the deadline, with a second's margin for its resolution.
    while unix_now() <= deadline + 1 {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(mode(&daemon), "enforce", "a confirmed activation reverted");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);
    assert_eq!(probe.verdict(Client::Allowed, false), Verdict::Pass);
    assert_exit_code(&daemon.ctl(&["confirm"]), 1, "a second confirm");
}

#[test]
fn a_pending_confirm_survives_a_daemon_restart() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology).mode(Mode::Monitor);
    let mut daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();

    daemon.ctl_ok(&["activate", "--confirm", "5s"]);
    let deadline = daemon.status()["confirm_deadline"].as_u64().unwrap();
    let status = daemon.terminate().unwrap();
    assert_eq!(status.code(), Some(0));
    daemon.restart().unwrap();
    let status = daemon.status();
    if unix_now() < deadline {
        assert_eq!(status["mode"], "enforce", "{status}");
        assert_eq!(status["confirm_deadline"], deadline, "{status}");
    }
    assert!(
        wait_until(REVERT_TIMEOUT, || mode(&daemon) == "monitor"),
        "the restarted daemon did not revert the unconfirmed activation"
    );
    assert!(
        unix_now() >= deadline,
        "reverted before the deadline {deadline}"
    );
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
}

/// Commit-confirm must not depend on the daemon: the deadline is in the kernel, and the
/// XDP program reverts by itself when it passes unconfirmed, here with the daemon killed.
/// The next daemon takes the revert as the state.
#[test]
fn an_unconfirmed_activation_reverts_in_the_kernel_on_time_with_the_daemon_killed() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology).mode(Mode::Monitor);
    let mut daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();

    daemon.ctl_ok(&["activate", "--confirm", "4s"]);
    let deadline = daemon.status()["confirm_deadline"].as_u64().unwrap();
    daemon.kill9();
    assert!(!daemon.is_running());
    assert_eq!(
        probe.verdict(Client::Blocked, false),
        Verdict::Drop,
        "enforcing until the deadline, with or without a daemon"
    );
    assert!(
        unix_now() < deadline,
        "too slow to look before the deadline"
    );

    assert!(
        wait_until(REVERT_TIMEOUT, || probe.passes(Client::Blocked, false)),
        "with no daemon running, the kernel did not revert to monitor"
    );
    let reverted_at = unix_now();
    assert!(
        reverted_at >= deadline,
        "reverted at {reverted_at}, before the deadline {deadline}"
    );
    assert_eq!(probe.verdict(Client::Allowed, false), Verdict::Pass);

    daemon.restart().unwrap();
    let status = daemon.status();
    assert_eq!(status["mode"], "monitor", "{status}");
    assert!(status["confirm_deadline"].is_null(), "{status}");
    let log = daemon.log();
    assert!(
        log.contains("was not confirmed by its deadline"),
        "the restarted daemon does not say the change was reverted:\n{log}"
    );
    assert_eq!(
        probe.verdict(Client::Blocked, false),
        Verdict::Pass,
        "the restarted daemon enforced the unconfirmed activation again"
    );
}

/// `list --json`, everything but the `added_at` of entries from the config file, which
/// [`restart_keeps_when_config_entries_were_added`] checks on its own.
fn list_without_config_times(daemon: &Daemon) -> Vec<ListedEntry> {
    daemon
        .list()
        .into_iter()
        .map(|mut entry| {
            if entry.origin == "config" {
                entry.added_at.clear();
            }
            entry
        })
        .collect()
}

#[test]
fn restart_and_kill_9_keep_the_list_and_the_mode() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology).mode(Mode::Monitor);
    let mut daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();

    daemon.ctl_ok(&["add", "fd10:2::2", "-d", "blocked client v6, let in"]);
    daemon.ctl_ok(&["add", "10.81.0.1", "--expires", "1h", "-d", "temporary"]);
    let csv = daemon.files().dir().join("seed.csv");
    std::fs::write(
        &csv,
        "ip_address,description\n10.80.0.0/16,\"imported, kept\"\n",
    )
    .unwrap();
    daemon.ctl_ok(&["import", csv.to_str().unwrap()]);
    daemon.ctl_ok(&["activate"]);

    let list = list_without_config_times(&daemon);
    let status = daemon.status();
    let traffic = probe.all();
    assert_eq!(
        traffic
            .iter()
            .map(|(_, verdict)| *verdict)
            .collect::<Vec<_>>(),
        [Verdict::Pass, Verdict::Drop, Verdict::Drop, Verdict::Pass],
        "allowed v4 and blocked v6 listed, the others not: {traffic:?}"
    );

    let exit = daemon.terminate().unwrap();
    assert_eq!(exit.code(), Some(0), "SIGTERM");
    daemon.restart().unwrap();
    assert_eq!(
        list_without_config_times(&daemon),
        list,
        "list after SIGTERM + start"
    );
    assert_eq!(daemon.status(), status, "status after SIGTERM + start");
    assert_eq!(probe.all(), traffic, "traffic after SIGTERM + start");

    daemon.kill9();
    daemon.restart().unwrap();
    assert_eq!(
        list_without_config_times(&daemon),
        list,
        "list after kill -9 + start"
    );
    assert_eq!(daemon.status(), status, "status after kill -9 + start");
    assert_eq!(probe.all(), traffic, "traffic after kill -9 + start");
}

/// `list` shows when each entry was added; the code keeps that time for config entries
/// across reloads "so `list` does not show every reload as a new addition", and README
/// promises that restarting "restores the same list". A restart must not show every
/// config entry as added just now either.
#[test]
fn restart_keeps_when_config_entries_were_added() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology).mode(Mode::Monitor);
    let mut daemon = Daemon::start(&topology, &config).unwrap();
    let before = daemon.listed("10.10.1.2/32");
    assert_eq!(before.len(), 1, "{before:?}");
    // Make sure the clock moves past the second the entry was first seen in.
    let first_seen = unix_now();
    while unix_now() == first_seen {
        std::thread::sleep(Duration::from_millis(50));
    }

    daemon.ctl_ok(&["reload"]);
    assert_eq!(
        daemon.listed("10.10.1.2/32"),
        before,
        "a reload re-dated the config entry"
    );
    daemon.terminate().unwrap();
    daemon.restart().unwrap();
    assert_eq!(
        daemon.listed("10.10.1.2/32"),
        before,
        "a restart re-dated the config entry"
    );
}

/// Enforcing an empty list is refused everywhere (start, activate, remove, import
/// --replace, reload) because it drops all IP traffic — and a daemon whose state says
/// "enforce, empty" refuses to start. A temporary last entry expiring while enforcing
/// must not get the host there either.
#[test]
fn the_last_entry_expiring_while_enforcing_neither_locks_everyone_out_nor_breaks_restart() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::for_topology(&topology).mode(Mode::Monitor);
    let mut daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    daemon.ctl_ok(&["add", "10.10.1.2", "--expires", "2s", "-d", "temporary"]);
    daemon.ctl_ok(&["activate"]);
    assert_eq!(probe.verdict(Client::Allowed, false), Verdict::Pass);

    assert!(
        wait_until(REVERT_TIMEOUT, || daemon.list().is_empty()),
        "the temporary entry did not expire"
    );
    // Every consequence is collected, so that one run shows them all.
    let mut problems = Vec::new();
    let status = daemon.status();
    if status["mode"] == "enforce" {
        problems.push(format!(
            "enforcing an empty list after the last entry expired: {status}"
        ));
    }
    let allowed = probe.verdict(Client::Allowed, false);
    if allowed != Verdict::Pass {
        problems.push(format!(
            "the host is cut off from every IP source: the formerly listed client gets {allowed:?}"
        ));
    }
    daemon.terminate().unwrap();
    if let Err(error) = daemon.restart() {
        let error = format!("{error:#}");
        let reason = error
            .lines()
            .find(|line| line.contains("refused") || line.contains("empty"))
            .unwrap_or(&error);
        problems.push(format!(
            "the daemon no longer starts with its own saved state: {reason}"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
