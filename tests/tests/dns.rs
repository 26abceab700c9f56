//! DNS names: `[[allow]] host = "client.test"` allows the addresses the name resolves to
//! (A and AAAA), as a read-only set named after it. The DNS server is Debian's dnsmasq
//! in the topology's host namespace, answering from a hosts file the test rewrites with
//! a one-second TTL; what the kernel does is judged with real packets.
//!
//! A changed record is followed once its TTL (within `dns_min_ttl`..`dns_max_ttl`) runs
//! out; a name that cannot be resolved keeps its last good answer, also across a
//! restart with the DNS server down.

use std::time::Duration;

use allowlist_tests::{
    assert_exit_code, dns_server::DNS_ADDRESS, wait_until, Client, ConfigBuilder, Daemon,
    DnsServer, Probe, Topology, Verdict, ALLOWED_LINK,
};

const PROBE_PORT: u16 = 7141;
const NAME: &str = "client.test";
/// How long a test waits for something the daemon does on its own (never asserted as
/// a duration: only that it happens).
const PATIENCE: Duration = Duration::from_secs(60);

fn config(topology: &Topology) -> ConfigBuilder {
    // The allowed client's IPv6 address is listed by address, so that enforcing has an
    // entry before the name is first resolved.
    ConfigBuilder::for_topology(topology)
        .allow(
            format!("{}/128", ALLOWED_LINK.client_v6),
            "allowed client v6",
        )
        .key(&format!("dns_servers = [\"{DNS_ADDRESS}\"]"))
        .key("dns_min_ttl = \"1s\"")
        .key("dns_max_ttl = \"1h\"")
        .table(&format!(
            "[[allow]]\nhost = \"{NAME}\"\ndescription = \"ci runner\"\nports = [\"{PROBE_PORT}/udp\"]"
        ))
}

fn listed(daemon: &Daemon, network: &str) -> bool {
    !daemon.listed(network).is_empty()
}

#[test]
fn a_host_allows_what_its_name_resolves_to_follows_the_record_and_keeps_the_last_answer() {
    let topology = Topology::new().unwrap();
    let mut dns = DnsServer::start(topology.host(), &[("10.10.1.2", NAME)]);
    let mut daemon = Daemon::start(&topology, &config(&topology)).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    assert!(
        wait_until(PATIENCE, || listed(&daemon, "10.10.1.2/32")),
        "{NAME} never resolved; daemon log:\n{}\ndnsmasq log:\n{}",
        daemon.log(),
        dns.log()
    );

    // The entry is the name's: its origin and set name it, and the CLI may not change it.
    let entries = daemon.listed("10.10.1.2/32");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].origin, format!("dns {NAME}"));
    assert_eq!(entries[0].set, NAME);
    assert_eq!(entries[0].description, "ci runner");
    let check = daemon.check(&["10.10.1.2", "--port", "7141/udp"]);
    assert!(check.contains(&format!("dns {NAME}")), "{check}");
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["remove", "10.10.1.2", "--set", NAME]),
        1,
        "remove from a name's set",
    );
    assert!(stderr.contains("read-only"), "{stderr}");
    assert_eq!(probe.verdict(Client::Allowed, false), Verdict::Pass);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);

    // The record changes (A and now AAAA too): once its TTL runs out, the kernel
    // follows on its own.
    dns.set(&[("10.10.2.2", NAME), ("fd10:2::2", NAME)]);
    assert!(
        wait_until(PATIENCE, || listed(&daemon, "10.10.2.2/32")
            && listed(&daemon, "fd10:2::2/128")
            && !listed(&daemon, "10.10.1.2/32")),
        "the new record was not followed; daemon log:\n{}",
        daemon.log()
    );
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
    assert_eq!(probe.verdict(Client::Blocked, true), Verdict::Pass);
    assert_eq!(probe.verdict(Client::Allowed, false), Verdict::Drop);
    assert_eq!(
        probe.verdict(Client::Allowed, true),
        Verdict::Pass,
        "by address"
    );
    let feeds = daemon.ctl_json(&["feeds"]);
    let status = feeds
        .as_array()
        .and_then(|feeds| feeds.iter().find(|feed| feed["name"] == NAME))
        .cloned()
        .unwrap_or_else(|| panic!("{NAME} not in {feeds}"));
    assert_eq!(status["entries"], 2, "{status}");
    assert_eq!(status["source"], format!("dns {NAME}"), "{status}");

    // The DNS server is down: the last good answer stays, whether asked now or on the
    // name's own schedule.
    dns.stop();
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["feeds", "refresh", NAME]),
        1,
        "resolving with the DNS server down",
    );
    assert!(
        stderr.contains("kept the last good list (2 entries)"),
        "{stderr}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(listed(&daemon, "10.10.2.2/32"));
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);

    // … also across a restart.
    daemon.terminate().unwrap();
    daemon.restart().unwrap();
    assert!(listed(&daemon, "10.10.2.2/32"), "{}", daemon.log());
    assert!(listed(&daemon, "fd10:2::2/128"));
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
    assert_eq!(probe.verdict(Client::Blocked, true), Verdict::Pass);
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["feeds", "refresh", NAME]),
        1,
        "DNS still down after the restart",
    );
    assert!(
        stderr.contains("kept the last good list (2 entries)"),
        "{stderr}"
    );
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
}

#[test]
fn add_host_lists_a_name_from_the_cli_kept_across_restarts_until_removed() {
    let topology = Topology::new().unwrap();
    let mut dns = DnsServer::start(topology.host(), &[("10.10.2.2", "runner.test")]);
    let config = ConfigBuilder::allowed_client(&topology)
        .key(&format!("dns_servers = [\"{DNS_ADDRESS}\"]"))
        .key("dns_min_ttl = \"1s\"");
    let mut daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);

    // `add --host` returns once the name is resolved and the kernel judges by it.
    let out = daemon.ctl_ok(&[
        "add",
        "--host",
        "Runner.Test.",
        "--ports",
        "7141/udp",
        "-d",
        "build runner",
    ]);
    assert!(out.contains("added host runner.test"), "{out}");
    assert!(out.contains("1 entries: 1 added"), "{out}");
    let entries = daemon.listed("10.10.2.2/32");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].origin, "dns runner.test");
    assert_eq!(entries[0].description, "build runner");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
    // Its set is the name's: addresses cannot be added to it or removed from it.
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["add", "192.0.2.1", "--set", "runner.test"]),
        1,
        "add to a name's set",
    );
    assert!(stderr.contains("read-only"), "{stderr}");
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["add", "--host", "10.10.2.2"]),
        1,
        "an address given as a name",
    );
    assert!(stderr.contains("is an address"), "{stderr}");

    // Kept across a restart, and its last good answer with the DNS server down.
    dns.stop();
    daemon.terminate().unwrap();
    daemon.restart().unwrap();
    assert!(listed(&daemon, "10.10.2.2/32"), "{}", daemon.log());
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);

    // Removed: gone from the list and the kernel; removing it again is an error unless
    // --if-present.
    let out = daemon.ctl_ok(&["remove", "--host", "runner.test"]);
    assert!(out.contains("removed host runner.test"), "{out}");
    assert!(!listed(&daemon, "10.10.2.2/32"));
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);
    assert_exit_code(
        &daemon.ctl(&["remove", "--host", "runner.test"]),
        1,
        "a name not listed",
    );
    daemon.ctl_ok(&["remove", "--host", "runner.test", "--if-present"]);
    daemon.terminate().unwrap();
    daemon.restart().unwrap();
    assert!(!listed(&daemon, "10.10.2.2/32"));
}
