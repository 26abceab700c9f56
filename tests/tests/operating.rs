//! Operating allowlist on a host: logs that journald and log shippers can read, naming who
//! made each change, and a CLI that scripts can rely on (exit codes, idempotent removal,
//! the socket from the environment, counters worth reading).

use std::process::{Output, Stdio};
use std::time::Duration;

use allowlist_tests::{
    assert_exit_code, wait_until, Client, ConfigBuilder, Daemon, Mode, Probe, Topology,
    ALLOWED_LINK, BLOCKED_LINK,
};
use serde_json::Value;

const PROBE_PORT: u16 = 7301;

/// Runs `allowlistctl ARGS` and returns its output with its process id, which the daemon
/// must log as the one who asked.
fn ctl_with_pid(daemon: &Daemon, args: &[&str]) -> (Output, u32) {
    let child = daemon
        .ctl_command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    (child.wait_with_output().unwrap(), pid)
}

/// The daemon's own lines, without the harness's start markers.
fn daemon_lines(daemon: &Daemon) -> Vec<String> {
    daemon
        .log()
        .lines()
        .filter(|line| !line.starts_with("===== harness"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_redirected_text_log_has_no_colour_codes_and_names_who_made_each_change() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology).mode(Mode::Monitor);
    let daemon = Daemon::start(&topology, &config).unwrap();

    let (added, pid) = ctl_with_pid(&daemon, &["add", "198.51.100.7", "-d", "worker"]);
    assert_exit_code(&added, 0, "add");
    let (expiring, _) = ctl_with_pid(&daemon, &["add", "198.51.100.8", "--expires", "1s"]);
    assert_exit_code(&expiring, 0, "add --expires 1s");
    let daemon_pid = daemon.pid().unwrap() as libc::pid_t;
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(daemon_pid, libc::SIGHUP) };
    assert!(
        wait_until(Duration::from_secs(10), || daemon
            .log()
            .contains("reloaded")),
        "no reload line after SIGHUP:\n{}",
        daemon.log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || daemon
            .log()
            .contains("expired: removed 198.51.100.8/32")),
        "no expiry line:\n{}",
        daemon.log()
    );

    let log = daemon.log();
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log that is not a terminal:\n{log}"
    );
    let line_with = |needle: &str| {
        log.lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{log}"))
            .to_owned()
    };
    let add = line_with("added 198.51.100.7/32");
    assert!(add.contains(&format!("by=uid:0,pid:{pid}")), "{add}");
    assert!(add.contains("kernel_took="), "{add}");
    let reload = line_with("reloaded");
    assert!(reload.contains("by=config"), "{reload}");
    let expiry = line_with("expired: removed 198.51.100.8/32");
    assert!(expiry.contains("by=expiry"), "{expiry}");
    // Monitor is not enforcing, and the start-up line must not say it is.
    let attached = line_with("attached;");
    assert!(
        attached.contains("passing everything, counting what enforce would drop"),
        "{attached}"
    );
    assert!(!log.contains("enforcing mode=monitor"), "{log}");
}

#[test]
fn the_json_log_is_one_object_per_line_with_who_what_and_the_kernels_time() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology);
    let daemon = Daemon::start_with_args(&topology, &config, &["--log-format", "json"]).unwrap();
    let (added, pid) = ctl_with_pid(&daemon, &["add", "198.51.100.7"]);
    assert_exit_code(&added, 0, "add");
    let (refused, _) = ctl_with_pid(&daemon, &["remove", "203.0.113.99"]);
    assert_exit_code(&refused, 1, "remove of an unlisted network");

    let events: Vec<Value> = daemon_lines(&daemon)
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line:?}")))
        .collect();
    assert!(events.len() > 3, "{events:?}");
    for event in &events {
        for field in ["timestamp", "level", "message"] {
            assert!(event.get(field).is_some(), "no {field}: {event}");
        }
    }
    let add = events
        .iter()
        .find(|event| event["message"] == "added 198.51.100.7/32 (all ports, permanent)")
        .unwrap_or_else(|| panic!("no add event: {events:?}"));
    assert_eq!(add["by"], format!("uid:0,pid:{pid}"), "{add}");
    assert_eq!(add["level"], "INFO", "{add}");
    assert!(add["kernel_took"].is_string(), "{add}");
    let refusal = events
        .iter()
        .find(|event| {
            event["message"]
                .as_str()
                .is_some_and(|message| message.starts_with("refused:"))
        })
        .unwrap_or_else(|| panic!("no refusal event: {events:?}"));
    assert_eq!(refusal["level"], "WARN", "{refusal}");
}

#[test]
fn check_exits_4_when_the_kernel_drops_the_source_and_0_when_it_passes() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client_v4(&topology)).unwrap();
    let blocked = BLOCKED_LINK.client_v4.to_string();
    let allowed = ALLOWED_LINK.client_v4.to_string();

    let (stdout, stderr) = assert_exit_code(&daemon.ctl(&["check", &blocked]), 4, "check blocked");
    assert!(stdout.contains("drop"), "{stdout}");
    assert!(stderr.is_empty(), "a verdict is not an error: {stderr}");
    assert_exit_code(
        &daemon.ctl(&["check", &blocked, "--json"]),
        4,
        "check --json",
    );
    assert_exit_code(&daemon.ctl(&["check", &allowed]), 0, "check allowed");

    // Monitor drops nothing: the verdict is pass and the reason says what enforce would do.
    daemon.ctl_ok(&["monitor"]);
    let (stdout, _) = assert_exit_code(&daemon.ctl(&["check", &blocked]), 0, "monitor");
    assert!(stdout.contains("monitor_would_drop"), "{stdout}");
}

#[test]
fn remove_if_present_lets_a_script_converge_without_errors() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client_v4(&topology)).unwrap();
    daemon.ctl_ok(&["add", "198.51.100.7"]);

    for attempt in 1..=2 {
        let (stdout, _) = assert_exit_code(
            &daemon.ctl(&["remove", "198.51.100.7", "--if-present"]),
            0,
            &format!("remove --if-present, attempt {attempt}"),
        );
        let expected = if attempt == 1 {
            "removed"
        } else {
            "nothing to remove"
        };
        assert!(stdout.contains(expected), "attempt {attempt}: {stdout}");
    }
    assert!(daemon.listed("198.51.100.7/32").is_empty());
    let (_, stderr) = assert_exit_code(&daemon.ctl(&["remove", "198.51.100.7"]), 1, "remove");
    assert!(stderr.contains("not on the allowlist"), "{stderr}");
    // Present, but the config file's: still an error, --if-present or not.
    let from_file = format!("{}/32", ALLOWED_LINK.client_v4);
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["remove", &from_file, "--if-present"]),
        1,
        "remove --if-present of a config entry",
    );
    assert!(stderr.contains("config"), "{stderr}");
    assert_eq!(daemon.listed(&from_file).len(), 1);
}

#[test]
fn the_socket_can_be_given_once_in_the_environment() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client_v4(&topology)).unwrap();
    let socket = daemon.files().socket.display().to_string();
    let mut status = std::process::Command::new(&daemon.binaries().ctl);
    status
        .env("ALLOWLIST_SOCKET", &socket)
        .args(["status", "--json"]);
    let output = status.output().unwrap();
    let (stdout, _) = assert_exit_code(&output, 0, "status with ALLOWLIST_SOCKET");
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["mode"], "enforce", "{status}");
    assert!(
        status["config"]
            .as_str()
            .is_some_and(|path| path.starts_with('/')),
        "the config path is not absolute: {status}"
    );

    // --socket still wins over the environment.
    let mut wrong = std::process::Command::new(&daemon.binaries().ctl);
    wrong
        .env("ALLOWLIST_SOCKET", "/nonexistent/allowlist.sock")
        .args(["--socket", &socket, "status"]);
    assert_exit_code(
        &wrong.output().unwrap(),
        0,
        "--socket over ALLOWLIST_SOCKET",
    );
}

#[test]
fn stats_shows_what_counted_passes_first_and_every_reason_with_all() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client_v4(&topology)).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    probe.verdict(Client::Allowed, false);
    probe.verdict(Client::Blocked, false);

    let rows = |args: &[&str]| -> Vec<String> {
        daemon
            .ctl_ok(args)
            .lines()
            .filter_map(|line| {
                let reason = line.split_whitespace().next()?;
                let known = reason.starts_with("passed_")
                    || reason.starts_with("dropped_")
                    || reason.starts_with("monitor_");
                known.then(|| reason.to_owned())
            })
            .collect()
    };
    let shown = rows(&["stats"]);
    let listed = shown.iter().position(|r| r == "passed_listed");
    let dropped = shown.iter().position(|r| r == "dropped_not_listed");
    assert!(
        matches!((listed, dropped), (Some(l), Some(d)) if l < d),
        "passes first, then drops: {shown:?}"
    );
    assert!(
        !shown.iter().any(|reason| reason == "passed_off"),
        "a reason that counted nothing is shown: {shown:?}"
    );
    let all = rows(&["stats", "--all"]);
    assert_eq!(all.len(), 16, "{all:?}");
    let first_drop = all.iter().position(|r| r.starts_with("dropped_")).unwrap();
    assert!(
        all[..first_drop].iter().all(|r| !r.starts_with("dropped_"))
            && all[first_drop..].iter().all(|r| r.starts_with("dropped_")),
        "{all:?}"
    );
    assert_eq!(rows(&["stats", "--all"]), all, "the order is stable");
}
