//! Fleet: one list for many hosts through etcd. A real etcd runs on the test's loopback
//! (started and killed by [`Etcd`]); each host is a topology of its own (a host
//! namespace and two clients) with its own real daemon, reaching etcd through a relay
//! inside its namespace. What each kernel enforces is judged with real packets: the
//! blocked client passes a host exactly while the fleet set that host follows lists it.
//!
//! A push reaches every host; a host whose established connection a change would cut
//! off holds it (and says so in its status) while the others apply it; losing etcd
//! changes nothing a host enforces, across a restart of the daemon; hosts catch up when
//! etcd is back; compaction past a host's revision sends it through a full read; a
//! malformed value in etcd is reported and never applied. Against an etcd secured as in
//! production (auth on, TLS with client certificates): hosts and `allowlistctl fleet`
//! log in as an etcd user (again after etcd forgot their token) or show certificates,
//! and a host etcd refuses (wrong password, untrusted certificate) says why and keeps
//! its list. A watch connection that goes silent without closing is noticed, opened
//! again, and the host catches up.

use std::{
    io::ErrorKind,
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use allowlist_tests::{
    daemon::toml_string,
    etcd::{Etcd, Security, USER},
    in_netns, wait_until, Binaries, Client, ConfigBuilder, Daemon, Probe, Topology, Verdict,
};
use allowlist_userspace::fleet::etcd::Op;
use serde_json::Value;

const PROBE_PORT: u16 = 7151;
const SERVICE_PORT: u16 = 7152;
const BLOCKED: &str = "10.10.2.2/32";
/// How long a test waits for something hosts do on their own (never asserted as a
/// duration: only that it happens).
const PATIENCE: Duration = Duration::from_secs(60);

/// The `[fleet]` section of host `name`, following set `office`, with `options` (TLS
/// files, user) after it.
fn fleet_section(endpoint: &str, name: &str, options: &str) -> String {
    format!(
        "[fleet]\nendpoints = [{}]\nhost = {}\nsets = [\"office\"]\n{options}",
        toml_string(endpoint),
        toml_string(name)
    )
}

/// A daemon on `topology` that follows the fleet as host `name`, with what `etcd` asks
/// of its clients (TLS files, user). The allowed client is listed by the config file,
/// so an empty fleet set still leaves a list to enforce.
fn start_host<'t>(etcd: &Etcd, topology: &'t Topology, name: &str) -> Daemon<'t> {
    start_host_with(etcd, topology, name, &etcd.fleet_options())
}

/// As [`start_host`], with `options` as the rest of its `[fleet]`.
fn start_host_with<'t>(
    etcd: &Etcd,
    topology: &'t Topology,
    name: &str,
    options: &str,
) -> Daemon<'t> {
    Daemon::start(topology, &host_config(etcd, topology, name, options)).unwrap()
}

fn host_config(etcd: &Etcd, topology: &Topology, name: &str, options: &str) -> ConfigBuilder {
    let endpoint = etcd.endpoint_in(topology.host()).unwrap();
    ConfigBuilder::allowed_client(topology).table(&fleet_section(&endpoint, name, options))
}

/// `allowlistctl fleet` as an operator runs it, from anywhere etcd is reachable.
struct Operator {
    config: PathBuf,
    dir: tempfile::TempDir,
}

impl Operator {
    /// With what `etcd` asks of its clients (TLS files, user).
    fn new(etcd: &Etcd) -> Operator {
        Operator::with(etcd, &etcd.fleet_options())
    }

    /// With `options` as the rest of its `[fleet]`.
    fn with(etcd: &Etcd, options: &str) -> Operator {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("fleet.toml");
        std::fs::write(
            &config,
            format!(
                "[fleet]\nendpoints = [{}]\nhost = \"operator\"\n{options}",
                toml_string(&etcd.url())
            ),
        )
        .unwrap();
        Operator { config, dir }
    }

    /// Pushes `rows` as set `office`, expecting a refusal; what allowlistctl said.
    fn push_refused(&self, rows: &[&str]) -> String {
        let file = self.dir.path().join("refused.csv");
        std::fs::write(
            &file,
            format!("ip_address,description\n{}\n", rows.join("\n")),
        )
        .unwrap();
        let output = self.run(&["push", file.to_str().unwrap(), "--set", "office"]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success(), "the push went through: {said}");
        said
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(Binaries::locate().unwrap().ctl)
            .arg("fleet")
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "allowlistctl fleet {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Pushes `rows` (CSV lines after the header) as set `office`; the revision.
    fn push(&self, rows: &[&str]) -> i64 {
        let file = self.dir.path().join("office.csv");
        let mut csv = String::from("ip_address,description\n");
        for row in rows {
            csv.push_str(row);
            csv.push('\n');
        }
        std::fs::write(&file, csv).unwrap();
        let out = self.ok(&["push", file.to_str().unwrap(), "--set", "office", "--json"]);
        let value: Value = serde_json::from_str(&out).unwrap();
        value["revision"]
            .as_i64()
            .unwrap_or_else(|| panic!("{out}"))
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }

    fn host(&self, name: &str) -> Option<Value> {
        self.status()["hosts"]
            .as_array()
            .and_then(|hosts| hosts.iter().find(|host| host["host"] == name).cloned())
    }
}

fn office(daemon: &Daemon) -> Value {
    let feeds = daemon.ctl_json(&["feeds"]);
    feeds
        .as_array()
        .and_then(|feeds| feeds.iter().find(|feed| feed["name"] == "office"))
        .cloned()
        .unwrap_or_else(|| panic!("no set office in {feeds}"))
}

fn applied(daemon: &Daemon) -> i64 {
    office(daemon)["revision"].as_i64().unwrap_or(0)
}

fn wait_for_verdict(probe: &Probe, daemon: &Daemon, verdict: Verdict, why: &str) {
    assert!(
        wait_until(PATIENCE, || probe.verdict(Client::Blocked, false)
            == verdict),
        "{why}: the blocked client never got {verdict:?}; log:\n{}",
        daemon.log()
    );
}

#[test]
fn a_push_reaches_every_hosts_kernel_and_each_host_reports_the_revision_it_applied() {
    let etcd = Etcd::start().unwrap();
    let operator = Operator::new(&etcd);
    let topologies: Vec<Topology> = (0..3).map(|_| Topology::new().unwrap()).collect();
    let hosts: Vec<Daemon> = topologies
        .iter()
        .enumerate()
        .map(|(i, topology)| start_host(&etcd, topology, &format!("host-{i}")))
        .collect();
    let probes: Vec<Probe> = topologies
        .iter()
        .map(|topology| Probe::start(topology, PROBE_PORT).unwrap())
        .collect();
    for probe in &probes {
        assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);
    }

    // A dry run changes nothing.
    let file = operator.dir.path().join("dry.csv");
    std::fs::write(&file, "ip_address,description\n10.10.2.2,build agent\n").unwrap();
    let out = operator.ok(&[
        "push",
        file.to_str().unwrap(),
        "--set",
        "office",
        "--dry-run",
    ]);
    assert!(
        out.contains("would push set office: 1 entries (1 added"),
        "{out}"
    );
    assert!(etcd
        .client()
        .range_prefix("/allowlist/sets/")
        .unwrap()
        .1
        .is_empty());

    let revision = operator.push(&["10.10.2.2,build agent", "198.51.100.0/24,office"]);
    for (daemon, probe) in hosts.iter().zip(&probes) {
        wait_for_verdict(probe, daemon, Verdict::Pass, "after the push");
        assert!(applied(daemon) >= revision);
        let listed = daemon.listed(BLOCKED);
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].origin, "fleet office");
        assert_eq!(listed[0].description, "build agent");
        assert_eq!(daemon.listed("198.51.100.0/24").len(), 1);
    }
    // Pushing it again writes nothing but the change marker: rows that are the same are
    // not written again (hosts get no event for them).
    let key = "/allowlist/sets/office/198.51.100.0/24";
    let written = etcd.client().get(key).unwrap().1.unwrap().mod_revision;
    let again = operator.push(&["10.10.2.2,build agent", "198.51.100.0/24,office"]);
    assert!(again > revision);
    assert_eq!(
        etcd.client().get(key).unwrap().1.unwrap().mod_revision,
        written
    );

    // The set is etcd's: the local CLI may not change it.
    let out = hosts[0].ctl(&["remove", "10.10.2.2", "--set", "office"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"));

    // Every host publishes that it applied the push.
    assert!(
        wait_until(PATIENCE, || {
            let status = operator.status();
            let hosts = status["hosts"].as_array().cloned().unwrap_or_default();
            hosts.len() == 3
                && hosts.iter().all(|host| {
                    host["lag"] == 0
                        && host["applied_revision"].as_i64() >= Some(revision)
                        && host["entries"] == 2
                        && host["mode"] == "enforce"
                })
        }),
        "fleet status: {}",
        operator.status()
    );
    let table = operator.ok(&["status"]);
    assert!(
        table.contains("host-2") && table.contains("current"),
        "{table}"
    );

    // One-key changes travel the same way.
    operator.ok(&["remove", "10.10.2.2", "--set", "office"]);
    for (daemon, probe) in hosts.iter().zip(&probes) {
        wait_for_verdict(probe, daemon, Verdict::Drop, "after fleet remove");
        assert_eq!(daemon.listed("198.51.100.0/24").len(), 1);
    }
    operator.ok(&["add", "10.10.2.2", "--set", "office", "-d", "back"]);
    for (daemon, probe) in hosts.iter().zip(&probes) {
        wait_for_verdict(probe, daemon, Verdict::Pass, "after fleet add");
    }
    let out = operator.run(&["remove", "192.0.2.1", "--set", "office"]);
    assert_eq!(out.status.code(), Some(1), "removing what is not listed");
}

/// A connection from the blocked client to the host, both ends held open.
fn session(topology: &Topology, listener: &TcpListener) -> (TcpStream, TcpStream) {
    let server: SocketAddr = ([10, 10, 2, 1], SERVICE_PORT).into();
    let client_end = in_netns(topology.blocked(), || {
        TcpStream::connect_timeout(&server, Duration::from_secs(3))
    })
    .unwrap_or_else(|error| panic!("connecting to {server}: {error}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let server_end = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                assert!(std::time::Instant::now() < deadline, "nothing to accept");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(error) => panic!("accept: {error}"),
        }
    };
    (client_end, server_end)
}

#[test]
fn a_host_that_would_be_cut_off_holds_the_change_and_reports_it_while_the_others_apply_it() {
    let etcd = Etcd::start().unwrap();
    let operator = Operator::new(&etcd);
    let (at_risk, other) = (Topology::new().unwrap(), Topology::new().unwrap());
    let holding = start_host(&etcd, &at_risk, "holding");
    let applying = start_host(&etcd, &other, "applying");
    let (holding_probe, applying_probe) = (
        Probe::start(&at_risk, PROBE_PORT).unwrap(),
        Probe::start(&other, PROBE_PORT).unwrap(),
    );
    operator.push(&["10.10.2.2,operator's workstation"]);
    wait_for_verdict(&holding_probe, &holding, Verdict::Pass, "first push");
    wait_for_verdict(&applying_probe, &applying, Verdict::Pass, "first push");

    // The blocked client, listed only by the fleet set, has a session to one host.
    let listener = in_netns(at_risk.host(), || {
        TcpListener::bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), SERVICE_PORT))
    })
    .unwrap();
    listener.set_nonblocking(true).unwrap();
    let (client_end, server_end) = session(&at_risk, &listener);

    let revision = operator.push(&["198.51.100.7,someone else"]);
    wait_for_verdict(
        &applying_probe,
        &applying,
        Verdict::Drop,
        "the other host applies",
    );
    assert!(
        wait_until(PATIENCE, || operator
            .host("holding")
            .is_some_and(|host| host["held"].to_string().contains("held"))),
        "the holding host never reported the held change: {}\nlog:\n{}",
        operator.status(),
        holding.log()
    );
    let status = operator.host("holding").unwrap();
    assert!(status["held"].to_string().contains("10.10.2.2"), "{status}");
    assert!(status["lag"].as_i64() > Some(0), "{status}");
    assert!(office(&holding)["held"].as_str().is_some());
    assert_eq!(holding_probe.verdict(Client::Blocked, false), Verdict::Pass);
    assert!(
        holding.listed("198.51.100.7/32").is_empty(),
        "nothing of a held change is applied"
    );
    assert!(
        wait_until(PATIENCE, || operator.host("applying").is_some_and(
            |host| host["applied_revision"].as_i64() >= Some(revision) && host["held"].is_null()
        )),
        "{}",
        operator.status()
    );

    // The session ends: the held change is applied on its own.
    drop(server_end);
    drop(client_end);
    wait_for_verdict(
        &holding_probe,
        &holding,
        Verdict::Drop,
        "once the session ended",
    );
    assert_eq!(holding.listed("198.51.100.7/32").len(), 1);
    assert!(
        wait_until(PATIENCE, || operator
            .host("holding")
            .is_some_and(|host| host["lag"] == 0 && host["held"].is_null())),
        "{}",
        operator.status()
    );
}

#[test]
fn losing_etcd_changes_nothing_hosts_enforce_even_across_a_restart_and_they_catch_up_when_it_is_back(
) {
    let mut etcd = Etcd::start().unwrap();
    let operator = Operator::new(&etcd);
    let (first, second) = (Topology::new().unwrap(), Topology::new().unwrap());
    let mut restarted = start_host(&etcd, &first, "restarted");
    let running = start_host(&etcd, &second, "running");
    let (restarted_probe, running_probe) = (
        Probe::start(&first, PROBE_PORT).unwrap(),
        Probe::start(&second, PROBE_PORT).unwrap(),
    );
    let revision = operator.push(&["10.10.2.2,ci"]);
    wait_for_verdict(&restarted_probe, &restarted, Verdict::Pass, "push");
    wait_for_verdict(&running_probe, &running, Verdict::Pass, "push");
    assert!(wait_until(PATIENCE, || applied(&restarted) >= revision));

    etcd.stop();
    for daemon in [&restarted, &running] {
        assert!(
            wait_until(PATIENCE, || office(daemon)["error"]
                .as_str()
                .is_some_and(|error| error.contains("disconnected from etcd"))),
            "a host without etcd must say so: {}",
            office(daemon)
        );
    }
    assert_eq!(
        restarted_probe.verdict(Client::Blocked, false),
        Verdict::Pass
    );
    assert_eq!(running_probe.verdict(Client::Blocked, false), Verdict::Pass);

    // A daemon started while etcd is gone enforces the list it last applied, and says
    // which revision that was. (The two hosts' revisions may differ: one that read the
    // push whole took etcd's revision at its read, which counts status writes too.)
    let kept = applied(&restarted);
    restarted.terminate().unwrap();
    restarted.restart().unwrap();
    assert_eq!(
        restarted_probe.verdict(Client::Blocked, false),
        Verdict::Pass
    );
    assert_eq!(restarted.listed(BLOCKED).len(), 1);
    assert_eq!(applied(&restarted), kept);

    // etcd is back with a change made meanwhile elsewhere: both catch up.
    etcd.restart().unwrap();
    let revision = operator.push(&["198.51.100.9,new"]);
    for (daemon, probe) in [(&restarted, &restarted_probe), (&running, &running_probe)] {
        wait_for_verdict(probe, daemon, Verdict::Drop, "after etcd came back");
        assert_eq!(daemon.listed("198.51.100.9/32").len(), 1);
        assert!(wait_until(PATIENCE, || applied(daemon) >= revision));
        assert!(wait_until(PATIENCE, || office(daemon)["error"].is_null()));
    }
}

#[test]
fn compaction_past_a_hosts_revision_sends_it_through_a_full_read() {
    let etcd = Etcd::start().unwrap();
    let operator = Operator::new(&etcd);
    let topology = Topology::new().unwrap();
    let mut daemon = start_host(&etcd, &topology, "behind");
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    let first = operator.push(&["10.10.2.2,ci"]);
    wait_for_verdict(&probe, &daemon, Verdict::Pass, "push");
    assert!(wait_until(PATIENCE, || applied(&daemon) >= first));

    // While the daemon is stopped, the set changes and etcd forgets the history the
    // daemon would resume from.
    daemon.terminate().unwrap();
    operator.push(&["198.51.100.1,a"]);
    let last = operator.push(&["198.51.100.2,b"]);
    etcd.client().compact(last).unwrap();

    daemon.restart().unwrap();
    wait_for_verdict(&probe, &daemon, Verdict::Drop, "after the resync");
    assert_eq!(daemon.listed("198.51.100.2/32").len(), 1);
    assert!(daemon.listed("198.51.100.1/32").is_empty());
    assert!(wait_until(PATIENCE, || applied(&daemon) >= last));
    let log = daemon.log();
    assert!(log.contains("compacted past this host's revision"), "{log}");
}

#[test]
fn a_malformed_value_in_etcd_is_reported_and_never_applied() {
    let etcd = Etcd::start().unwrap();
    let operator = Operator::new(&etcd);
    let topology = Topology::new().unwrap();
    let daemon = start_host(&etcd, &topology, "careful");
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    operator.push(&["198.51.100.1,a"]);
    assert!(wait_until(PATIENCE, || daemon
        .listed("198.51.100.1/32")
        .len()
        == 1));

    // Written by hand, past allowlistctl: a value that is not the documented JSON, and
    // a key that is not a network written as allowlistctl writes it; with a good key.
    let put = |key: &str, value: &str| Op::Put {
        key: format!("/allowlist/sets/office/{key}"),
        value: value.as_bytes().to_vec(),
        lease: None,
    };
    etcd.client()
        .txn(&[
            put("10.10.2.2/32", "not json"),
            put("10.10.2.0/24", r#"{"description":"x","ports":"all"}"#),
            put("10.10.2.2", "{}"),
            put("198.51.100.3/32", r#"{"description":"good"}"#),
        ])
        .unwrap();
    assert!(
        wait_until(PATIENCE, || daemon.listed("198.51.100.3/32").len() == 1),
        "the good key of the same revision is applied; log:\n{}",
        daemon.log()
    );
    let error = office(&daemon)["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("3 malformed keys"), "{error}");
    assert!(
        error.contains("not json") || error.contains("not {"),
        "{error}"
    );
    assert!(daemon.log().contains("malformed"), "not logged");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);
    assert!(daemon.listed(BLOCKED).is_empty());
    assert!(daemon.listed("10.10.2.0/24").is_empty());
    assert!(
        wait_until(PATIENCE, || operator.host("careful").is_some_and(|host| {
            host["error"].to_string().contains("malformed")
        })),
        "{}",
        operator.status()
    );
}

#[test]
fn catching_up_a_host_counts_as_applied_only_the_revisions_it_was_sent() {
    use allowlist_userspace::fleet::{etcd::WatchMessage, follow::applied_revision};
    let etcd = Etcd::start().unwrap();
    let client = etcd.client();
    // More revisions than etcd sends a watch that catches up in one message.
    let mut last = 0;
    for index in 0..1500 {
        last = client
            .txn(&[Op::Put {
                key: format!(
                    "/allowlist/sets/office/198.51.{}.{}/32",
                    index / 256,
                    index % 256
                ),
                value: br#"{"description":"x"}"#.to_vec(),
                lease: None,
            }])
            .unwrap();
    }
    let mut watch = client.watch("/allowlist/sets/", 1).unwrap();
    let (header, events) = loop {
        match watch.next_message().unwrap() {
            WatchMessage::Events { revision, events } => break (revision, events),
            WatchMessage::Created => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    let sent = events
        .iter()
        .map(|event| event.mod_revision())
        .max()
        .unwrap();
    assert!(
        sent < header,
        "etcd sent everything at once ({sent} of {header})"
    );
    assert_eq!(header, last);
    assert_eq!(applied_revision(header, &events), Ok(sent));
}

#[test]
fn a_revision_that_empties_a_set_is_held_until_accepted_and_push_refuses_an_empty_file() {
    let etcd = Etcd::start().unwrap();
    let operator = Operator::new(&etcd);
    let topology = Topology::new().unwrap();
    let daemon = start_host(&etcd, &topology, "guarded");
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    operator.push(&["10.10.2.2,ci", "198.51.100.1,a", "198.51.100.2,b"]);
    wait_for_verdict(&probe, &daemon, Verdict::Pass, "push");

    // An empty file is refused unless the operator says it is meant.
    let empty = operator.dir.path().join("empty.csv");
    std::fs::write(&empty, "ip_address,description\n").unwrap();
    let out = operator.run(&["push", empty.to_str().unwrap(), "--set", "office"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--allow-empty"),
        "{out:?}"
    );

    // The set emptied in etcd (past allowlistctl, as a bad restore or a stray delete
    // would): the host keeps its list and says why.
    let emptied = etcd
        .client()
        .txn(&[Op::DeletePrefix("/allowlist/sets/office/".into())])
        .unwrap();
    assert!(
        wait_until(PATIENCE, || office(&daemon)["held"]
            .as_str()
            .is_some_and(|held| held.contains("feeds accept office"))),
        "{}\nlog:\n{}",
        office(&daemon),
        daemon.log()
    );
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
    assert_eq!(daemon.listed("198.51.100.1/32").len(), 1);
    assert!(
        wait_until(PATIENCE, || operator
            .host("guarded")
            .is_some_and(|host| host["held"].to_string().contains("held"))),
        "{}",
        operator.status()
    );

    // Accepted, it is applied.
    let out = daemon.ctl(&["feeds", "accept", "office"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);
    assert!(daemon.listed("198.51.100.1/32").is_empty());
    assert!(applied(&daemon) >= emptied);
    assert!(office(&daemon)["held"].is_null(), "{}", office(&daemon));
}

#[test]
fn a_host_facing_a_rebuilt_etcd_reads_it_whole_instead_of_resuming_in_another_history() {
    let mut etcd = Etcd::start().unwrap();
    let operator = Operator::new(&etcd);
    let topology = Topology::new().unwrap();
    let mut daemon = start_host(&etcd, &topology, "moved");
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    let first = operator.push(&["10.10.2.2,ci", "198.51.100.1,a"]);
    wait_for_verdict(&probe, &daemon, Verdict::Pass, "push");
    assert!(wait_until(PATIENCE, || applied(&daemon) >= first));
    let (cluster, _) = etcd.client().header("/").unwrap();

    // A new etcd cluster whose history passes the host's revision: the set's keys are
    // all written before it, later revisions change only the marker. Resuming after
    // the host's revision would see none of the new set.
    daemon.terminate().unwrap();
    etcd.rebuild().unwrap();
    assert_ne!(etcd.client().header("/").unwrap().0, cluster);
    let mut last = operator.push(&["198.51.100.3,c", "198.51.100.4,d"]);
    while last <= first + 1 {
        last = operator.push(&["198.51.100.3,c", "198.51.100.4,d"]);
    }

    daemon.restart().unwrap();
    wait_for_verdict(&probe, &daemon, Verdict::Drop, "after the rebuild");
    assert_eq!(daemon.listed("198.51.100.3/32").len(), 1);
    assert!(daemon.listed("198.51.100.1/32").is_empty());
    assert!(wait_until(PATIENCE, || applied(&daemon) == last));
    let log = daemon.log();
    assert!(log.contains("another cluster"), "{log}");
}

#[test]
fn a_malformed_value_written_over_an_entry_keeps_its_last_good_value() {
    let etcd = Etcd::start().unwrap();
    let operator = Operator::new(&etcd);
    let topology = Topology::new().unwrap();
    let mut daemon = start_host(&etcd, &topology, "steady");
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    operator.push(&["10.10.2.2,ci", "198.51.100.1,a"]);
    wait_for_verdict(&probe, &daemon, Verdict::Pass, "push");
    let spoil = |network: &str| {
        etcd.client()
            .txn(&[Op::Put {
                key: format!("/allowlist/sets/office/{network}"),
                value: b"not json".to_vec(),
                lease: None,
            }])
            .unwrap()
    };
    let malformed = |daemon: &Daemon, count: &str| {
        wait_until(PATIENCE, || {
            office(daemon)["error"]
                .as_str()
                .is_some_and(|error| error.contains(count))
        })
    };

    let spoiled = spoil("10.10.2.2/32");
    assert!(malformed(&daemon, "1 malformed key"), "{}", office(&daemon));
    assert!(wait_until(PATIENCE, || applied(&daemon) >= spoiled));
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
    assert_eq!(daemon.listed(BLOCKED)[0].description, "ci");

    // Also when the bad value arrives while the daemon is down (it resumes from the
    // list it applied, so it reports only the key spoiled since).
    daemon.terminate().unwrap();
    spoil("198.51.100.1/32");
    daemon.restart().unwrap();
    assert!(
        malformed(
            &daemon,
            "malformed key (never applied): /allowlist/sets/office/198.51.100.1/32"
        ),
        "{}",
        office(&daemon)
    );
    assert_eq!(daemon.listed("198.51.100.1/32").len(), 1);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
}

#[test]
fn a_push_over_a_read_that_a_concurrent_remove_made_stale_writes_nothing_and_push_reads_again() {
    use allowlist_userspace::{
        allowlist::SetName,
        fleet::{admin, Layout},
    };
    use std::collections::BTreeMap;

    let etcd = Etcd::start().unwrap();
    let operator = Operator::new(&etcd);
    operator.push(&["10.10.2.2,ci", "198.51.100.1,a"]);
    let client = etcd.client();
    let layout = Layout::new("/allowlist");
    let set = SetName::new("office").unwrap();
    let removed_key = "/allowlist/sets/office/198.51.100.1/32";
    let entries: BTreeMap<ipnet::IpNet, String> =
        [("10.10.2.2/32", "ci"), ("198.51.100.1/32", "a")]
            .into_iter()
            .map(|(network, description)| (network.parse().unwrap(), description.to_string()))
            .collect();

    // A push read the set; then someone removed a row the push keeps unchanged (so the
    // push writes nothing for it, and the set's keys show no newer revision).
    let read = client.range_prefix(&layout.set(&set)).unwrap();
    operator.ok(&["remove", "198.51.100.1", "--set", "office"]);
    assert_eq!(
        admin::push_over(&client, &layout, &set, &entries, read).unwrap(),
        None,
        "a push over a stale read must not apply"
    );
    assert!(client.get(removed_key).unwrap().1.is_none());

    // `push` reads again, so the set ends as the file says.
    admin::push(&client, &layout, &set, &entries).unwrap();
    assert!(client.get(removed_key).unwrap().1.is_some());
}

/// What `feeds` says went wrong with set `office` (its error, or "").
fn office_error(daemon: &Daemon) -> String {
    office(daemon)["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_host_logged_in_as_an_etcd_user_follows_pushes_made_with_credentials_and_logs_in_again_when_etcd_forgets_its_token(
) {
    let mut etcd = Etcd::start_with(Security {
        auth: true,
        ..Security::default()
    })
    .unwrap();
    let operator = Operator::new(&etcd);
    let topology = Topology::new().unwrap();
    let daemon = start_host(&etcd, &topology, "member");
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);

    // etcd refuses whoever does not log in.
    let anonymous = Operator::with(&etcd, "");
    let said = anonymous.push_refused(&["10.10.2.2,ci"]);
    assert!(said.contains("user name is empty"), "{said}");

    let revision = operator.push(&["10.10.2.2,ci"]);
    wait_for_verdict(&probe, &daemon, Verdict::Pass, "after the push");
    assert!(wait_until(PATIENCE, || applied(&daemon) >= revision));
    // As that user the host also writes its status (under PREFIX/hosts/, with a lease).
    assert!(
        wait_until(PATIENCE, || operator.host("member").is_some_and(
            |host| host["applied_revision"].as_i64() >= Some(revision)
        )),
        "fleet status: {}",
        operator.status()
    );

    // A restarted etcd forgets every simple token: the host logs in again, and applies
    // the next push.
    etcd.stop();
    etcd.restart().unwrap();
    let revision = operator.push(&["198.51.100.7,moved"]);
    wait_for_verdict(&probe, &daemon, Verdict::Drop, "after etcd restarted");
    assert_eq!(daemon.listed("198.51.100.7/32").len(), 1);
    assert!(wait_until(PATIENCE, || applied(&daemon) >= revision));
    assert!(wait_until(PATIENCE, || office(&daemon)["error"].is_null()));
}

#[test]
fn a_host_whose_etcd_password_is_wrong_says_which_user_and_file_and_keeps_enforcing_its_last_list()
{
    let mut etcd = Etcd::start_with(Security {
        auth: true,
        ..Security::default()
    })
    .unwrap();
    let operator = Operator::new(&etcd);
    let topology = Topology::new().unwrap();
    // The host's own copy of the password, as each machine has its file.
    let secrets = tempfile::tempdir().unwrap();
    let host_password = secrets.path().join("etcd.password");
    std::fs::copy(etcd.password_file(), &host_password).unwrap();
    let options = format!(
        "username = {}\npassword_file = {}\n",
        toml_string(USER),
        toml_string(host_password.to_str().unwrap())
    );
    let daemon = start_host_with(&etcd, &topology, "stale", &options);
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    operator.push(&["10.10.2.2,ci"]);
    wait_for_verdict(&probe, &daemon, Verdict::Pass, "after the push");

    // The password changes in etcd (and in the operator's file) but not on the host; a
    // restarted etcd makes every client log in again.
    etcd.change_password(USER, "rotated").unwrap();
    std::fs::write(etcd.password_file(), "rotated\n").unwrap();
    etcd.stop();
    etcd.restart().unwrap();
    let revision = operator.push(&["198.51.100.7,moved"]);
    assert!(
        wait_until(PATIENCE, || {
            let error = office_error(&daemon);
            error.contains(USER) && error.contains(host_password.to_str().unwrap())
        }),
        "the host must name the user and the password file etcd refused: {}",
        office(&daemon)
    );
    // It never took the push it cannot read: the kernel still judges by the last list.
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
    assert!(applied(&daemon) < revision);
    let log = daemon.log();
    assert!(log.contains(host_password.to_str().unwrap()), "{log}");
    // allowlistctl fleet with the old password says the same.
    let said = Operator::with(&etcd, &options).push_refused(&["192.0.2.9,late"]);
    assert!(
        said.contains(USER) && said.contains(host_password.to_str().unwrap()),
        "{said}"
    );

    // With the right password in its file, it catches up without a restart.
    std::fs::write(&host_password, "rotated\n").unwrap();
    wait_for_verdict(
        &probe,
        &daemon,
        Verdict::Drop,
        "after the password was fixed",
    );
    assert!(wait_until(PATIENCE, || applied(&daemon) >= revision));
}

#[test]
fn a_host_with_etcds_ca_and_a_client_certificate_follows_pushes_over_https() {
    let etcd = Etcd::start_with(Security {
        tls: true,
        client_certs: true,
        ..Security::default()
    })
    .unwrap();
    assert!(etcd.url().starts_with("https://"));
    let operator = Operator::new(&etcd);
    let topology = Topology::new().unwrap();
    let daemon = start_host(&etcd, &topology, "secure");
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();

    // etcd asks for a client certificate: a client without one is turned away.
    let uncertified = Operator::with(
        &etcd,
        &format!(
            "ca_file = {}\n",
            toml_string(etcd.ca_file().to_str().unwrap())
        ),
    );
    uncertified.push_refused(&["10.10.2.2,ci"]);

    let revision = operator.push(&["10.10.2.2,ci"]);
    wait_for_verdict(&probe, &daemon, Verdict::Pass, "after the push");
    assert!(wait_until(PATIENCE, || applied(&daemon) >= revision));
    assert!(
        wait_until(PATIENCE, || operator.host("secure").is_some()),
        "fleet status: {}",
        operator.status()
    );
}

#[test]
fn a_host_that_does_not_trust_etcds_certificate_refuses_it_says_why_and_keeps_its_last_list() {
    let etcd = Etcd::start_with(Security {
        tls: true,
        ..Security::default()
    })
    .unwrap();
    let operator = Operator::new(&etcd);
    let topology = Topology::new().unwrap();
    let daemon = start_host(&etcd, &topology, "wary");
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    operator.push(&["10.10.2.2,ci"]);
    wait_for_verdict(&probe, &daemon, Verdict::Pass, "after the push");

    // Its ca_file now names a CA that did not sign etcd's certificate.
    let other_ca = etcd.other_ca_file();
    let options = format!("ca_file = {}\n", toml_string(other_ca.to_str().unwrap()));
    daemon.apply(&host_config(&etcd, &topology, "wary", &options));
    assert!(
        wait_until(PATIENCE, || {
            let error = office_error(&daemon);
            error.contains("certificate") && error.contains("ca_file")
        }),
        "the host must say etcd's certificate is not trusted: {}",
        office(&daemon)
    );
    let revision = operator.push(&["198.51.100.7,moved"]);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
    assert!(applied(&daemon) < revision);

    // Trusting the right CA again, it catches up.
    daemon.apply(&host_config(
        &etcd,
        &topology,
        "wary",
        &etcd.fleet_options(),
    ));
    wait_for_verdict(&probe, &daemon, Verdict::Drop, "with the right CA");
    assert!(wait_until(PATIENCE, || applied(&daemon) >= revision));
}

#[test]
fn a_watch_that_goes_silent_without_closing_is_opened_again_and_the_host_catches_up() {
    let etcd = Etcd::start().unwrap();
    let operator = Operator::new(&etcd);
    let topology = Topology::new().unwrap();
    let daemon = start_host(&etcd, &topology, "forgotten");
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    operator.push(&["10.10.2.2,ci"]);
    wait_for_verdict(&probe, &daemon, Verdict::Pass, "after the push");

    // The watch connection passes nothing any more, and never closes; every other
    // request (status, new connections) still works. (The host may have taken the push
    // from its first read, before its watch was open.)
    assert!(wait_until(PATIENCE, || etcd.black_hole_watches() >= 1));
    let revision = operator.push(&["198.51.100.7,moved"]);
    wait_for_verdict(
        &probe,
        &daemon,
        Verdict::Drop,
        "after the watch went silent",
    );
    assert_eq!(daemon.listed("198.51.100.7/32").len(), 1);
    assert!(wait_until(PATIENCE, || applied(&daemon) >= revision));
    let log = daemon.log();
    assert!(log.contains("the watch of etcd went silent"), "{log}");
    assert!(wait_until(PATIENCE, || office(&daemon)["error"].is_null()));
}
