//! Feeds: a provider's published addresses, fetched from its API and kept as a
//! read-only set named after the feed. The endpoint here is a real HTTP server on the
//! host's loopback, shaped like Harness's IP allowlist API (it checks `X-API-KEY` and
//! `accountIdentifier`). What the kernel does is judged with real packets: the blocked
//! client passes exactly while the feed lists it.
//!
//! A failed fetch, an error status, a body that is not the format's, or an empty list
//! keeps the last good list, also across a restart without the provider; a refresh that
//! removes more than `max_shrink` of a feed's entries waits for `feeds accept`; a
//! refresh that would cut off an established connection is refused.

use std::{
    io::ErrorKind,
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    time::Duration,
};

use allowlist_tests::{
    assert_exit_code, daemon::toml_string, in_netns, wait_until, Client, ConfigBuilder, Daemon,
    FeedServer, Probe, Topology, Verdict,
};
use serde_json::Value;

const PROBE_PORT: u16 = 7141;
const SERVICE_PORT: u16 = 7142;
const BLOCKED: &str = "10.10.2.2";
const KEY: &str = "pat.s3cret-harness-key.0123456789";
const ACCOUNT: &str = "Acc0unt_ID";
/// How long a test waits for something the daemon does on its own (never asserted as
/// a duration: only that it happens).
const PATIENCE: Duration = Duration::from_secs(60);

/// A Harness feed against `server`, with the API key in a file of `dir`.
fn harness_feed(server: &FeedServer, dir: &Path, refresh: &str, extra: &str) -> String {
    let key_file = dir.join("harness.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    format!(
        "[[feed]]\nname = \"harness-ci\"\nformat = \"harness\"\nurl = {}\napi_key_file = {}\nrefresh = {}\n{extra}",
        toml_string(&server.url(&format!(
            "/gateway/ci/ips/allowlist?accountIdentifier={ACCOUNT}"
        ))),
        toml_string(key_file.to_str().unwrap()),
        toml_string(refresh),
    )
}

fn feed(daemon: &Daemon, name: &str) -> Value {
    let feeds = daemon.ctl_json(&["feeds"]);
    feeds
        .as_array()
        .and_then(|feeds| feeds.iter().find(|feed| feed["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no feed {name} in {feeds}"))
}

fn entries(daemon: &Daemon, name: &str) -> u64 {
    feed(daemon, name)["entries"].as_u64().unwrap()
}

/// Waits until the feed has been fetched once (the daemon fetches a new feed at start).
fn wait_first_fetch(daemon: &Daemon, name: &str) {
    assert!(
        wait_until(PATIENCE, || !feed(daemon, name)["last_fetch"].is_null()),
        "feed {name} never fetched; log:\n{}",
        daemon.log()
    );
}

fn start_endpoint(topology: &Topology, addresses: &[&str]) -> FeedServer {
    let server = FeedServer::start(topology.host());
    server.require(KEY, ACCOUNT);
    server.harness(addresses);
    server
}

#[test]
fn a_harness_feed_allows_what_the_api_lists_and_the_kernel_follows_each_refresh() {
    let topology = Topology::new().unwrap();
    let server = start_endpoint(&topology, &[BLOCKED]);
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigBuilder::allowed_client(&topology).table(&harness_feed(
        &server,
        dir.path(),
        "10s",
        "ports = [\"7141/udp\"]",
    ));
    let daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    wait_first_fetch(&daemon, "harness-ci");
    assert_eq!(entries(&daemon, "harness-ci"), 1);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
    assert_eq!(
        probe.verdict(Client::Blocked, true),
        Verdict::Drop,
        "not listed"
    );

    // The entry is the feed's: its origin and set name it, its ports are the feed's,
    // and the CLI may not change that set.
    let listed = daemon.listed("10.10.2.2/32");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].origin, "feed harness-ci");
    assert_eq!(listed[0].set, "harness-ci");
    let check = daemon.check(&["10.10.2.2", "--port", "22/tcp"]);
    assert!(check.contains("feed harness-ci"), "{check}");
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["remove", "10.10.2.2", "--set", "harness-ci"]),
        1,
        "remove from a feed's set",
    );
    assert!(stderr.contains("read-only"), "{stderr}");

    // The key went to the endpoint, and nowhere else.
    let first = &server.seen()[0];
    assert_eq!(first.api_key.as_deref(), Some(KEY));
    assert!(first.url.contains(ACCOUNT), "{}", first.url);
    assert!(!daemon.log().contains(KEY), "the API key is in the log");
    let state = std::fs::read_to_string(daemon.files().state_dir.join("state.json")).unwrap();
    assert!(!state.contains(KEY), "the API key is in the state file");

    // The endpoint lists another address: `feeds refresh` returns once the kernel
    // judges by it.
    server.harness(&[BLOCKED, "198.51.100.9"]);
    let out = daemon.ctl_ok(&["feeds", "refresh", "harness-ci"]);
    assert!(out.contains("2 entries: 1 added, 0 removed"), "{out}");
    assert_eq!(daemon.listed("198.51.100.9/32").len(), 1);

    // Unchanged: the endpoint answers 304 to the ETag of the last body.
    let out = daemon.ctl_ok(&["feeds", "refresh"]);
    assert!(out.contains("not modified"), "{out}");
    let last = server.seen().last().cloned().unwrap();
    assert_eq!(last.status, 304, "{last:?}");
    assert!(last.if_none_match.is_some());

    // The endpoint drops the blocked client: on its own refresh timer, the daemon
    // follows and the kernel drops it.
    server.harness(&["198.51.100.9"]);
    assert!(
        wait_until(PATIENCE, || daemon.listed("10.10.2.2/32").is_empty()),
        "the refresh timer never applied the new list; log:\n{}",
        daemon.log()
    );
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);
    let status = daemon.ctl_ok(&["status"]);
    assert!(status.contains("harness-ci"), "{status}");
}

#[test]
fn a_failing_garbage_or_empty_answer_keeps_the_last_good_list_also_across_a_restart() {
    let topology = Topology::new().unwrap();
    let mut server = start_endpoint(&topology, &[BLOCKED]);
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigBuilder::allowed_client(&topology).table(&harness_feed(
        &server,
        dir.path(),
        "1h",
        "",
    ));
    let mut daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    wait_first_fetch(&daemon, "harness-ci");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);

    for (status, body, says) in [
        (500, "internal error", "HTTP 500"),
        (200, "<html>maintenance</html>", "not a valid harness list"),
        (
            200,
            r#"{"status":"FAILURE","data":null}"#,
            "not \"SUCCESS\"",
        ),
        (
            200,
            r#"{"status":"SUCCESS","data":{"ipAddresses":["10.10.2.2","not-an-ip"]}}"#,
            "data.ipAddresses[1]",
        ),
        (
            200,
            r#"{"status":"SUCCESS","data":{"ipAddresses":[]}}"#,
            "empty list",
        ),
    ] {
        server.answer(status, body);
        let (_, stderr) = assert_exit_code(
            &daemon.ctl(&["feeds", "refresh", "harness-ci"]),
            1,
            "a refresh that brings nothing good",
        );
        assert!(stderr.contains(says), "{says}: {stderr}");
        assert!(
            stderr.contains("kept the last good list (1 entries)"),
            "{stderr}"
        );
        let error = feed(&daemon, "harness-ci")["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(error.contains(says), "{error}");
        assert_eq!(
            probe.verdict(Client::Blocked, false),
            Verdict::Pass,
            "{says}"
        );
    }

    // A wrong key is an error status like any other.
    std::fs::write(dir.path().join("harness.key"), "wrong\n").unwrap();
    server.harness(&[BLOCKED]);
    let (_, stderr) = assert_exit_code(&daemon.ctl(&["feeds", "refresh"]), 1, "a wrong key");
    assert!(stderr.contains("HTTP 401"), "{stderr}");

    // The provider is down and the daemon restarts: the saved list is enforced.
    server.stop();
    daemon.terminate().unwrap();
    daemon.restart().unwrap();
    assert_eq!(entries(&daemon, "harness-ci"), 1);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
    let (_, stderr) = assert_exit_code(&daemon.ctl(&["feeds", "refresh"]), 1, "provider down");
    assert!(
        stderr.contains("kept the last good list (1 entries)"),
        "{stderr}"
    );
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
    let table = daemon.ctl_ok(&["feeds"]);
    assert!(table.contains("error"), "{table}");
}

#[test]
fn a_refresh_removing_more_than_max_shrink_is_held_until_accepted() {
    let topology = Topology::new().unwrap();
    let server = start_endpoint(&topology, &[BLOCKED, "198.51.100.1", "198.51.100.2"]);
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigBuilder::allowed_client(&topology).table(&harness_feed(
        &server,
        dir.path(),
        "1h",
        "",
    ));
    let daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    wait_first_fetch(&daemon, "harness-ci");
    assert_eq!(entries(&daemon, "harness-ci"), 3);

    // Two of three gone: more than the default 50%.
    server.harness(&["198.51.100.1"]);
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["feeds", "refresh", "harness-ci"]),
        1,
        "a refresh that removes too much",
    );
    assert!(
        stderr.contains("would remove 2 of its 3 entries"),
        "{stderr}"
    );
    assert!(stderr.contains("feeds accept harness-ci"), "{stderr}");
    assert_eq!(entries(&daemon, "harness-ci"), 3);
    assert!(!feed(&daemon, "harness-ci")["held"].is_null());
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);

    let out = daemon.ctl_ok(&["feeds", "accept", "harness-ci"]);
    assert!(out.contains("accepted"), "{out}");
    assert_eq!(entries(&daemon, "harness-ci"), 1);
    assert!(feed(&daemon, "harness-ci")["held"].is_null());
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["feeds", "accept", "harness-ci"]),
        1,
        "nothing held",
    );
    assert!(stderr.contains("nothing to accept"), "{stderr}");
}

#[test]
fn a_refresh_that_would_cut_off_an_established_connection_is_refused() {
    let topology = Topology::new().unwrap();
    let server = start_endpoint(&topology, &[BLOCKED, "198.51.100.1"]);
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigBuilder::allowed_client(&topology).table(&harness_feed(
        &server,
        dir.path(),
        "1h",
        "",
    ));
    let daemon = Daemon::start(&topology, &config).unwrap();
    wait_first_fetch(&daemon, "harness-ci");

    // The blocked client, listed only by the feed, holds a connection to a service.
    let listener = in_netns(topology.host(), || {
        TcpListener::bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), SERVICE_PORT))
    })
    .unwrap();
    listener.set_nonblocking(true).unwrap();
    let server_addr = SocketAddr::new(Client::Blocked.link().host_ip(false), SERVICE_PORT);
    let client_end = in_netns(topology.blocked(), || {
        TcpStream::connect_timeout(&server_addr, Duration::from_secs(3))
    })
    .unwrap();
    let mut server_end = None;
    assert!(wait_until(Duration::from_secs(3), || {
        match listener.accept() {
            Ok((stream, _)) => {
                server_end = Some(stream);
                true
            }
            Err(error) => {
                assert_eq!(error.kind(), ErrorKind::WouldBlock, "accept: {error}");
                false
            }
        }
    }));

    server.harness(&["198.51.100.1"]);
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["feeds", "refresh", "harness-ci"]),
        1,
        "a refresh that cuts off a connection",
    );
    assert!(stderr.contains(BLOCKED), "must name the peer: {stderr}");
    assert_eq!(daemon.listed("10.10.2.2/32").len(), 1);
    drop((client_end, server_end));
}

#[test]
fn a_preset_lists_the_providers_documented_addresses_read_only() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client(&topology).table(
        "[[feed]]\nname = \"elastic-eu\"\npreset = \"elastic.io-eu\"\nports = [\"443/tcp\"]\n",
    );
    let daemon = Daemon::start(&topology, &config).unwrap();
    for address in ["34.89.196.206/32", "34.159.187.160/32"] {
        let listed = daemon.listed(address);
        assert_eq!(listed.len(), 1, "{address}: {listed:?}");
        assert_eq!(listed[0].origin, "feed elastic-eu");
        assert_eq!(
            listed[0].description,
            "elastic.io egress, app.elastic.io (EU)"
        );
    }
    assert!(
        daemon.listed("35.245.125.178/32").is_empty(),
        "the US address"
    );
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["add", "192.0.2.1", "--set", "elastic-eu"]),
        1,
        "add to a feed's set",
    );
    assert!(stderr.contains("read-only"), "{stderr}");
    let table = daemon.ctl_ok(&["feeds"]);
    assert!(table.contains("preset elastic.io-eu"), "{table}");
    // Export leaves feeds out: they come from the config file.
    assert!(!daemon.ctl_ok(&["export"]).contains("34.89.196.206"));
}

#[test]
fn a_reload_rescopes_a_feeds_entries_and_removing_the_feed_removes_them() {
    let topology = Topology::new().unwrap();
    let server = start_endpoint(&topology, &[BLOCKED]);
    let dir = tempfile::tempdir().unwrap();
    let base = ConfigBuilder::allowed_client(&topology);
    let daemon = Daemon::start(
        &topology,
        &base
            .clone()
            .table(&harness_feed(&server, dir.path(), "1h", "")),
    )
    .unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    wait_first_fetch(&daemon, "harness-ci");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);

    // The same feed, now scoped to SSH: its last good list stays, with the new scope.
    daemon.apply(&base.clone().table(&harness_feed(
        &server,
        dir.path(),
        "1h",
        "ports = [\"22/tcp\"]",
    )));
    assert_eq!(entries(&daemon, "harness-ci"), 1);
    assert_eq!(
        probe.verdict(Client::Blocked, false),
        Verdict::Drop,
        "UDP probe"
    );
    let check = daemon.check(&["10.10.2.2", "--port", "22/tcp"]);
    assert!(check.contains("feed harness-ci"), "{check}");

    // The feed leaves the config: its entries leave the kernel.
    daemon.apply(&base);
    assert!(daemon.listed("10.10.2.2/32").is_empty());
    assert_eq!(daemon.ctl_json(&["feeds"]), serde_json::json!([]));
}
