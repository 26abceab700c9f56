//! A DNS server for the tests of `[[allow]] host = …`: Debian's dnsmasq on 127.0.0.1:53
//! in the topology's host namespace (where the daemon runs), answering from a hosts
//! file the test writes, with a TTL of one second so that a changed record is noticed
//! soon. Names under `test.` are answered only from that file (no other server is
//! asked); `set` rewrites it and SIGHUP makes dnsmasq read it again.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{wait_until, Netns};

pub struct DnsServer {
    child: Option<Child>,
    hosts: PathBuf,
    netns: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Where the server listens (also what the daemon's `dns_servers` names).
pub const DNS_ADDRESS: &str = "127.0.0.1:53";
/// [`DNS_ADDRESS`] as /proc/net/udp writes a local address (hex, in host byte order).
const DNS_LOCAL_ADDRESS: &str = "0100007F:0035";

impl DnsServer {
    /// Starts dnsmasq in `netns` answering `records` (`(address, name)` pairs).
    pub fn start(netns: &Netns, records: &[(&str, &str)]) -> DnsServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut server = DnsServer {
            child: None,
            hosts: dir.path().join("hosts"),
            netns: netns.path(),
            log: dir.path().join("dnsmasq.log"),
            _dir: dir,
        };
        server.write(records);
        server.launch();
        server
    }

    fn launch(&mut self) {
        let log = std::fs::File::create(&self.log).expect("the dnsmasq log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .args([
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--local=/test/",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--port=53",
                "--user=root",
                "--pid-file=",
                "--local-ttl=1",
                "--log-queries",
                "--log-facility=-",
            ])
            .arg(format!("--addn-hosts={}", self.hosts.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dnsmasq (cargo xtask setup installs it)");
        // Up once its UDP socket is in the namespace's table: nsenter enters the namespace
        // and execs dnsmasq, so once the child's name is dnsmasq its /proc/PID/net is the
        // namespace's. Binding the port to find out would make dnsmasq's own bind fail if
        // it came at that moment.
        let (comm, udp_table) = (
            format!("/proc/{}/comm", child.id()),
            format!("/proc/{}/net/udp", child.id()),
        );
        self.child = Some(child);
        let bound = wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&comm).is_ok_and(|name| name.trim() == "dnsmasq")
                && std::fs::read_to_string(&udp_table).is_ok_and(|table| {
                    table
                        .lines()
                        .any(|line| line.split_whitespace().nth(1) == Some(DNS_LOCAL_ADDRESS))
                })
        });
        assert!(bound, "dnsmasq did not start; its log:\n{}", self.log());
    }

    fn write(&self, records: &[(&str, &str)]) {
        let text: String = records
            .iter()
            .map(|(address, name)| format!("{address} {name}\n"))
            .collect();
        std::fs::write(&self.hosts, text).expect("the hosts file");
    }

    /// Replaces the records; dnsmasq reads them again at once.
    pub fn set(&self, records: &[(&str, &str)]) {
        self.write(records);
        if let Some(child) = &self.child {
            // SAFETY: signalling a child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) };
        }
    }

    /// Stops the server: queries go unanswered (the port is closed).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What dnsmasq logged (each query it answered).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
