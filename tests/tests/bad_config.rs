//! A bad config is refused before anything touches the kernel: the daemon exits 1 with
//! an error naming the file, the line and the offending value, and no XDP program is
//! attached and nothing is pinned. A bad config given to a running daemon's `reload` is
//! refused the same way and changes nothing.

use std::time::Duration;

use std::net::SocketAddr;

use allowlist_tests::{
    udp_send, Binaries, ConfigBuilder, Daemon, DaemonFiles, Mode, Netns, Topology, UdpSink,
    ALLOWED_LINK, BLOCKED_LINK,
};

/// A daemon that wrongly accepts the config would run forever; it is killed after this.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(15);

/// A valid config for `files` with one line replaced (`replace` = (old line, new line))
/// or extra lines appended to the header (`insert_after_header`).
fn config_text(
    files: &DaemonFiles,
    replace: Option<(&str, &str)>,
    insert_after_header: &str,
) -> String {
    let mut text = format!(
        "# allowlist end-to-end test config\n\
         interfaces = [\"to_allowed\", \"to_blocked\"]\n\
         mode = \"enforce\"\n\
         xdp_mode = \"auto\"\n\
         {insert_after_header}\
         {paths}\
         \n\
         [[allow]]\n\
         cidr = \"10.10.1.2/32\"\n\
         description = \"allowed client\"\n\
         \n\
         [[allow]]\n\
         cidr = \"fd10:1::2/128\"\n\
         description = \"allowed client v6\"\n",
        paths = files.paths_toml()
    );
    if let Some((old, new)) = replace {
        assert!(text.contains(old), "{old:?} not in the base config");
        text = text.replacen(old, new, 1);
    }
    text
}

/// 1-based number of the only line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| line.contains(needle))
        .map(|(index, _)| index + 1)
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{needle:?} must be on exactly one line of:\n{text}"
    );
    lines[0]
}

/// Whether `message` points at line `line`, as "line N" or as "PATH:N".
fn names_line(message: &str, path: &str, line: usize) -> bool {
    let not_followed_by_digit = |marker: &str| {
        message.match_indices(marker).any(|(at, _)| {
            !message[at + marker.len()..]
                .chars()
                .next()
                .is_some_and(|next| next.is_ascii_digit())
        })
    };
    not_followed_by_digit(&format!("line {line}"))
        || not_followed_by_digit(&format!("Line {line}"))
        || not_followed_by_digit(&format!("{path}:{line}"))
}

/// Undoes whatever a daemon that wrongly accepted a config left behind.
struct LeftoverCleanup<'a> {
    host: &'a Netns,
    files: &'a DaemonFiles,
    binaries: &'a Binaries,
}

impl Drop for LeftoverCleanup<'_> {
    fn drop(&mut self) {
        let _ = self.files.run_daemon_to_exit(
            self.host,
            self.binaries,
            &["uninstall"],
            Duration::from_secs(20),
        );
        let _ = std::fs::remove_dir_all(&self.files.pin_path);
    }
}

/// Runs the daemon and `check` on the config `make_text` writes, and asserts refusal.
/// `bad_value` must appear on exactly one line of the config, and in the error.
fn assert_refused(make_text: impl Fn(&DaemonFiles) -> String, bad_value: &str) {
    let topology = Topology::new().unwrap();
    let binaries = Binaries::locate().unwrap();
    let files = DaemonFiles::new().unwrap();
    let text = make_text(&files);
    files.write_config(&text).unwrap();
    let path = files.config.to_string_lossy().into_owned();
    let bad_line = line_of(&text, bad_value);
    let _cleanup = LeftoverCleanup {
        host: topology.host(),
        files: &files,
        binaries: &binaries,
    };

    let check = files
        .run_daemon_to_exit(topology.host(), &binaries, &["check"], DAEMON_TIMEOUT)
        .unwrap();
    assert_eq!(check.status.code(), Some(1), "`check` must refuse:\n{text}");

    let run = files
        .run_daemon_to_exit(topology.host(), &binaries, &[], DAEMON_TIMEOUT)
        .unwrap_or_else(|error| panic!("the daemon accepted a bad config ({error:#}):\n{text}"));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "exit status; stderr:\n{stderr}");
    assert!(
        stderr.contains(&path),
        "error does not name the file {path}:\n{stderr}"
    );
    assert!(
        names_line(&stderr, &path, bad_line),
        "error does not name line {bad_line}:\n{stderr}\nconfig:\n{text}"
    );
    assert!(
        stderr.contains(bad_value),
        "error does not show {bad_value:?}:\n{stderr}"
    );

    for dev in topology.guarded_interfaces() {
        assert!(
            !topology.host().xdp_attached(dev).unwrap(),
            "an XDP program was attached to {dev} despite the bad config"
        );
    }
    assert!(
        !files.pin_path.exists(),
        "{} was created despite the bad config",
        files.pin_path.display()
    );
}

#[test]
fn unparseable_toml_is_refused_naming_file_line_and_value() {
    assert_refused(
        |files| {
            config_text(
                files,
                Some(("mode = \"enforce\"", "mode = enforcing please")),
                "",
            )
        },
        "enforcing please",
    );
}

#[test]
fn unknown_key_is_refused_naming_file_line_and_key() {
    assert_refused(
        |files| config_text(files, None, "colour = \"blue\"\n"),
        "colour",
    );
}

#[test]
fn unknown_encapsulated_ip_value_is_refused_naming_file_line_and_value() {
    assert_refused(
        |files| config_text(files, None, "encapsulated_ip = \"sometimes\"\n"),
        "sometimes",
    );
}

#[test]
fn bad_cidr_is_refused_naming_file_line_and_value() {
    assert_refused(
        |files| config_text(files, Some(("10.10.1.2/32", "10.10.1.300/32")), ""),
        "10.10.1.300/32",
    );
}

#[test]
fn unknown_interface_is_refused_naming_file_line_and_interface() {
    // The first interface exists: a daemon that attached as it went would leave a
    // program on it, which the check below catches.
    assert_refused(
        |files| {
            config_text(
                files,
                Some((
                    "[\"to_allowed\", \"to_blocked\"]",
                    "[\"to_allowed\", \"nosuch0\"]",
                )),
                "",
            )
        },
        "nosuch0",
    );
}

#[test]
fn enforce_with_an_empty_list_is_refused() {
    let topology = Topology::new().unwrap();
    let binaries = Binaries::locate().unwrap();
    let files = DaemonFiles::new().unwrap();
    let text = ConfigBuilder::for_topology(&topology)
        .mode(Mode::Enforce)
        .render(&files);
    files.write_config(&text).unwrap();
    let _cleanup = LeftoverCleanup {
        host: topology.host(),
        files: &files,
        binaries: &binaries,
    };

    let run = files
        .run_daemon_to_exit(topology.host(), &binaries, &[], DAEMON_TIMEOUT)
        .unwrap_or_else(|error| panic!("the daemon accepted enforce with no entries ({error:#})"));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "exit status; stderr:\n{stderr}");
    assert!(
        stderr.contains(&*files.config.to_string_lossy()),
        "error does not name the file:\n{stderr}"
    );
    assert!(
        stderr.contains("enforce"),
        "error does not say why:\n{stderr}"
    );
    for dev in topology.guarded_interfaces() {
        assert!(
            !topology.host().xdp_attached(dev).unwrap(),
            "program attached to {dev}"
        );
    }
    assert!(!files.pin_path.exists());
}

#[test]
fn reload_of_a_bad_config_is_refused_and_the_running_list_stays_in_force() {
    let topology = Topology::new().unwrap();
    let good = ConfigBuilder::allowed_client_v4(&topology);
    let daemon = Daemon::start(&topology, &good).unwrap();
    let status_before = daemon.status();

    // Valid up to its last entry; a daemon that applied it partly would open the
    // host to the blocked client.
    let bad = good
        .clone()
        .mode(Mode::Monitor)
        .allow(format!("{}/32", BLOCKED_LINK.client_v4), "must never apply")
        .allow("10.10.1.300/32", "bad");
    let text = bad.render(daemon.files());
    daemon.files().write_config(&text).unwrap();
    let reload = daemon.ctl(&["reload"]);
    let stderr = String::from_utf8_lossy(&reload.stderr);
    assert_eq!(
        reload.status.code(),
        Some(1),
        "reload of a bad file; stderr:\n{stderr}"
    );
    let path = daemon.files().config.to_string_lossy().into_owned();
    assert!(
        stderr.contains(&path),
        "error does not name the file {path}:\n{stderr}"
    );
    assert!(
        names_line(&stderr, &path, line_of(&text, "10.10.1.300/32")),
        "error does not name the line:\n{stderr}"
    );
    assert!(
        stderr.contains("10.10.1.300/32"),
        "error does not show the value:\n{stderr}"
    );

    assert_eq!(
        daemon.status(),
        status_before,
        "a refused reload changed the state"
    );
    let sink = UdpSink::start(
        topology.host(),
        SocketAddr::new("0.0.0.0".parse().unwrap(), 7001),
    )
    .unwrap();
    udp_send(
        topology.blocked(),
        None,
        SocketAddr::new(BLOCKED_LINK.host_v4.into(), 7001),
        10,
        64,
    )
    .unwrap();
    udp_send(
        topology.allowed(),
        None,
        SocketAddr::new(ALLOWED_LINK.host_v4.into(), 7001),
        10,
        64,
    )
    .unwrap();
    assert!(sink.wait_for(ALLOWED_LINK.client_v4.into(), 10, Duration::from_secs(3)));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        sink.count_from(BLOCKED_LINK.client_v4.into()),
        0,
        "the refused list was applied"
    );
}

/// `allowlistd check` and a start of the daemon on the same files.
fn check_and_start(topology: &Topology, files: &DaemonFiles) -> (String, Option<i32>, String) {
    let binaries = Binaries::locate().unwrap();
    let _cleanup = LeftoverCleanup {
        host: topology.host(),
        files,
        binaries: &binaries,
    };
    let check = files
        .run_daemon_to_exit(topology.host(), &binaries, &["check"], DAEMON_TIMEOUT)
        .unwrap();
    let run = files
        .run_daemon_to_exit(topology.host(), &binaries, &[], DAEMON_TIMEOUT)
        .unwrap_or_else(|error| panic!("the daemon accepted the config ({error:#})"));
    assert!(
        !files.pin_path.exists(),
        "a refused start left {}",
        files.pin_path.display()
    );
    (
        format!(
            "{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        ),
        check.status.code().filter(|_| run.status.code() == Some(1)),
        String::from_utf8_lossy(&run.stderr).into_owned(),
    )
}

#[test]
fn a_network_listed_twice_is_refused_naming_both_lines() {
    let topology = Topology::new().unwrap();
    let files = DaemonFiles::new().unwrap();
    let mut text = config_text(&files, None, "");
    text.push_str("\n[[allow]]\ncidr = \"10.10.1.2\"\ndescription = \"the same host again\"\n");
    files.write_config(&text).unwrap();
    let path = files.config.to_string_lossy().into_owned();
    let first = line_of(&text, "cidr = \"10.10.1.2/32\"");
    let second = line_of(&text, "cidr = \"10.10.1.2\"");

    let (check, check_code, stderr) = check_and_start(&topology, &files);
    assert_eq!(
        check_code,
        Some(1),
        "`check` and the daemon must both refuse: {check}\n{stderr}"
    );
    for message in [&check, &stderr] {
        assert!(
            names_line(message, &path, second) && message.contains(&format!("line {first}")),
            "must name both lines {first} and {second}: {message}"
        );
    }
}

#[test]
fn check_accepts_exactly_what_the_daemon_accepts() {
    let topology = Topology::new().unwrap();

    // Enforcing an empty list.
    let files = DaemonFiles::new().unwrap();
    let text = ConfigBuilder::for_topology(&topology)
        .mode(Mode::Enforce)
        .render(&files);
    files.write_config(&text).unwrap();
    let (check, check_code, stderr) = check_and_start(&topology, &files);
    assert_eq!(
        check_code,
        Some(1),
        "enforce with no entries: {check}\n{stderr}"
    );
    assert!(check.contains("empty allowlist"), "{check}");

    // More port ranges for one source than the kernel holds: in one entry, and made by
    // two nested entries together.
    let scattered = |from: u16, count: u16| -> String {
        let ports: Vec<String> = (0..count)
            .map(|i| format!("\"{}/tcp\"", from + 2 * i))
            .collect();
        format!("ports = [{}]", ports.join(", "))
    };
    for (what, extra) in [
        (
            "one entry with 20 ranges",
            format!(
                "\n[[allow]]\ncidr = \"10.20.0.7\"\n{}\n",
                scattered(1000, 20)
            ),
        ),
        (
            "two nested entries with 10 ranges each",
            format!(
                "\n[[allow]]\ncidr = \"10.20.0.0/24\"\n{}\n\n[[allow]]\ncidr = \"10.20.0.7\"\n{}\n",
                scattered(1000, 10),
                scattered(3000, 10)
            ),
        ),
    ] {
        let files = DaemonFiles::new().unwrap();
        let mut text = config_text(&files, None, "");
        text.push_str(&extra);
        files.write_config(&text).unwrap();
        let path = files.config.to_string_lossy().into_owned();
        let (check, check_code, stderr) = check_and_start(&topology, &files);
        assert_eq!(check_code, Some(1), "{what}: {check}\n{stderr}");
        for message in [&check, &stderr] {
            assert!(
                message.contains(&format!("{path}:")) && message.contains("at most 16"),
                "{what}: must name the file and line and the limit: {message}"
            );
        }
    }
}
