//! No lockout: `activate`, `remove` and `import --replace` refuse (exit 3, naming who)
//! a change that would start dropping the caller's SSH session (`SSH_CONNECTION`) or the
//! peer of an established inbound TCP connection; nothing changes; `--force` overrides.

use std::io::ErrorKind;
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use allowlist_tests::{
    assert_exit_code, in_netns, Client, ConfigBuilder, Daemon, Mode, Probe, Topology, Verdict,
    BLOCKED_LINK,
};

const PROBE_PORT: u16 = 7104;
const SERVICE_PORT: u16 = 7105;

/// The blocked client as the SSH client of the operator running allowlistctl.
const SSH_FROM_BLOCKED_V4: &str = "10.10.2.2 50000 10.10.2.1 22";
const SSH_FROM_BLOCKED_V6: &str = "fd10:2::2 50000 fd10:2::1 22";

fn mode(daemon: &Daemon) -> String {
    daemon.status()["mode"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn activate_refuses_to_cut_off_the_callers_ssh_session_unless_forced() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client(&topology).mode(Mode::Monitor);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    let ssh = [("SSH_CONNECTION", SSH_FROM_BLOCKED_V4)];

    let (_, stderr) = assert_exit_code(
        &daemon.ctl_env(&ssh, &["activate"]),
        3,
        "activate from an unlisted SSH client",
    );
    assert!(
        stderr.contains("10.10.2.2"),
        "must name the caller: {stderr}"
    );
    assert!(stderr.contains("SSH"), "must say why: {stderr}");
    assert_eq!(
        mode(&daemon),
        "monitor",
        "a refused activate changed the mode"
    );
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);

    // With --confirm it is refused all the same.
    assert_exit_code(
        &daemon.ctl_env(&ssh, &["activate", "--confirm", "60s"]),
        3,
        "activate --confirm from an unlisted SSH client",
    );
    assert_eq!(mode(&daemon), "monitor");

    // The same caller on a listed address may activate.
    daemon.ctl_ok(&["add", "10.10.2.0/24", "-d", "operator network"]);
    let out = daemon.ctl_env(&ssh, &["activate"]);
    assert_exit_code(&out, 0, "activate from a listed SSH client");
    daemon.ctl_ok(&["monitor"]);
    daemon.ctl_ok(&["remove", "10.10.2.0/24"]);

    let out = daemon.ctl_env(&ssh, &["activate", "--force"]);
    assert_exit_code(&out, 0, "activate --force");
    assert_eq!(mode(&daemon), "enforce");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);
    assert_eq!(probe.verdict(Client::Allowed, false), Verdict::Pass);
}

#[test]
fn remove_refuses_to_cut_off_the_callers_ssh_session_unless_forced() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client(&topology)).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    daemon.ctl_ok(&["add", "10.10.2.2", "-d", "operator laptop v4"]);
    daemon.ctl_ok(&["add", "fd10:2::2", "-d", "operator laptop v6"]);

    for (v6, ssh, address, network) in [
        (false, SSH_FROM_BLOCKED_V4, "10.10.2.2", "10.10.2.2/32"),
        (true, SSH_FROM_BLOCKED_V6, "fd10:2::2", "fd10:2::2/128"),
    ] {
        let ssh = [("SSH_CONNECTION", ssh)];
        let list = daemon.list();
        let (_, stderr) = assert_exit_code(
            &daemon.ctl_env(&ssh, &["remove", address]),
            3,
            "removing the entry that lists the caller",
        );
        assert!(stderr.contains(address), "must name {address}: {stderr}");
        assert_eq!(daemon.list(), list, "a refused remove changed the list");
        assert_eq!(probe.verdict(Client::Blocked, v6), Verdict::Pass);

        assert_exit_code(
            &daemon.ctl_env(&ssh, &["remove", address, "--force"]),
            0,
            "remove --force",
        );
        assert!(daemon.listed(network).is_empty());
        assert_eq!(probe.verdict(Client::Blocked, v6), Verdict::Drop);
    }

    // Removing an entry is fine while another one still lets the caller in.
    daemon.ctl_ok(&["add", "10.10.2.0/24", "-d", "operator network"]);
    daemon.ctl_ok(&["add", "10.10.2.2", "-d", "operator laptop"]);
    let ssh = [("SSH_CONNECTION", SSH_FROM_BLOCKED_V4)];
    assert_exit_code(
        &daemon.ctl_env(&ssh, &["remove", "10.10.2.2"]),
        0,
        "remove of an entry that is not the caller's only one",
    );
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);
}

#[test]
fn import_replace_refuses_to_drop_the_callers_address_unless_forced() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client(&topology)).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    daemon.ctl_ok(&["add", "10.10.2.2", "-d", "operator laptop"]);
    let file = daemon.files().dir().join("without-me.csv");
    std::fs::write(&file, "ip_address,description\n10.70.0.1,someone else\n").unwrap();
    let file = file.to_str().unwrap();
    let ssh = [("SSH_CONNECTION", SSH_FROM_BLOCKED_V4)];

    let list = daemon.list();
    let (_, stderr) = assert_exit_code(
        &daemon.ctl_env(&ssh, &["import", file, "--replace"]),
        3,
        "import --replace without the caller's address",
    );
    assert!(stderr.contains("10.10.2.2"), "{stderr}");
    assert_eq!(daemon.list(), list, "a refused import changed the list");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);

    assert_exit_code(
        &daemon.ctl_env(&ssh, &["import", file, "--replace", "--force"]),
        0,
        "import --replace --force",
    );
    assert!(daemon.listed("10.10.2.2/32").is_empty());
    assert_eq!(daemon.listed("10.70.0.1/32").len(), 1);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);
}

/// A connection from `client` to the listener, both ends held open: (client, server).
fn connect(
    topology: &Topology,
    client: Client,
    v6: bool,
    listener: &TcpListener,
) -> (TcpStream, TcpStream) {
    let netns = match client {
        Client::Allowed => topology.allowed(),
        Client::Blocked => topology.blocked(),
    };
    let server = SocketAddr::new(client.link().host_ip(v6), SERVICE_PORT);
    let client_end = in_netns(netns, || {
        TcpStream::connect_timeout(&server, Duration::from_secs(3))
    })
    .unwrap_or_else(|error| panic!("connecting to {server}: {error}"));
    // The handshake is complete, so the connection waits in the accept queue.
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
fn activate_refuses_while_an_unlisted_peer_has_an_established_tcp_connection() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client(&topology).mode(Mode::Monitor);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    // Dual-stack: IPv4 peers show up in /proc/net/tcp6 as ::ffff:10.10.2.2.
    let listener = in_netns(topology.host(), || {
        TcpListener::bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), SERVICE_PORT))
    })
    .unwrap();
    listener.set_nonblocking(true).unwrap();

    // A listed peer's connection is no reason to refuse.
    let allowed = connect(&topology, Client::Allowed, false, &listener);

    for v6 in [false, true] {
        let peer = BLOCKED_LINK.client_ip(v6).to_string();
        let (client_end, server_end) = connect(&topology, Client::Blocked, v6, &listener);
        let (_, stderr) = assert_exit_code(
            &daemon.ctl(&["activate"]),
            3,
            "activate with an established connection from an unlisted peer",
        );
        assert!(stderr.contains(&peer), "must name {peer}: {stderr}");
        assert!(
            stderr.contains(&format!("port {SERVICE_PORT}")),
            "must say which connection: {stderr}"
        );
        assert_eq!(mode(&daemon), "monitor");
        assert_eq!(probe.verdict(Client::Blocked, v6), Verdict::Pass);
        // Closing our end leaves ESTABLISHED at once (FIN_WAIT1).
        drop(server_end);
        drop(client_end);
    }

    assert_exit_code(
        &daemon.ctl(&["activate"]),
        0,
        "activate once the unlisted peers' connections are closed",
    );
    assert_eq!(mode(&daemon), "enforce");
    for v6 in [false, true] {
        assert_eq!(probe.verdict(Client::Blocked, v6), Verdict::Drop);
        assert_eq!(probe.verdict(Client::Allowed, v6), Verdict::Pass);
    }
    drop(allowed);
}

/// README: "Addresses of the host itself are ignored unless `lo` is protected" — an SSH
/// session from the host to itself never crosses a filtered interface, so enforcing
/// cannot cut it off, and activating must not be refused for it.
#[test]
fn activate_ignores_an_ssh_session_from_the_host_itself() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client(&topology).mode(Mode::Monitor);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    for ssh in [
        "127.0.0.1 50000 127.0.0.1 22",
        "10.10.2.1 50000 10.10.2.1 22",
        "::1 50000 ::1 22",
    ] {
        let out = daemon.ctl_env(&[("SSH_CONNECTION", ssh)], &["activate"]);
        assert_exit_code(&out, 0, &format!("activate with SSH_CONNECTION={ssh:?}"));
        assert_eq!(mode(&daemon), "enforce");
        daemon.ctl_ok(&["monitor"]);
    }
    daemon.ctl_ok(&["activate"]);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);
}

/// An entry that lists the caller only for other ports does not keep its session: the
/// lockout check judges the session's own local port, as the kernel will, and `check`
/// gives the same verdict.
#[test]
fn a_caller_listed_only_for_other_ports_is_protected_on_the_port_of_its_session() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client(&topology).mode(Mode::Monitor);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    daemon.ctl_ok(&["add", "10.10.2.2", "--ports", "443/tcp", "-d", "web only"]);
    let ssh_on_22 = [("SSH_CONNECTION", SSH_FROM_BLOCKED_V4)];
    let ssh_on_443 = [("SSH_CONNECTION", "10.10.2.2 50000 10.10.2.1 443")];

    let (_, stderr) = assert_exit_code(
        &daemon.ctl_env(&ssh_on_22, &["activate"]),
        3,
        "activate for a caller listed for 443/tcp whose session is on port 22",
    );
    assert!(
        stderr.contains("10.10.2.2") && stderr.contains("port 22"),
        "{stderr}"
    );
    assert_eq!(mode(&daemon), "monitor");
    let check = daemon.check_json(&["10.10.2.2", "--port", "22/tcp"]);
    assert_eq!(check["reason"], "monitor_port_not_allowed", "{check}");

    assert_exit_code(
        &daemon.ctl_env(&ssh_on_443, &["activate"]),
        0,
        "activate for a caller whose session is on a port its entry allows",
    );
    assert_eq!(mode(&daemon), "enforce");
    let check = daemon.check_json(&["10.10.2.2", "--port", "22/tcp"]);
    assert_eq!(check["verdict"], "drop", "{check}");

    // Replacing the list with one that moves the caller to yet another port.
    let file = daemon.files().dir().join("other-port.csv");
    std::fs::write(
        &file,
        "ip_address,description,ports,expires_at\n10.10.2.2,moved,8443/tcp,\n",
    )
    .unwrap();
    let list = daemon.list();
    let (_, stderr) = assert_exit_code(
        &daemon.ctl_env(
            &ssh_on_443,
            &["import", file.to_str().unwrap(), "--replace"],
        ),
        3,
        "import --replace that leaves the caller listed only for another port",
    );
    assert!(stderr.contains("port 443"), "{stderr}");
    assert_eq!(daemon.list(), list, "a refused import changed the list");
    assert_eq!(probe.verdict(Client::Allowed, false), Verdict::Pass);
}

/// Narrowing the entry that keeps the caller in is a change like removing it: refused
/// when it would cut the session off, by `add` and by an import without `--replace`.
#[test]
fn narrowing_the_callers_entry_by_ports_or_an_expiry_is_refused_unless_forced() {
    let topology = Topology::new().unwrap();
    let daemon = Daemon::start(&topology, &ConfigBuilder::allowed_client(&topology)).unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    daemon.ctl_ok(&["add", "10.10.2.2", "-d", "operator laptop"]);
    let ssh = [("SSH_CONNECTION", SSH_FROM_BLOCKED_V4)];
    let list = daemon.list();

    for (what, args) in [
        (
            "add --ports 443/tcp",
            vec!["add", "10.10.2.2", "--ports", "443/tcp"],
        ),
        (
            "add --expires 1h",
            vec!["add", "10.10.2.2", "--expires", "1h"],
        ),
    ] {
        let (_, stderr) = assert_exit_code(&daemon.ctl_env(&ssh, &args), 3, what);
        assert!(stderr.contains("10.10.2.2"), "{what}: {stderr}");
        assert_eq!(daemon.list(), list, "{what}: a refused change was made");
    }
    let file = daemon.files().dir().join("narrower.csv");
    std::fs::write(
        &file,
        "ip_address,description,ports,expires_at\n10.10.2.2,web only,443/tcp,\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    assert_exit_code(
        &daemon.ctl_env(&ssh, &["import", file]),
        3,
        "import narrowing the caller's entry",
    );
    assert_eq!(daemon.list(), list, "a refused import changed the list");
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Pass);

    // Widening, or a description, is never refused.
    daemon.ctl_ok(&["add", "10.10.2.2", "-d", "renamed"]);
    assert_exit_code(
        &daemon.ctl_env(&ssh, &["import", file, "--force"]),
        0,
        "import --force",
    );
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);
}
