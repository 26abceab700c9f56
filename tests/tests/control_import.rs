//! `allowlistctl import`: a CSV file (`ip_address,description`, RFC 4180 quoting) applied
//! as one transaction. Good files change the list and the traffic; a file with any bad
//! row changes nothing; `--dry-run` only tells; `--replace` makes the file the list.

use std::path::PathBuf;

use allowlist_tests::{
    assert_exit_code, Client, ConfigBuilder, Daemon, ListedEntry, Probe, Topology, Verdict,
};

const PROBE_PORT: u16 = 7102;

fn write_csv(daemon: &Daemon, name: &str, text: &str) -> PathBuf {
    let path = daemon.files().dir().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn only(daemon: &Daemon, network: &str) -> ListedEntry {
    let listed = daemon.listed(network);
    assert_eq!(listed.len(), 1, "{network}: {listed:?}");
    listed.into_iter().next().unwrap()
}

/// A spreadsheet's export: byte-order mark, CRLF line ends, quoted descriptions with
/// commas, doubled quotes, a line break and non-ASCII text, an IPv6 row, and the same
/// network twice (the later row wins).
const GOOD_CSV: &str = "\u{feff}ip_address,description\r\n\
    fd10:2::2/128,\"blocked client v6, \"\"trusted\"\" now — Zürich ☃\"\r\n\
    10.30.0.0/16,first\r\n\
    10.30.0.0/16,\"second, wins\"\r\n\
    2001:db8:30::/48,\"two\r\nlines\"\r\n\
    10.31.0.1,\r\n";

#[test]
fn import_adds_quoted_descriptions_ipv6_and_duplicates_and_the_listed_sources_pass() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client(&topology)).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    assert_eq!(probe.verdict(Client::Blocked, true), Verdict::Drop);

    let file = write_csv(&daemon, "good.csv", GOOD_CSV);
    let out = daemon.ctl_ok(&["import", file.to_str().unwrap()]);
    assert!(out.contains("4 added"), "{out}");

    let v6 = only(&daemon, "fd10:2::2/128");
    assert_eq!(
        v6.description,
        "blocked client v6, \"trusted\" now — Zürich ☃"
    );
    assert_eq!(v6.origin, "csv import");
    assert_eq!(only(&daemon, "10.30.0.0/16").description, "second, wins");
    assert_eq!(
        only(&daemon, "2001:db8:30::/48").description,
        "two\r\nlines"
    );
    assert_eq!(only(&daemon, "10.31.0.1/32").description, "");
    assert_eq!(
        probe.verdict(Client::Blocked, true),
        Verdict::Pass,
        "imported IPv6 source"
    );
    assert_eq!(
        probe.verdict(Client::Blocked, false),
        Verdict::Drop,
        "not in the file"
    );

    // Importing a row whose network is listed updates its description, keeps its origin.
    daemon.ctl_ok(&["add", "10.10.2.2", "-d", "from the CLI"]);
    let file = write_csv(
        &daemon,
        "update.csv",
        "ip_address,description\n10.10.2.2,renamed by import\n10.30.0.0/16,\n",
    );
    let out = daemon.ctl_ok(&["import", file.to_str().unwrap()]);
    assert!(out.contains("0 added, 2 updated, 0 removed"), "{out}");
    let updated = only(&daemon, "10.10.2.2/32");
    assert_eq!(updated.description, "renamed by import");
    assert_eq!(updated.origin, "cli");
    assert_eq!(
        only(&daemon, "10.30.0.0/16").description,
        "",
        "an empty description clears"
    );
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
}

#[test]
fn import_with_bad_rows_lists_every_bad_row_and_changes_nothing() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client(&topology)).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    daemon.ctl_ok(&["add", "10.10.2.2", "-d", "blocked client v4"]);
    let list_before = daemon.list();
    let traffic_before = probe.all();

    // Good rows that would change the traffic (the blocked client's IPv6 address) mixed
    // with bad ones; with --replace it would also drop 10.10.2.2.
    let file = write_csv(
        &daemon,
        "bad.csv",
        "ip_address,description\n\
         fd10:2::2,would let the blocked client in\n\
         not-an-ip,x\n\
         10.40.0.2,a,b\n\
         10.40.0.300/8,y\n\
         fd10:2::/129,z\n\
         10.40.0.1,fine\n",
    );
    for replace in [false, true] {
        let mut args = vec!["import", file.to_str().unwrap()];
        if replace {
            args.push("--replace");
        }
        let (_, stderr) = assert_exit_code(&daemon.ctl(&args), 1, "import of a bad file");
        for (line, detail) in [
            (3, "not-an-ip"),
            (4, "found 3"),
            (5, "10.40.0.300/8"),
            (6, "fd10:2::/129"),
        ] {
            let reported = stderr
                .lines()
                .find(|reported| reported.contains(&format!("line {line}:")))
                .unwrap_or_else(|| panic!("line {line} not reported:\n{stderr}"));
            assert!(
                reported.contains(detail),
                "line {line} should mention {detail}: {reported}"
            );
        }
        for good in [2, 7] {
            assert!(
                !stderr.contains(&format!("line {good}:")),
                "good line {good} reported:\n{stderr}"
            );
        }
        assert!(stderr.contains("nothing was imported"), "{stderr}");
        assert_eq!(
            daemon.list(),
            list_before,
            "a refused import changed the list"
        );
        assert_eq!(
            probe.all(),
            traffic_before,
            "a refused import changed the traffic"
        );
    }
}

#[test]
fn import_dry_run_prints_the_plan_and_replace_makes_the_file_the_whole_list() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client(&topology)).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    daemon.ctl_ok(&["add", "10.10.2.2", "-d", "blocked client, added by hand"]);
    let seed = write_csv(
        &daemon,
        "seed.csv",
        "ip_address,description\nfd10:2::2,blocked client v6\n10.50.0.0/16,old\n",
    );
    daemon.ctl_ok(&["import", seed.to_str().unwrap()]);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
    assert_eq!(probe.verdict(Client::Blocked, true), Verdict::Pass);

    // The new file: keeps fd10:2::2 as is, updates 10.50.0.0/16, adds 10.51.0.1, names a
    // config entry (left to the config), and leaves out the hand-added 10.10.2.2.
    let file = write_csv(
        &daemon,
        "new.csv",
        "ip_address,description\n\
         fd10:2::2,blocked client v6\n\
         10.50.0.0/16,new\n\
         10.51.0.1,added\n\
         10.10.1.2,the config owns this\n",
    );
    let list_before = daemon.list();
    let traffic_before = probe.all();
    let out = daemon.ctl_ok(&["import", file.to_str().unwrap(), "--replace", "--dry-run"]);
    let planned: Vec<Vec<&str>> = out
        .lines()
        .filter(|line| line.starts_with("  "))
        .map(|line| line.split_whitespace().collect())
        .collect();
    for expected in [
        vec!["add", "10.51.0.1/32"],
        vec!["update", "10.50.0.0/16"],
        vec!["remove", "10.10.2.2/32"],
    ] {
        assert!(
            planned.contains(&expected),
            "dry run does not show {expected:?}:\n{out}"
        );
    }
    assert!(
        !out.contains("fd10:2::2"),
        "an unchanged row is neither added nor updated:\n{out}"
    );
    assert!(out.contains("would import"), "{out}");
    assert_eq!(daemon.list(), list_before, "--dry-run changed the list");
    assert_eq!(probe.all(), traffic_before, "--dry-run changed the traffic");

    let out = daemon.ctl_ok(&["import", file.to_str().unwrap(), "--replace"]);
    assert!(
        out.contains("1 added, 1 updated, 1 removed, 1 left to the config file"),
        "{out}"
    );
    let mut managed: Vec<(String, String, String)> = daemon
        .list()
        .iter()
        .filter(|entry| entry.origin != "config")
        .map(ListedEntry::managed_fields)
        .collect();
    managed.sort();
    let expected = [
        ("10.50.0.0/16", "new", "csv import"),
        ("10.51.0.1/32", "added", "csv import"),
        ("fd10:2::2/128", "blocked client v6", "csv import"),
    ]
    .map(|(n, d, o)| (n.to_string(), d.to_string(), o.to_string()));
    assert_eq!(managed, expected, "--replace must leave exactly the file");
    let config_entry = only(&daemon, "10.10.1.2/32");
    assert_eq!(config_entry.origin, "config");
    assert_eq!(config_entry.description, "allowed client v4");

    assert_eq!(
        probe.verdict(Client::Blocked, false),
        Verdict::Drop,
        "the hand-added source left out of the file must be dropped"
    );
    assert_eq!(probe.verdict(Client::Blocked, true), Verdict::Pass);
    assert_eq!(probe.verdict(Client::Allowed, false), Verdict::Pass);
}

#[test]
fn a_large_import_is_one_request_and_works() {
    // ~5000 rows make a request of a few hundred KiB: over the read-only clients' limit,
    // well within a writer's.
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client(&topology)).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    let mut csv = String::from("ip_address,description\n");
    for i in 0..5000u32 {
        csv.push_str(&format!(
            "10.{}.{}.{}/32,\"bulk row {i}, padded to make the request larger than 64 KiB\"\n",
            200 + i / 65536,
            i / 256 % 256,
            i % 256
        ));
    }
    csv.push_str("10.10.2.2,blocked client\n");
    let file = write_csv(&daemon, "bulk.csv", &csv);
    let out = daemon.ctl_ok(&["import", file.to_str().unwrap()]);
    assert!(out.contains("5001 added"), "{out}");
    let status = daemon.status();
    assert_eq!(status["entries"]["ipv4"], 5002, "{status}");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
}

/// Copying a list to another host must not widen it: `export` writes each entry's ports
/// and expiry, and `import` restores them, so the copy admits exactly what the original
/// did.
#[test]
fn export_carries_ports_and_expiry_and_import_restores_them() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client(&topology)).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    daemon.ctl_ok(&[
        "add",
        "10.10.2.2",
        "--ports",
        "22/tcp,5985-5986/tcp",
        "-d",
        "ssh, winrm",
    ]);
    daemon.ctl_ok(&["add", "fd10:2::2", "--expires", "1h", "-d", "=1+1"]);
    // What an entry admits and how long: its origin says how it got there.
    let scopes = |daemon: &Daemon| -> Vec<serde_json::Value> {
        let list = daemon.ctl_json(&["list"]);
        list.as_array()
            .unwrap()
            .iter()
            .map(|entry| {
                serde_json::json!([
                    entry["network"],
                    entry["description"],
                    entry["ports"],
                    entry["expires_at"]
                ])
            })
            .collect()
    };
    let before = scopes(&daemon);
    assert_eq!(
        probe.verdict(Client::Blocked, false),
        Verdict::Drop,
        "the probe port is not 22"
    );
    assert_eq!(probe.verdict(Client::Blocked, true), Verdict::Pass);

    let exported = daemon.ctl_ok(&["export"]);
    let mut lines = exported.lines();
    assert_eq!(
        lines.next(),
        Some("ip_address,description,ports,expires_at")
    );
    assert!(
        exported.contains("10.10.2.2/32,\"ssh, winrm\",\"22/tcp,5985-5986/tcp\","),
        "{exported}"
    );
    let v6 = exported
        .lines()
        .find(|line| line.starts_with("fd10:2::2/128"))
        .unwrap();
    assert!(
        v6.contains(",'=1+1,"),
        "a formula-like description must be neutralised: {v6}"
    );
    assert!(v6.ends_with('Z'), "the expiry must be written: {v6}");

    // On a fresh list (here: everything removed first), the file restores it exactly.
    let file = write_csv(&daemon, "copy.csv", &exported);
    daemon.ctl_ok(&["remove", "10.10.2.2"]);
    daemon.ctl_ok(&["remove", "fd10:2::2"]);
    daemon.ctl_ok(&["import", file.to_str().unwrap()]);
    assert_eq!(scopes(&daemon), before, "import did not restore the list");
    assert_eq!(
        probe.verdict(Client::Blocked, false),
        Verdict::Drop,
        "ports widened"
    );
    assert_eq!(probe.verdict(Client::Blocked, true), Verdict::Pass);

    // The hosted products' two-column files still import; a listed network keeps its
    // ports and expiry.
    let two = write_csv(
        &daemon,
        "two.csv",
        "ip_address,description\n10.10.2.2,renamed\n",
    );
    daemon.ctl_ok(&["import", two.to_str().unwrap()]);
    let renamed = daemon.ctl_json(&["list"]);
    let entry = renamed
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["network"] == "10.10.2.2/32")
        .unwrap();
    assert_eq!(entry["description"], "renamed");
    assert_eq!(
        entry["ports"],
        serde_json::json!(["22/tcp", "5985-5986/tcp"])
    );
}

#[test]
fn import_tells_what_differs_from_the_file_and_needs_force_for_everyone() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client(&topology)).unwrap();
    let file = write_csv(
        &daemon,
        "odd.csv",
        "ip_address,description\n10.98.6.7/16,host bits\n::/0,everyone\n",
    );
    let file = file.to_str().unwrap();
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["import", file]),
        1,
        "import of a row that allows everyone",
    );
    assert!(
        stderr.contains("line 3") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(
        daemon.listed("10.98.0.0/16").is_empty(),
        "a refused import changed the list"
    );

    let out = daemon.ctl(&["import", file, "--force"]);
    let (_, stderr) = assert_exit_code(&out, 0, "import --force");
    assert!(
        stderr.contains(":2:") && stderr.contains("host bits") && stderr.contains("10.98.0.0/16"),
        "{stderr}"
    );
    assert_eq!(only(&daemon, "10.98.0.0/16").description, "host bits");
    assert_eq!(only(&daemon, "::/0").description, "everyone");
}

/// Rows of a streamed import (`import_stream`, then one row a line, then an empty line)
/// change nothing until the empty line ends them: a client that goes away before it (it
/// found a bad row further down its file) leaves the list as it was, and so does a row
/// the daemon cannot read, which it names.
#[test]
fn a_streamed_import_changes_nothing_until_its_rows_are_ended() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;

    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client_v4(&topology)).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    let list = daemon.list();
    const HEADER: &[u8] = b"{\"command\":\"import_stream\"}\n";
    const ROW: &[u8] = b"{\"line\":2,\"network\":\"10.10.2.2/32\",\"description\":\"blocked\"}\n";
    let reply_to = |lines: &[&[u8]]| -> Option<serde_json::Value> {
        let mut stream = UnixStream::connect(&daemon.files().socket).unwrap();
        for line in lines {
            // A daemon that refused a row replies and stops reading: what is left of
            // the stream then meets a closed socket, and the reply is still there.
            match stream.write_all(line) {
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => break,
                written => written.unwrap(),
            }
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).unwrap();
        (!reply.is_empty()).then(|| serde_json::from_str(&reply).unwrap())
    };

    assert_eq!(reply_to(&[HEADER, ROW]), None, "no reply to unended rows");
    assert_eq!(daemon.list(), list, "unended rows changed the list");
    let too_long = [
        b"{\"line\":3,\"description\":\"".as_slice(),
        &[b'x'; 40 << 10],
        b"\"}\n",
    ]
    .concat();
    for (what, bad) in [
        (
            "a malformed row",
            b"{\"line\":3,\"network\":\"10.10.2.300/32\"}\n".as_slice(),
        ),
        ("a row over the bound", too_long.as_slice()),
    ] {
        let reply = reply_to(&[HEADER, ROW, bad, b"\n"]).unwrap();
        assert_eq!(reply["ok"], false, "{what}: {reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(error.contains("row 2"), "{what}: {error}");
        assert_eq!(daemon.list(), list, "{what} changed the list");
    }
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);

    let reply = reply_to(&[HEADER, ROW, b"\n"]).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(only(&daemon, "10.10.2.2/32").description, "blocked");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
}
