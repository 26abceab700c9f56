//! Managing the list live with `allowlistctl`: add, re-add, remove, temporary entries,
//! `check`, export → import round trips and many clients at once. Every change is judged
//! where it matters: by the packets the kernel lets through afterwards.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allowlist_tests::{
    assert_exit_code, Binaries, Client, ConfigBuilder, Daemon, ListedEntry, Mode, Probe, Topology,
    Verdict, BLOCKED_LINK,
};

const PROBE_PORT: u16 = 7101;

/// The network `list` shows for a single address.
fn host_network(v6: bool) -> String {
    let blocked = BLOCKED_LINK.client_ip(v6);
    if v6 {
        format!("{blocked}/128")
    } else {
        format!("{blocked}/32")
    }
}

fn family(v6: bool) -> &'static str {
    if v6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Seconds since the epoch of an RFC 3339 UTC time as the CLI prints it
/// (`2025-11-25T02:04:05Z`).
fn rfc3339_to_unix(text: &str) -> u64 {
    let parse = |range: std::ops::Range<usize>| -> i64 {
        text.get(range)
            .and_then(|digits| digits.parse().ok())
            .unwrap_or_else(|| panic!("not an RFC 3339 UTC time: {text:?}"))
    };
    assert!(
        text.len() == 20 && text.ends_with('Z'),
        "not an RFC 3339 UTC time: {text:?}"
    );
    let (year, month, day) = (parse(0..4), parse(5..7), parse(8..10));
    let (hour, minute, second) = (parse(11..13), parse(14..16), parse(17..19));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + hour * 3_600 + minute * 60 + second) as u64
}

#[test]
fn add_lets_a_source_through_re_add_changes_only_what_is_given_and_remove_drops_it_again() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client(&topology)).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();

    for v6 in [false, true] {
        let family = family(v6);
        let blocked = BLOCKED_LINK.client_ip(v6).to_string();
        let network = host_network(v6);
        assert_eq!(
            probe.verdict(Client::Blocked, v6),
            Verdict::Drop,
            "{family}: unlisted before add"
        );

        let out = daemon.ctl_ok(&["add", &blocked, "--description", "first"]);
        assert!(out.contains(&format!("added {network}")), "{out}");
        assert_eq!(
            probe.verdict(Client::Blocked, v6),
            Verdict::Pass,
            "{family}: after add"
        );
        assert_eq!(
            probe.verdict(Client::Blocked, !v6),
            Verdict::Drop,
            "{family}: adding one family must not let the other through"
        );
        let listed = daemon.listed(&network);
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].description, "first", "{listed:?}");
        assert_eq!(listed[0].origin, "cli", "{listed:?}");
        assert_eq!(listed[0].expires_at, None, "{listed:?}");

        // The same network again, written as a CIDR this time: an update, not a second entry.
        let out = daemon.ctl_ok(&["add", &network, "-d", "second, \"updated\" ✓"]);
        assert!(out.contains(&format!("updated {network}")), "{out}");
        let listed = daemon.listed(&network);
        assert_eq!(listed.len(), 1, "re-add must not duplicate: {listed:?}");
        assert_eq!(listed[0].description, "second, \"updated\" ✓", "{listed:?}");
        assert_eq!(listed[0].origin, "cli", "{listed:?}");

        // Again without a description: kept, never silently cleared.
        daemon.ctl_ok(&["add", &blocked]);
        let listed = daemon.listed(&network);
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(
            listed[0].description, "second, \"updated\" ✓",
            "re-add without -d keeps the description: {listed:?}"
        );
        // An empty one clears it.
        daemon.ctl_ok(&["add", &blocked, "-d", ""]);
        assert_eq!(daemon.listed(&network)[0].description, "", "-d \"\" clears");
        assert_eq!(
            probe.verdict(Client::Blocked, v6),
            Verdict::Pass,
            "{family}: after updates"
        );

        let out = daemon.ctl_ok(&["remove", &blocked]);
        assert!(out.contains(&format!("removed {network}")), "{out}");
        assert!(
            daemon.listed(&network).is_empty(),
            "still listed after remove"
        );
        assert_eq!(
            probe.verdict(Client::Blocked, v6),
            Verdict::Drop,
            "{family}: after remove"
        );
        assert_eq!(
            probe.verdict(Client::Allowed, v6),
            Verdict::Pass,
            "{family}: the allowed client must be unaffected"
        );
    }

    // Removing what is not listed is an error; an address that does not parse is usage.
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["remove", "10.10.2.2"]),
        1,
        "remove of an unlisted address",
    );
    assert!(stderr.contains("not on the allowlist"), "{stderr}");
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["add", "10.10.2.300"]),
        2,
        "add of an address that does not parse",
    );
    assert!(stderr.contains("10.10.2.300"), "{stderr}");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);
}

#[test]
fn add_with_expires_passes_until_the_entry_expires_and_list_shows_when() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client(&topology)).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();

    // 8 s: long enough for a second add and two probes to see it pass first on a busy
    // machine.
    let added_at = unix_now();
    let started = Instant::now();
    let out = daemon.ctl_ok(&[
        "add",
        &BLOCKED_LINK.client_v4.to_string(),
        "--expires",
        "8s",
        "-d",
        "dynamic worker",
    ]);
    assert!(
        out.contains("until"),
        "add --expires should say until when: {out}"
    );
    let added_v6_at = unix_now();
    daemon.ctl_ok(&[
        "add",
        &BLOCKED_LINK.client_v6.to_string(),
        "--expires",
        "8s",
    ]);
    for v6 in [false, true] {
        assert_eq!(
            probe.verdict(Client::Blocked, v6),
            Verdict::Pass,
            "{} before expiry",
            family(v6)
        );
    }

    let text = daemon.ctl_ok(&["list"]);
    for v6 in [false, true] {
        let listed = daemon.listed(&host_network(v6));
        assert_eq!(listed.len(), 1, "{listed:?}");
        let expires_at = listed[0]
            .expires_at
            .clone()
            .unwrap_or_else(|| panic!("no expiry shown: {listed:?}"));
        let expires = rfc3339_to_unix(&expires_at);
        let added = if v6 { added_v6_at } else { added_at };
        assert!(
            (added + 7..=added + 9).contains(&expires),
            "expiry {expires_at} is not ~8 s after {added}"
        );
        let row = text
            .lines()
            .find(|line| line.contains(&host_network(v6)))
            .unwrap_or_else(|| panic!("{} not in `list`:\n{text}", host_network(v6)));
        assert!(
            row.contains(&expires_at),
            "`list` does not show the expiry {expires_at}: {row}"
        );
    }

    assert!(
        probe.wait_for(
            Client::Blocked,
            false,
            Verdict::Drop,
            Duration::from_secs(20)
        ),
        "the expired IPv4 entry still passes {:?} after adding it",
        started.elapsed()
    );
    assert!(
        started.elapsed() >= Duration::from_secs(7),
        "expired after {:?}, before its time",
        started.elapsed()
    );
    assert!(
        probe.wait_for(
            Client::Blocked,
            true,
            Verdict::Drop,
            Duration::from_secs(20)
        ),
        "the expired IPv6 entry still passes"
    );
    for v6 in [false, true] {
        assert!(
            daemon.listed(&host_network(v6)).is_empty(),
            "expired entry still listed: {:?}",
            daemon.list()
        );
        assert_eq!(probe.verdict(Client::Allowed, v6), Verdict::Pass);
    }
}

#[test]
fn check_names_the_longest_matching_entry_and_the_verdict_the_kernel_gives() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::for_topology(&topology)
        .mode(Mode::Enforce)
        .allow("10.10.1.0/24", "allowed subnet")
        .allow("fd10:1::/64", "allowed subnet v6");
    let daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    daemon.ctl_ok(&["add", "10.10.1.2/32", "-d", "allowed client"]);

    // The /32 decides for the client, although the /24 covers it too.
    let text = daemon.check(&["10.10.1.2"]);
    assert!(text.contains("PASS"), "{text}");
    assert!(text.contains("10.10.1.2/32"), "{text}");
    assert!(text.contains("allowed client"), "{text}");
    assert!(text.contains("passed_listed"), "{text}");
    assert!(
        !text.contains("10.10.1.0/24"),
        "the /24 does not decide: {text}"
    );
    let json = daemon.check_json(&["10.10.1.2"]);
    assert_eq!(json["address"], "10.10.1.2", "{json}");
    assert_eq!(json["mode"], "enforce", "{json}");
    assert_eq!(json["verdict"], "pass", "{json}");
    assert_eq!(json["reason"], "passed_listed", "{json}");
    assert_eq!(json["entry"]["network"], "10.10.1.2/32", "{json}");
    assert_eq!(json["entry"]["description"], "allowed client", "{json}");
    assert_eq!(json["entry"]["origin"], "cli", "{json}");
    assert_eq!(probe.verdict(Client::Allowed, false), Verdict::Pass);

    // Another address of the subnet: the /24 from the config decides.
    let json = daemon.check_json(&["10.10.1.77"]);
    assert_eq!(json["verdict"], "pass", "{json}");
    assert_eq!(json["entry"]["network"], "10.10.1.0/24", "{json}");
    assert_eq!(json["entry"]["origin"], "config", "{json}");
    let json = daemon.check_json(&["fd10:1::2"]);
    assert_eq!(json["verdict"], "pass", "{json}");
    assert_eq!(json["entry"]["network"], "fd10:1::/64", "{json}");
    assert_eq!(probe.verdict(Client::Allowed, true), Verdict::Pass);

    // Unlisted while enforcing: DROP, and the kernel agrees.
    for v6 in [false, true] {
        let blocked = BLOCKED_LINK.client_ip(v6).to_string();
        let text = daemon.check(&[&blocked]);
        assert!(text.contains("DROP"), "{text}");
        assert!(text.contains("not listed"), "{text}");
        assert!(text.contains("dropped_not_listed"), "{text}");
        let json = daemon.check_json(&[&blocked]);
        assert_eq!(json["verdict"], "drop", "{json}");
        assert_eq!(json["reason"], "dropped_not_listed", "{json}");
        assert!(json["entry"].is_null(), "{json}");
        assert_eq!(probe.verdict(Client::Blocked, v6), Verdict::Drop);
    }

    // Monitor: passes, counted as monitor_would_drop, and the counter moves.
    daemon.ctl_ok(&["monitor"]);
    let text = daemon.check(&["10.10.2.2"]);
    assert!(text.contains("PASS"), "{text}");
    assert!(text.contains("monitor_would_drop"), "{text}");
    let json = daemon.check_json(&["10.10.2.2"]);
    assert_eq!(json["mode"], "monitor", "{json}");
    assert_eq!(json["verdict"], "pass", "{json}");
    assert_eq!(json["reason"], "monitor_would_drop", "{json}");
    let before = daemon.stats();
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
    let counted = daemon.stats().since(&before);
    assert!(
        counted.get("monitor_would_drop").packets >= Probe::DATAGRAMS,
        "{counted:?}"
    );
    let json = daemon.check_json(&["10.10.1.2"]);
    assert_eq!(json["reason"], "passed_listed", "{json}");

    // Off: everything passes as passed_off.
    daemon.ctl_ok(&["deactivate"]);
    let json = daemon.check_json(&["10.10.2.2"]);
    assert_eq!(json["mode"], "off", "{json}");
    assert_eq!(json["verdict"], "pass", "{json}");
    assert_eq!(json["reason"], "passed_off", "{json}");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
}

#[test]
fn export_then_import_replace_leaves_the_list_exactly_as_it_was() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client(&topology).always("169.254.169.254", "metadata");
    let daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    daemon.ctl_ok(&[
        "add",
        "10.10.2.2",
        "-d",
        "blocked client, \"quoted\"\nsecond line",
    ]);
    daemon.ctl_ok(&["add", "fd10:2::2/128", "-d", "Zürich ☃ café"]);
    daemon.ctl_ok(&["add", "10.60.0.0/16"]);
    daemon.ctl_ok(&[
        "add",
        "2001:db8::/48",
        "-d",
        "  padded, with ; and \t tab  ",
    ]);
    let imported = daemon.files().dir().join("seed.csv");
    std::fs::write(
        &imported,
        "ip_address,description\n10.61.0.1,\"from csv, \"\"quoted\"\"\"\n",
    )
    .unwrap();
    daemon.ctl_ok(&["import", imported.to_str().unwrap()]);

    let fields = |daemon: &Daemon| -> Vec<(String, String, String)> {
        daemon.list().iter().map(|e| e.managed_fields()).collect()
    };
    let before = fields(&daemon);
    assert_eq!(before.len(), 8, "{before:?}");
    let traffic_before = probe.all();

    let csv = daemon.ctl_ok(&["export"]);
    assert!(
        csv.starts_with("ip_address,description,ports,expires_at\n"),
        "export must start with the header: {csv}"
    );
    assert!(
        !csv.contains("169.254.169.254"),
        "export must leave [[always]] entries out: {csv}"
    );
    let exported = daemon.files().dir().join("exported.csv");
    std::fs::write(&exported, &csv).unwrap();
    let out = daemon.ctl_ok(&["import", exported.to_str().unwrap(), "--replace"]);
    assert!(out.contains("0 added, 0 updated, 0 removed"), "{out}");

    assert_eq!(
        fields(&daemon),
        before,
        "export → import --replace changed the list"
    );
    assert_eq!(
        probe.all(),
        traffic_before,
        "export → import --replace changed traffic"
    );
}

#[test]
fn concurrent_clients_adding_at_once_all_get_their_entries() {
    const THREADS: u8 = 8;
    const PER_THREAD: u8 = 25;
    let topology = Topology::new().unwrap();
    let mut daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client(&topology)).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    let network = |thread: u8, n: u8| format!("10.100.{thread}.{n}/32");

    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let daemon = &daemon;
            scope.spawn(move || {
                for n in 1..=PER_THREAD {
                    let description = format!("thread {thread} entry {n}");
                    daemon.ctl_ok(&["add", &network(thread, n), "-d", &description]);
                }
            });
        }
    });

    let listed = daemon.list();
    for thread in 0..THREADS {
        for n in 1..=PER_THREAD {
            let wanted = network(thread, n);
            let entry = listed
                .iter()
                .find(|entry| entry.network == wanted)
                .unwrap_or_else(|| panic!("{wanted} missing after concurrent adds"));
            assert_eq!(entry.description, format!("thread {thread} entry {n}"));
        }
    }
    let cli = listed.iter().filter(|entry| entry.origin == "cli").count();
    assert_eq!(cli, usize::from(THREADS) * usize::from(PER_THREAD));
    let status = daemon.status();
    assert_eq!(
        status["entries"]["ipv4"],
        1 + u64::from(THREADS) * u64::from(PER_THREAD),
        "{status}"
    );
    let check = daemon.check_json(&["10.100.7.25"]);
    assert_eq!(check["entry"]["network"], "10.100.7.25/32", "{check}");
    assert_eq!(probe.verdict(Client::Allowed, false), Verdict::Pass);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);

    // Every one of them was durable before its command returned. (Only the CLI's
    // entries: a restart re-dates config entries, see control_modes.rs.)
    let cli_entries = |daemon: &Daemon| -> Vec<ListedEntry> {
        daemon
            .list()
            .into_iter()
            .filter(|entry| entry.origin == "cli")
            .collect()
    };
    let before = cli_entries(&daemon);
    daemon.kill9();
    daemon.restart().unwrap();
    assert_eq!(
        cli_entries(&daemon),
        before,
        "the CLI's entries after kill -9 and a restart"
    );
}

#[test]
fn completions_prints_a_bash_completion_script() {
    let binaries = Binaries::locate().unwrap();
    let output = std::process::Command::new(&binaries.ctl)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let (stdout, _) = assert_exit_code(&output, 0, "allowlistctl completions bash");
    assert!(stdout.contains("_allowlistctl()"), "{stdout}");
    assert!(stdout.contains("complete -F _allowlistctl"), "{stdout}");
    for command in ["activate", "import", "--replace", "--expires"] {
        assert!(
            stdout.contains(command),
            "{command} missing from completions"
        );
    }
}

/// Sends one raw JSON request line, as any program on the socket could, and returns
/// the reply.
fn raw_request(daemon: &Daemon, line: &str) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(&daemon.files().socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .unwrap_or_else(|error| panic!("no reply to {line}: {error}\n{}", daemon.log()));
    serde_json::from_str(&reply).unwrap_or_else(|error| panic!("{error}: {reply:?}"))
}

#[test]
fn durations_beyond_their_maximum_are_refused_and_no_expiry_time_can_stop_the_timers() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client(&topology).mode(Mode::Monitor);
    let mut daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();

    // From the CLI: a usage error that says what the limit is, and nothing is added.
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["add", "10.99.9.1", "--expires", "10000y"]),
        2,
        "add --expires 10000y",
    );
    assert!(stderr.contains("at most 365d"), "{stderr}");
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["activate", "--confirm", "2d"]),
        2,
        "activate --confirm 2d",
    );
    assert!(stderr.contains("at most 1d"), "{stderr}");

    // From the socket: out-of-range numbers get an error reply and change nothing.
    let list = daemon.list();
    for secs in ["9223372036854775808", "18446744073709551615", "0"] {
        let reply = raw_request(
            &daemon,
            &format!(r#"{{"command":"add","network":"10.99.9.1/32","expires_in_secs":{secs}}}"#),
        );
        assert_eq!(reply["ok"], false, "expires_in_secs {secs}: {reply}");
        let reply = raw_request(
            &daemon,
            &format!(r#"{{"command":"set_mode","mode":"enforce","confirm_secs":{secs}}}"#),
        );
        assert_eq!(reply["ok"], false, "confirm_secs {secs}: {reply}");
    }
    assert_eq!(daemon.list(), list, "a refused request changed the list");
    assert_eq!(daemon.status()["mode"], "monitor");

    // A state file written before these limits may hold any time: the daemon starts,
    // `list` prints it, and the timers still expire what is due and revert on time.
    daemon.terminate().unwrap();
    let state_path = daemon.files().state_dir.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    state["entries"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "network": "10.99.9.1/32",
            "description": "from an older version",
            "origin": "cli",
            "added_at": 1,
            "expires_at": u64::MAX,
        }));
    std::fs::write(&state_path, state.to_string()).unwrap();
    daemon.restart().unwrap();
    let listed = daemon.listed("10.99.9.1/32");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(daemon.ctl_ok(&["list"]).contains("10.99.9.1/32"));

    daemon.ctl_ok(&["activate"]);
    let blocked = BLOCKED_LINK.client_v4.to_string();
    // Long enough to be seen passing first on a busy machine.
    daemon.ctl_ok(&["add", &blocked, "--expires", "8s"]);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
    assert!(
        probe.wait_for(
            Client::Blocked,
            false,
            Verdict::Drop,
            Duration::from_secs(20)
        ),
        "an 8 s entry did not expire with a far-future entry on the list; log:\n{}",
        daemon.log()
    );

    daemon.ctl_ok(&["monitor"]);
    daemon.ctl_ok(&["activate", "--confirm", "3s"]);
    assert!(
        allowlist_tests::wait_until(Duration::from_secs(15), || daemon.status()["mode"]
            == "monitor"),
        "activate --confirm 3s did not revert; log:\n{}",
        daemon.log()
    );
}

#[test]
fn what_is_listed_is_what_was_meant_or_the_operator_is_told() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client(&topology)).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();

    // Host bits: listed as the network, and said so.
    let out = daemon.ctl(&["add", "10.98.6.7/16", "-d", "typo?"]);
    let (stdout, stderr) = assert_exit_code(&out, 0, "add with host bits");
    assert!(stdout.contains("added 10.98.0.0/16"), "{stdout}");
    assert!(
        stderr.contains("host bits") && stderr.contains("10.98.0.0/16"),
        "{stderr}"
    );

    // An IPv4-mapped address stands for the IPv4 client: its IPv4 traffic passes.
    let mapped = format!("::ffff:{}", BLOCKED_LINK.client_v4);
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["add", &mapped, "-d", "mapped"]),
        0,
        "add of an IPv4-mapped address",
    );
    assert!(stderr.contains("IPv4-mapped"), "{stderr}");
    assert_eq!(daemon.listed(&host_network(false)).len(), 1);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);

    // Re-adding without -d keeps the description (and ports and expiry).
    daemon.ctl_ok(&["add", &BLOCKED_LINK.client_v4.to_string()]);
    assert_eq!(daemon.listed(&host_network(false))[0].description, "mapped");
    daemon.ctl_ok(&["remove", &mapped]);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);

    // Everyone: only with --force.
    for everyone in ["0.0.0.0/0", "::/0"] {
        let (_, stderr) = assert_exit_code(
            &daemon.ctl(&["add", everyone]),
            1,
            "add of a network that allows everyone",
        );
        assert!(
            stderr.contains("every source") && stderr.contains("--force"),
            "{stderr}"
        );
    }
    assert!(daemon.listed("::/0").is_empty());
    assert_eq!(probe.verdict(Client::Blocked, true), Verdict::Drop);
    daemon.ctl_ok(&["add", "::/0", "--force", "-d", "all of IPv6, on purpose"]);
    assert_eq!(probe.verdict(Client::Blocked, true), Verdict::Pass);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);
}

#[test]
fn descriptions_reach_a_terminal_escaped_and_json_exactly() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client(&topology)).unwrap();
    let description = "evil\u{1b}[2J\u{1b}]0;owned\u{7}\r\nline\u{202e}gpj.exe";
    daemon.ctl_ok(&["add", "192.0.2.9", "-d", description]);

    let table = daemon.ctl_ok(&["list"]);
    for raw in ['\u{1b}', '\u{7}', '\r', '\u{202e}'] {
        assert!(
            !table.contains(raw),
            "`list` passed {raw:?} to the terminal: {table:?}"
        );
    }
    assert!(table.contains("evil\\u{1b}[2J"), "{table}");
    let check = daemon.check(&["192.0.2.9"]);
    assert!(!check.contains('\u{1b}'), "{check:?}");
    assert_eq!(daemon.listed("192.0.2.9/32")[0].description, description);
}
