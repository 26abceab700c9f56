//! The control socket: who may connect, who may change (SO_PEERCRED, never what the
//! client claims), and a daemon that keeps serving whatever clients send or fail to send.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use allowlist_tests::process::wait_with_deadline;
use allowlist_tests::{
    as_user, assert_exit_code, Client, ConfigBuilder, Daemon, Probe, Topology, Verdict,
};
use serde_json::Value;

const PROBE_PORT: u16 = 7107;
/// `nobody` / `nogroup` on Debian.
const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;
/// `users` on Debian: a primary group that grants nothing here.
const USERS: u32 = 100;

fn socket_mode_and_owner(daemon: &Daemon) -> (u32, u32, u32) {
    let meta = std::fs::metadata(&daemon.files().socket).unwrap();
    (meta.permissions().mode() & 0o7777, meta.uid(), meta.gid())
}

#[test]
fn unprivileged_users_cannot_use_the_default_socket() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client_v4(&topology)).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    daemon.open_socket_dir();
    assert_eq!(socket_mode_and_owner(&daemon), (0o660, 0, 0));
    // nobody can reach the socket's path: what refuses it below is the socket's mode.
    let mut stat = as_user(NOBODY, NOGROUP, &[]);
    stat.arg("stat")
        .arg(&daemon.files().socket)
        .stdout(Stdio::null());
    assert!(
        stat.status().unwrap().success(),
        "nobody cannot reach the socket path"
    );
    let list = daemon.list();

    for args in [
        &["status"][..],
        &["list"],
        &["add", "10.10.2.2"],
        &["deactivate"],
    ] {
        let (_, stderr) = assert_exit_code(
            &daemon.ctl_as(NOBODY, NOGROUP, &[], args),
            1,
            &format!("{args:?} as nobody"),
        );
        assert!(
            stderr.contains(&format!(
                "permission denied: {} is root:root 0660; run as root",
                daemon.files().socket.display()
            )),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("is the daemon running"), "{stderr}");
    }
    assert_eq!(daemon.list(), list);
    assert_eq!(daemon.status()["mode"], "enforce");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);
}

#[test]
fn with_socket_readable_by_all_an_unprivileged_user_may_read_but_not_change() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology).socket_readable_by_all(true);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    daemon.open_socket_dir();
    assert_eq!(socket_mode_and_owner(&daemon), (0o666, 0, 0));
    let list = daemon.list();

    for args in [
        &["status", "--json"][..],
        &["list", "--json"],
        &["stats", "--json"],
        &["check", "10.10.2.2", "--json"],
        &["export"],
    ] {
        let out = daemon.ctl_as(NOBODY, NOGROUP, &[], args);
        // 10.10.2.2 is dropped, which `check` tells with exit code 4.
        let code = if args[0] == "check" { 4 } else { 0 };
        let (stdout, _) = assert_exit_code(&out, code, &format!("{args:?} as nobody"));
        assert_eq!(
            stdout,
            String::from_utf8_lossy(&daemon.ctl(args).stdout),
            "{args:?} as nobody shows something else than as root"
        );
    }

    let csv = daemon.files().dir().join("readable.csv");
    std::fs::write(&csv, "ip_address,description\n10.10.2.2,x\n").unwrap();
    std::fs::set_permissions(&csv, std::fs::Permissions::from_mode(0o644)).unwrap();
    for args in [
        &["add", "10.10.2.2", "-d", "let me in"][..],
        &["remove", "10.10.1.2"],
        &["import", csv.to_str().unwrap()],
        &["deactivate"],
        &["activate", "--confirm", "60s"],
        &["reload"],
    ] {
        let (_, stderr) = assert_exit_code(
            &daemon.ctl_as(NOBODY, NOGROUP, &[], args),
            1,
            &format!("{args:?} as nobody"),
        );
        assert!(stderr.contains("permission denied"), "{args:?}: {stderr}");
    }
    assert_eq!(daemon.list(), list, "a refused user changed the list");
    let status = daemon.status();
    assert_eq!(status["mode"], "enforce", "{status}");
    assert!(status["confirm_deadline"].is_null(), "{status}");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);
    assert_eq!(probe.verdict(Client::Allowed, false), Verdict::Pass);
}

#[test]
fn members_of_socket_group_may_change_the_list() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology).socket_group("nogroup");
    let daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    daemon.open_socket_dir();
    assert_eq!(socket_mode_and_owner(&daemon), (0o660, 0, NOGROUP));

    // Primary group nogroup.
    let out = daemon.ctl_as(
        NOBODY,
        NOGROUP,
        &[],
        &["add", "10.10.2.2", "-d", "added by nogroup"],
    );
    assert_exit_code(&out, 0, "add as a member of socket_group");
    assert_eq!(
        daemon.listed("10.10.2.2/32")[0].description,
        "added by nogroup"
    );
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);

    // nogroup as a supplementary group only.
    let out = daemon.ctl_as(NOBODY, USERS, &[NOGROUP], &["add", "fd10:2::2"]);
    assert_exit_code(&out, 0, "add as a supplementary member of socket_group");
    assert_eq!(daemon.listed("fd10:2::2/128").len(), 1);
    assert_eq!(probe.verdict(Client::Blocked, true), Verdict::Pass);

    // Not a member: cannot even connect.
    let list = daemon.list();
    let out = daemon.ctl_as(NOBODY, USERS, &[], &["remove", "10.10.2.2"]);
    assert_exit_code(&out, 1, "remove as a non-member");
    assert_eq!(daemon.list(), list);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
}

/// Sends one raw line on `stream` and reads the reply line as JSON.
fn exchange(reader: &mut BufReader<UnixStream>, line: &[u8]) -> Value {
    reader.get_mut().write_all(line).unwrap();
    let mut reply = String::new();
    reader
        .read_line(&mut reply)
        .unwrap_or_else(|error| panic!("no reply to {line:?}: {error}"));
    serde_json::from_str(&reply)
        .unwrap_or_else(|error| panic!("reply to {line:?} is not JSON ({error}): {reply:?}"))
}

#[test]
fn garbage_requests_get_an_error_reply_and_the_daemon_keeps_serving() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client_v4(&topology)).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    let list = daemon.list();
    let stream = UnixStream::connect(&daemon.files().socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream);

    let garbage: [(&str, &[u8]); 8] = [
        ("not JSON", b"hello daemon, please add 10.10.2.2\n"),
        ("an empty line", b"\n"),
        ("a JSON array", b"[1, 2, 3]\n"),
        ("an unknown command", b"{\"command\":\"format_disk\"}\n"),
        ("no command", b"{\"network\":\"10.10.2.2/32\"}\n"),
        (
            "a bad network",
            b"{\"command\":\"add\",\"network\":\"10.10.2.300/32\"}\n",
        ),
        (
            "a field of the wrong type",
            b"{\"command\":\"add\",\"network\":42}\n",
        ),
        (
            "invalid UTF-8",
            b"{\"command\":\"add\",\"network\":\"10.10.2.2/32\",\"description\":\"\xff\xfe\"}\n",
        ),
    ];
    for (what, line) in garbage {
        let reply = exchange(&mut reader, line);
        assert_eq!(reply["ok"], false, "{what}: {reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(error.contains("malformed request"), "{what}: {reply}");
    }
    // The same connection still works, also with requests sent in one go (garbage in
    // the middle), and so does everyone else's.
    let reply = exchange(
        &mut reader,
        b"{\"command\":\"status\"}\n\xc3\x28\n{\"command\":\"check\",\"address\":\"10.10.2.2\"}\n",
    );
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["status"]["mode"], "enforce", "{reply}");
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let reply: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["ok"], false, "{reply}");
    line.clear();
    reader.read_line(&mut line).unwrap();
    let reply: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["check"]["verdict"], "drop", "{reply}");
    assert_eq!(daemon.status()["mode"], "enforce");
    assert_eq!(daemon.list(), list, "garbage changed the list");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);
    assert_eq!(probe.verdict(Client::Allowed, false), Verdict::Pass);
}

#[test]
fn silent_and_half_finished_clients_do_not_block_others() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client_v4(&topology)).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    let _silent = UnixStream::connect(&daemon.files().socket).unwrap();
    let half = UnixStream::connect(&daemon.files().socket).unwrap();
    half.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (&half).write_all(b"{\"command\":\"sta").unwrap();

    let started = Instant::now();
    daemon.ctl_ok(&["status"]);
    daemon.ctl_ok(&["add", "10.10.2.2", "-d", "while others stall"]);
    daemon.ctl_ok(&["list"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "other clients waited {:?} behind stalled ones",
        started.elapsed()
    );
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);

    // The half-finished request is still served once it is finished.
    let mut reader = BufReader::new(half);
    let reply = exchange(&mut reader, b"tus\"}\n");
    assert_eq!(reply["ok"], true, "{reply}");
}

#[test]
fn an_oversized_request_from_a_read_only_client_is_refused_and_the_daemon_keeps_serving() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology).socket_readable_by_all(true);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    daemon.open_socket_dir();

    // 100 KiB without a newline, from nobody (64 KiB is the read-only clients' limit).
    // socat reads it from a file in one read and writes it in one write, which the
    // socket buffer takes whole: the client has sent everything before the daemon hangs
    // up, and then reads the reply (a client still writing would get EPIPE instead).
    let payload = daemon.files().dir().join("oversized.txt");
    std::fs::write(&payload, vec![b'x'; 100 << 10]).unwrap();
    let mut socat = as_user(NOBODY, NOGROUP, &[]);
    socat
        .args(["socat", "-b", "131072", "-t", "5", "-"])
        .arg(format!("UNIX-CONNECT:{}", daemon.files().socket.display()))
        .stdin(std::fs::File::open(&payload).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = socat.spawn().expect("spawning socat");
    let status = wait_with_deadline(&mut child, Duration::from_secs(15)).unwrap();
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the daemon neither answered nor hung up on an oversized request");
    }
    let (mut stdout, mut stderr) = (String::new(), String::new());
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let reply: Value = serde_json::from_str(stdout.lines().next().unwrap_or_default())
        .unwrap_or_else(|error| {
            panic!("no JSON reply to an oversized request ({error}): {stdout:?}; socat: {stderr}")
        });
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or_default()
            .contains("longer than 65536 bytes"),
        "{reply}"
    );

    assert_exit_code(
        &daemon.ctl_as(NOBODY, NOGROUP, &[], &["status"]),
        0,
        "status as nobody after the oversized request",
    );
    daemon.ctl_ok(&["add", "10.10.2.2"]);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
}

/// A refusal by the file system is a permission problem, and the message says whose the
/// socket (or the directory in the way) is and what would let the user in, not "is the
/// daemon running?".
#[test]
fn a_user_the_socket_refuses_is_told_whose_it_is_and_what_would_let_them_in() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology).socket_group("nogroup");
    let daemon = Daemon::start(&topology, &config).unwrap();

    // The directory in the way first: the socket cannot even be looked at.
    std::fs::set_permissions(daemon.files().dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let (_, stderr) = assert_exit_code(
        &daemon.ctl_as(NOBODY, USERS, &[], &["status"]),
        1,
        "status as nobody, socket directory closed",
    );
    assert!(
        stderr.contains(&format!(
            "permission denied: {} is in {} (root:root 0700), which this user may not enter; run as root",
            daemon.files().socket.display(),
            daemon.files().dir().display()
        )),
        "{stderr}"
    );

    daemon.open_socket_dir();
    let (_, stderr) = assert_exit_code(
        &daemon.ctl_as(NOBODY, USERS, &[], &["status"]),
        1,
        "status as nobody, not in socket_group",
    );
    assert!(
        stderr.contains(&format!(
            "permission denied: {} is root:nogroup 0660; run as root or join group nogroup",
            daemon.files().socket.display()
        )),
        "{stderr}"
    );
}

/// Sends `request` on `stream` and reads one reply line; `None` if the daemon closed the
/// connection or said nothing within 5 s.
fn ask_on(stream: &UnixStream, request: &str) -> Option<Value> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    (&*stream).write_all(request.as_bytes()).ok()?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).ok()?;
    serde_json::from_str(&reply).ok()
}

const STATUS: &str = "{\"command\":\"status\"}\n";
const ADD: &str = "{\"command\":\"add\",\"network\":\"10.10.2.2/32\"}\n";

#[test]
fn reload_takes_socket_access_away_from_new_and_already_open_connections() {
    let topology = Topology::new().unwrap();
    let open = ConfigBuilder::allowed_client_v4(&topology)
        .socket_readable_by_all(true)
        .socket_group("nogroup");
    let daemon = Daemon::start(&topology, &open).unwrap();
    daemon.open_socket_dir();
    assert_eq!(socket_mode_and_owner(&daemon), (0o666, 0, NOGROUP));
    let reader = allowlist_tests::connect_as(NOBODY, USERS, &daemon.files().socket, 1)
        .unwrap()
        .remove(0);
    let member = allowlist_tests::connect_as(USERS, NOGROUP, &daemon.files().socket, 1)
        .unwrap()
        .remove(0);
    assert_eq!(ask_on(&reader, STATUS).unwrap()["ok"], true);

    daemon.apply(&ConfigBuilder::allowed_client_v4(&topology));
    assert_eq!(
        socket_mode_and_owner(&daemon),
        (0o660, 0, 0),
        "reload left the socket's mode and group"
    );
    assert!(
        daemon.log().contains("control socket access changed"),
        "{}",
        daemon.log()
    );
    // New connections: the socket's mode keeps them out.
    assert_exit_code(
        &daemon.ctl_as(NOBODY, USERS, &[], &["status"]),
        1,
        "status as nobody after reload",
    );
    // Connections opened before: the daemon's own check refuses their next request.
    let reply = ask_on(&reader, STATUS).expect("a reply or a hang-up");
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or_default()
            .contains("permission denied"),
        "{reply}"
    );
    let reply = ask_on(&member, ADD).expect("a reply");
    assert_eq!(
        reply["ok"], false,
        "a former group member still changes: {reply}"
    );
    assert!(daemon.listed("10.10.2.2/32").is_empty());
}

#[test]
fn a_local_user_holding_many_idle_connections_cannot_lock_root_out() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology).socket_readable_by_all(true);
    // systemd's default: a soft limit of 1024 under a higher hard one.
    let daemon = Daemon::start_with(
        topology.host(),
        &config,
        allowlist_tests::DaemonFiles::new().unwrap(),
        Some((1024, 4096)),
    )
    .unwrap();
    daemon.open_socket_dir();
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", daemon.pid().unwrap())).unwrap();
    let open_files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    assert!(
        open_files.split_whitespace().nth(3) == Some("4096"),
        "the soft limit was not raised to the hard one: {open_files}"
    );

    let held = allowlist_tests::connect_as(NOBODY, NOGROUP, &daemon.files().socket, 1100)
        .expect("connecting 1100 times as nobody");
    let started = Instant::now();
    daemon.ctl_ok(&["status"]);
    daemon.ctl_ok(&["add", "192.0.2.1", "-d", "root is still served"]);
    eprintln!(
        "root served in {:?} under 1100 idle connections",
        started.elapsed()
    );

    // Each of nobody's connections is either served or refused with a reason (or closed);
    // only a bounded number are served, and none is left hanging.
    let (mut served, mut refused, mut hanging) = (0, 0, 0);
    for stream in &held {
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let _ = (&*stream).write_all(STATUS.as_bytes());
        let mut reply = String::new();
        match BufReader::new(stream).read_line(&mut reply) {
            Ok(0) => refused += 1,
            Ok(_) => {
                let reply: Value = serde_json::from_str(&reply).unwrap();
                if reply["ok"] == true {
                    served += 1;
                } else {
                    let error = reply["error"].as_str().unwrap_or_default();
                    assert!(error.contains("too many connections"), "{reply}");
                    refused += 1;
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => hanging += 1,
            Err(_) => refused += 1,
        }
        if hanging > 3 || served > 16 {
            break;
        }
    }
    assert!(
        (1..=16).contains(&served) && hanging == 0,
        "of nobody's 1100 connections {served} were served, {refused} refused, {hanging} left hanging"
    );
    let refusals = daemon
        .log()
        .lines()
        .filter(|line| line.contains("refused a control connection"))
        .count();
    assert!(
        refusals <= 10,
        "{refusals} log lines for refused connections: not rate-limited"
    );
    drop(held);
    assert!(
        allowlist_tests::wait_until(Duration::from_secs(5), || daemon
            .ctl_as(NOBODY, NOGROUP, &[], &["status"])
            .status
            .success()),
        "nobody is not served again once its connections are closed"
    );
}
