//! The Debian package, installed with `dpkg -i` as an operator would: what it puts where,
//! the installed daemon talking to its service manager (a NOTIFY_SOCKET listener stands
//! in for systemd, which is not PID 1 on test machines), the unit as systemd-analyze
//! reads it, and what removing and purging leave behind.
//!
//! The package is `$ALLOWLIST_DEB` (`cargo xtask test` builds it with `cargo xtask
//! package`). Installing is system-wide, so these tests take a lock and run one at a time
//! (also against other test processes), refuse to run where allowlist is installed or
//! has left files, and purge the package when they end, also when they fail.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use allowlist_tests::process::{output_with_timeout, run_checked, wait_until, COMMAND_TIMEOUT};
use allowlist_tests::{
    udp_send, Binaries, ConfigBuilder, Daemon, DaemonFiles, Netns, Notification, NotifyListener,
    Systemd, Topology, UdpSink, ALLOWED_LINK, BLOCKED_LINK,
};
use allowlist_userspace::config::{
    Config, Mode, DEFAULT_CONFIG, DEFAULT_PIN_PATH, DEFAULT_SOCKET, DEFAULT_STATE_DIR,
};

const PACKAGE: &str = "allowlist";
const UNIT: &str = "/usr/lib/systemd/system/allowlist.service";
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(20);
const UDP_PORT: u16 = 7011;
const SETTLE: Duration = Duration::from_millis(300);

/// The package installed for one test; purged on drop. Holds the lock that keeps the
/// package tests of every process apart.
struct Installed {
    _lock: File,
}

impl Installed {
    fn new() -> Self {
        let lock = File::create("/run/allowlist-tests-package.lock").unwrap();
        // SAFETY: flock on a descriptor we own; released when `lock` is closed.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let deb = std::env::var_os("ALLOWLIST_DEB").expect(
            "ALLOWLIST_DEB is not set: build the package with `cargo xtask package` and set it \
             to the .deb's path (cargo xtask test does both)",
        );
        let status = package_status();
        assert!(
            status.is_empty(),
            "allowlist is on this host already ({status}); these tests install and purge it, so \
             they only run where it is not: `dpkg --purge allowlist` if a test run left it"
        );
        for path in [DEFAULT_CONFIG, DEFAULT_STATE_DIR, DEFAULT_PIN_PATH] {
            assert!(
                !Path::new(path).exists(),
                "{path} exists: an allowlist not from these tests is on this host; they would \
                 change it, so they do not run here"
            );
        }
        run_checked(Command::new("dpkg").arg("-i").arg(&deb)).unwrap();
        Self { _lock: lock }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if package_status().is_empty() {
            return;
        }
        if let Err(error) = run_checked(Command::new("dpkg").args(["--purge", PACKAGE])) {
            eprintln!("warning: purging {PACKAGE}: {error:#}");
        }
    }
}

/// dpkg's status of the package, e.g. "install ok installed"; empty when it never was
/// installed or was purged.
fn package_status() -> String {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", PACKAGE])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if status.ends_with("not-installed") {
        String::new()
    } else {
        status
    }
}

fn dpkg(args: &[&str]) {
    run_checked(Command::new("dpkg").args(args)).unwrap();
}

fn run(program: &str, args: &[&str]) -> Output {
    output_with_timeout(Command::new(program).args(args), COMMAND_TIMEOUT).unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn mode_of(path: &str) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|error| panic!("{path}: {error}"))
        .permissions()
        .mode()
        & 0o7777
}

/// The installed binaries, the daemon pointed at `listener`.
fn installed_notifying(listener: &NotifyListener) -> Binaries {
    let mut binaries = Binaries::installed().unwrap();
    binaries.daemon_env.push(listener.env());
    binaries
}

/// The STATUS= of the last notification that has one.
fn last_status(notifications: &[Notification]) -> String {
    notifications
        .iter()
        .rev()
        .find_map(|notification| notification.get("STATUS"))
        .unwrap_or_else(|| panic!("no STATUS= in {notifications:?}"))
        .to_string()
}

/// CLOCK_MONOTONIC in microseconds, as MONOTONIC_USEC= carries it.
fn monotonic_usec() -> u128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills a timespec we own.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(read, 0, "clock_gettime(CLOCK_MONOTONIC)");
    now.tv_sec as u128 * 1_000_000 + now.tv_nsec as u128 / 1_000
}

/// Sends 5 datagrams from each client at once; whether the allowed client's arrived and
/// how many of the blocked client's did.
fn judged_now(topology: &Topology, sink: &UdpSink) -> (bool, u64) {
    let allowed = ALLOWED_LINK.client_v4.into();
    let before = sink.count_from(allowed);
    let to_blocked_host = SocketAddr::new(BLOCKED_LINK.host_v4.into(), UDP_PORT);
    let to_allowed_host = SocketAddr::new(ALLOWED_LINK.host_v4.into(), UDP_PORT);
    udp_send(topology.blocked(), None, to_blocked_host, 5, 64).unwrap();
    udp_send(topology.allowed(), None, to_allowed_host, 5, 64).unwrap();
    let arrived = sink.wait_for(allowed, before + 5, Duration::from_secs(3));
    std::thread::sleep(SETTLE);
    (arrived, sink.count_from(BLOCKED_LINK.client_v4.into()))
}

/// A topology with permanent neighbours (a datagram leaves the moment it is sent, with no
/// ARP first) and a UDP sink on the host.
fn topology_with_sink() -> (Topology, UdpSink) {
    let topology = Topology::new().unwrap();
    topology.disable_ipv6().unwrap();
    topology.pin_client_neighbours().unwrap();
    let sink = UdpSink::start(
        topology.host(),
        SocketAddr::new("0.0.0.0".parse().unwrap(), UDP_PORT),
    )
    .unwrap();
    (topology, sink)
}

#[test]
fn installing_puts_binaries_unit_tmpfiles_entry_completions_and_docs_in_place() {
    let _installed = Installed::new();
    for (path, mode) in [
        ("/usr/sbin/allowlistd", 0o755),
        ("/usr/bin/allowlistctl", 0o755),
        (UNIT, 0o644),
        ("/usr/lib/tmpfiles.d/allowlist.conf", 0o644),
        ("/usr/share/bash-completion/completions/allowlistctl", 0o644),
        ("/usr/share/zsh/vendor-completions/_allowlistctl", 0o644),
        (
            "/usr/share/fish/vendor_completions.d/allowlistctl.fish",
            0o644,
        ),
        ("/usr/share/doc/allowlist/README.md", 0o644),
        ("/usr/share/doc/allowlist/examples/allowlist.toml", 0o644),
    ] {
        assert_eq!(mode_of(path), mode, "{path}");
    }
    let tmpfiles = fs::read_to_string("/usr/lib/tmpfiles.d/allowlist.conf").unwrap();
    assert!(
        tmpfiles
            .lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>()
                == ["d", "/run/allowlist", "0755", "root", "root", "-"]),
        "{tmpfiles}"
    );
    for (path, needle) in [
        (
            "/usr/share/bash-completion/completions/allowlistctl",
            "complete -F",
        ),
        (
            "/usr/share/zsh/vendor-completions/_allowlistctl",
            "#compdef allowlistctl",
        ),
        (
            "/usr/share/fish/vendor_completions.d/allowlistctl.fish",
            "complete -c allowlistctl",
        ),
    ] {
        let script = fs::read_to_string(path).unwrap();
        assert!(
            script.contains(needle) && script.contains("activate"),
            "{path} is not a completion of allowlistctl's commands"
        );
    }
}

#[test]
fn the_conffile_monitors_on_no_interface_so_installing_cuts_no_one_off() {
    let _installed = Installed::new();
    let conffiles = run("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]);
    assert!(
        stdout(&conffiles).contains(DEFAULT_CONFIG),
        "{DEFAULT_CONFIG} is not a conffile: {}",
        stdout(&conffiles)
    );
    let config = Config::load(Path::new(DEFAULT_CONFIG)).unwrap();
    assert_eq!(config.mode, Mode::Monitor);
    assert!(config.interfaces.is_empty(), "{:?}", config.interfaces);

    let check = run(
        "/usr/sbin/allowlistd",
        &["--config", DEFAULT_CONFIG, "check"],
    );
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stdout(&check).contains("mode monitor; interfaces none (attached nowhere"),
        "{}",
        stdout(&check)
    );
    assert!(
        stderr(&check).contains("attached nowhere and judges no traffic"),
        "{}",
        stderr(&check)
    );
}

#[test]
fn both_binaries_print_their_own_name_and_version() {
    let _installed = Installed::new();
    for (binary, name) in [
        ("/usr/sbin/allowlistd", "allowlistd"),
        ("/usr/bin/allowlistctl", "allowlistctl"),
    ] {
        let version = run(binary, &["--version"]);
        assert!(version.status.success());
        assert_eq!(
            stdout(&version).trim(),
            format!("{name} {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn systemd_analyze_verify_accepts_the_installed_unit() {
    let _installed = Installed::new();
    let verify = run("systemd-analyze", &["verify", UNIT]);
    // Other units of the host may draw warnings of their own; none may name ours.
    assert!(
        verify.status.success() && !stderr(&verify).contains("allowlist"),
        "systemd-analyze verify {UNIT}: {}{}",
        stdout(&verify),
        stderr(&verify)
    );
    let unit = fs::read_to_string(UNIT).unwrap();
    for line in [
        "Type=notify",
        "ExecStartPre=/usr/sbin/allowlistd --config /etc/allowlist/allowlist.toml check",
        "ExecStart=/usr/sbin/allowlistd --config /etc/allowlist/allowlist.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=always",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/sys/fs/bpf",
    ] {
        assert!(unit.lines().any(|l| l == line), "{UNIT} lacks {line:?}");
    }
}

#[test]
fn the_installed_daemon_on_the_shipped_config_is_ready_attached_nowhere_and_says_so() {
    let _installed = Installed::new();
    let netns = Netns::new("pkg").unwrap();
    let files = DaemonFiles::at_default_paths().unwrap();
    let listener = NotifyListener::bind(files.dir()).unwrap();
    let mut daemon = Daemon::launch(&netns, None, files, installed_notifying(&listener)).unwrap();

    let started = listener.until("READY", NOTIFY_TIMEOUT).unwrap();
    assert_eq!(
        last_status(&started),
        format!(
            "monitor, attached nowhere: {DEFAULT_CONFIG} names no interfaces, so no traffic is judged"
        )
    );
    // The default socket, as an operator types it.
    let status = run("/usr/bin/allowlistctl", &["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    assert!(
        stdout(&status).contains("none: attached nowhere"),
        "{}",
        stdout(&status)
    );
    assert!(!netns.xdp_attached("lo").unwrap(), "attached to lo");

    // SAFETY: signalling the daemon we spawned, which has not been reaped.
    unsafe { libc::kill(daemon.pid().unwrap() as libc::pid_t, libc::SIGTERM) };
    let stopping = listener.until("STOPPING", NOTIFY_TIMEOUT).unwrap();
    assert!(!stopping.iter().any(|n| n.says("READY")), "{stopping:?}");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(10)).unwrap().code(),
        Some(0)
    );
}

#[test]
fn ready_is_notified_only_once_the_kernel_drops_unlisted_sources_and_the_socket_answers() {
    let _installed = Installed::new();
    let (topology, sink) = topology_with_sink();
    let files = DaemonFiles::new().unwrap();
    let listener = NotifyListener::bind(files.dir()).unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology);
    let daemon = Daemon::launch(
        topology.host(),
        Some(&config),
        files,
        installed_notifying(&listener),
    )
    .unwrap();

    let started = listener.until("READY", NOTIFY_TIMEOUT).unwrap();
    // Checked the moment READY=1 arrives: a daemon that said so before attaching, or
    // before the list was in the kernel, lets the unlisted client's datagrams through.
    let (allowed_arrived, blocked_arrived) = judged_now(&topology, &sink);
    assert_eq!(
        blocked_arrived, 0,
        "unlisted datagrams passed after READY=1"
    );
    assert!(allowed_arrived, "listed datagrams did not arrive");
    let status = daemon.ctl(&["status", "--json"]);
    assert!(
        status.status.success(),
        "the socket did not answer at READY=1: {}",
        stderr(&status)
    );
    assert_eq!(started.len(), 1, "one notification to start: {started:?}");
    assert_eq!(
        last_status(&started),
        "enforcing 1 prefix on to_allowed, to_blocked"
    );
}

#[test]
fn the_status_line_follows_changes_made_with_allowlistctl() {
    let _installed = Installed::new();
    let topology = Topology::new().unwrap();
    let files = DaemonFiles::new().unwrap();
    let listener = NotifyListener::bind(files.dir()).unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology).mode(Mode::Monitor);
    let daemon = Daemon::launch(
        topology.host(),
        Some(&config),
        files,
        installed_notifying(&listener),
    )
    .unwrap();
    listener.until("READY", NOTIFY_TIMEOUT).unwrap();

    for (args, expected) in [
        (
            vec!["add", "192.0.2.7"],
            "monitor on to_allowed, to_blocked: 2 prefixes, counting what enforce would drop",
        ),
        (
            vec!["activate", "--force"],
            "enforcing 2 prefixes on to_allowed, to_blocked",
        ),
    ] {
        daemon.ctl_ok(&args);
        listener
            .until_one(&format!("STATUS={expected}"), NOTIFY_TIMEOUT, |n| {
                n.get("STATUS") == Some(expected)
            })
            .unwrap();
    }
}

#[test]
fn a_sighup_reload_is_bracketed_by_reloading_and_ready_and_judged_by_the_new_list_by_then() {
    let _installed = Installed::new();
    let (topology, sink) = topology_with_sink();
    let files = DaemonFiles::new().unwrap();
    let listener = NotifyListener::bind(files.dir()).unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology);
    let daemon = Daemon::launch(
        topology.host(),
        Some(&config),
        files,
        installed_notifying(&listener),
    )
    .unwrap();
    listener.until("READY", NOTIFY_TIMEOUT).unwrap();
    let pid = daemon.pid().unwrap() as libc::pid_t;

    daemon.write_config(
        &config
            .clone()
            .allow(format!("{}/32", BLOCKED_LINK.client_v4), "now listed"),
    );
    let before_hup = monotonic_usec();
    // SAFETY: signalling the daemon we spawned, which has not been reaped.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let reloaded = listener.until("READY", NOTIFY_TIMEOUT).unwrap();
    let reloading = &reloaded[0];
    assert!(reloading.says("RELOADING"), "{reloaded:?}");
    let stamp: u128 = reloading
        .get("MONOTONIC_USEC")
        .and_then(|usec| usec.parse().ok())
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"));
    assert!(
        (before_hup..=monotonic_usec()).contains(&stamp),
        "MONOTONIC_USEC={stamp} is not the time of the reload"
    );
    assert_eq!(
        last_status(&reloaded),
        "enforcing 2 prefixes on to_allowed, to_blocked"
    );
    let (_, blocked_arrived) = judged_now(&topology, &sink);
    assert_eq!(
        blocked_arrived, 5,
        "the new list was not judged by at READY=1"
    );

    // A config the daemon refuses: the running list stays, and the status says so.
    daemon
        .files()
        .write_config("interfaces = [\"nosuch0\"]\n")
        .unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let refused = listener.until("READY", NOTIFY_TIMEOUT).unwrap();
    assert!(refused[0].says("RELOADING"), "{refused:?}");
    let status = last_status(&refused);
    assert!(
        status.starts_with(
            "enforcing 2 prefixes on to_allowed, to_blocked; last reload refused, still as before: ",
        ) && status.contains("nosuch0"),
        "{status}"
    );
    // `systemctl reload` cannot report the refusal: the status keeps it through changes.
    daemon.ctl_ok(&["add", "198.51.100.9"]);
    let changed = listener
        .until_one("STATUS=", NOTIFY_TIMEOUT, |notification| {
            notification.get("STATUS").is_some()
        })
        .unwrap();
    let status = last_status(&changed);
    assert!(
        status.starts_with("enforcing 3 prefixes") && status.contains("last reload refused"),
        "{status}"
    );
}

#[test]
fn removing_detaches_the_filter_and_keeps_config_and_state_purging_deletes_them() {
    let installed = Installed::new();
    let topology = Topology::new().unwrap();
    // The operator's edit of the conffile: guard the topology, enforcing.
    let files = DaemonFiles::at_default_paths().unwrap();
    let config = ConfigBuilder::allowed_client_v4(&topology);
    let mut daemon = Daemon::launch(
        topology.host(),
        Some(&config),
        files,
        Binaries::installed().unwrap(),
    )
    .unwrap();
    daemon.wait_ready().unwrap();
    daemon.ctl_ok(&["add", "192.0.2.99", "--description", "kept across remove"]);
    daemon.terminate().unwrap();
    let blocked_host = BLOCKED_LINK.host_v4.into();
    assert_eq!(
        allowlist_tests::ping(topology.blocked(), blocked_host, 1).unwrap(),
        0,
        "the stopped daemon's filter should still enforce"
    );

    dpkg(&["-r", PACKAGE]);
    for dev in topology.guarded_interfaces() {
        assert!(
            !topology.host().xdp_attached(dev).unwrap(),
            "dpkg -r left the filter on {dev}"
        );
    }
    assert!(
        !Path::new(DEFAULT_PIN_PATH).exists(),
        "dpkg -r left the pins"
    );
    assert_eq!(
        allowlist_tests::ping(topology.blocked(), blocked_host, 1).unwrap(),
        1
    );
    assert!(!Path::new("/usr/sbin/allowlistd").exists());
    assert!(!Path::new(DEFAULT_SOCKET).parent().unwrap().exists());
    assert!(
        Path::new(DEFAULT_CONFIG).exists(),
        "dpkg -r removed the conffile"
    );
    assert!(
        allowlist_userspace::state::path(Path::new(DEFAULT_STATE_DIR)).exists(),
        "dpkg -r removed the state: {:?}",
        fs::read_dir(DEFAULT_STATE_DIR).map(|dir| dir.count())
    );
    assert_eq!(package_status(), "deinstall ok config-files");

    // Installed again, it takes up the kept config and the entry added before.
    let deb = PathBuf::from(std::env::var_os("ALLOWLIST_DEB").unwrap());
    run_checked(Command::new("dpkg").arg("-i").arg(&deb)).unwrap();
    let check = daemon
        .files()
        .run_daemon_to_exit(
            topology.host(),
            daemon.binaries(),
            &["check"],
            COMMAND_TIMEOUT,
        )
        .unwrap();
    assert!(
        stdout(&check).contains("1 saved; mode enforce"),
        "{}{}",
        stdout(&check),
        stderr(&check)
    );
    drop(daemon);

    dpkg(&["--purge", PACKAGE]);
    for gone in [DEFAULT_CONFIG, "/etc/allowlist", DEFAULT_STATE_DIR] {
        assert!(!Path::new(gone).exists(), "dpkg --purge left {gone}");
    }
    assert_eq!(package_status(), "");
    drop(installed);
}

/// Waits until the unit's `property` is `expected`; fails with the unit's status and log.
fn wait_for_property(systemd: &Systemd, property: &str, expected: &str) {
    let unit = "allowlist.service";
    let reached = wait_until(NOTIFY_TIMEOUT, || {
        systemd
            .property(unit, property)
            .is_ok_and(|value| value == expected)
    });
    if !reached {
        let status = systemd.systemctl(&["status", "--no-pager", unit]).unwrap();
        panic!(
            "{property} of {unit} is not {expected:?}:\n{}\nits log:\n{}",
            stdout(&status),
            systemd.log(unit)
        );
    }
}

/// The unit as the package installs it, run by systemd (PID 1 of namespaces of the test's
/// own): its sandbox and capabilities still let the daemon start, attach and enforce.
#[test]
fn under_systemd_the_unit_starts_reloads_into_enforcing_and_stopping_leaves_the_filter() {
    let _installed = Installed::new();
    let (topology, sink) = topology_with_sink();
    let systemd = Systemd::boot(topology.host(), &["allowlist.service"]).unwrap();
    wait_for_property(&systemd, "ActiveState", "active");
    wait_for_property(
        &systemd,
        "StatusText",
        &format!(
            "monitor, attached nowhere: {DEFAULT_CONFIG} names no interfaces, so no traffic is judged"
        ),
    );

    // The operator names the interfaces, lists the allowed client and enforces.
    let files = DaemonFiles::at_default_paths().unwrap();
    files
        .write_config(&ConfigBuilder::allowed_client_v4(&topology).render(&files))
        .unwrap();
    let reload = systemd.systemctl(&["reload", "allowlist.service"]).unwrap();
    assert!(reload.status.success(), "{}", stderr(&reload));
    wait_for_property(
        &systemd,
        "StatusText",
        "enforcing 1 prefix on to_allowed, to_blocked",
    );
    wait_for_property(&systemd, "ActiveState", "active");
    let (allowed_arrived, blocked_arrived) = judged_now(&topology, &sink);
    assert!(allowed_arrived && blocked_arrived == 0, "not enforcing");

    let stop = systemd.systemctl(&["stop", "allowlist.service"]).unwrap();
    assert!(stop.status.success(), "{}", stderr(&stop));
    wait_for_property(&systemd, "ActiveState", "inactive");
    for dev in topology.guarded_interfaces() {
        assert!(
            topology.host().xdp_attached(dev).unwrap(),
            "stop detached {dev}"
        );
    }
    assert_eq!(
        judged_now(&topology, &sink).1,
        0,
        "stopped: unlisted got in"
    );

    let start = systemd.systemctl(&["start", "allowlist.service"]).unwrap();
    assert!(start.status.success(), "{}", stderr(&start));
    assert_eq!(
        systemd.property("allowlist.service", "StatusText").unwrap(),
        "enforcing 1 prefix on to_allowed, to_blocked",
        "`systemctl start` returned before READY=1"
    );
}
