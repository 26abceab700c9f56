//! A real etcd (Debian's `etcd-server`, installed by `cargo xtask setup`) for the fleet
//! tests: started on 127.0.0.1 with free ports and a temporary data dir, killed on
//! `Drop`. Daemons run in network namespaces of their own, whose loopback is not the
//! test's: [`Etcd::endpoint_in`] opens a forwarder listening on 127.0.0.1 inside the
//! namespace (a socket stays in the namespace it was made in) that relays each
//! connection to etcd. Stopping etcd ends every relayed connection, as losing etcd would.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use allowlist_userspace::fleet::{etcd, FleetConfig};
use anyhow::{bail, Context as _, Result};

use crate::{in_netns, Netns};

/// Where Debian's etcd-server puts the binary.
pub const ETCD: &str = "/usr/bin/etcd";

pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// etcd derives its cluster id from it: another token, another cluster.
    token: String,
    stop_forwarders: Arc<AtomicBool>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Etcd {
    /// Starts etcd and waits until it answers. Its limits let one transaction replace a
    /// 100,000-entry set (the defaults are 128 operations and 1.5 MiB).
    pub fn start() -> Result<Etcd> {
        let mut etcd = Etcd {
            child: None,
            dir: tempfile::tempdir()?,
            client_port: free_port()?,
            peer_port: free_port()?,
            token: "allowlist-test".into(),
            stop_forwarders: Arc::new(AtomicBool::new(false)),
        };
        etcd.spawn()?;
        Ok(etcd)
    }

    fn spawn(&mut self) -> Result<()> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))?;
        let child = Command::new(ETCD)
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--initial-cluster-token", &self.token])
            .args(["--max-txn-ops", "250000", "--max-request-bytes", "67108864"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {ETCD} (run `cargo xtask setup`)"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.client().range_prefix("/").is_ok() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("etcd did not answer within 30 s; log:\n{}", self.log())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Its client URL in the test's own namespace.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// A client of it, as `allowlistctl fleet` makes one.
    pub fn client(&self) -> etcd::Etcd {
        let config = FleetConfig {
            endpoints: vec![self.url()],
            prefix: "/allowlist".into(),
            host: "test".into(),
            sets: Vec::new(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_file: None,
            line: 0,
        };
        etcd::Etcd::new(&config).expect("an etcd client")
    }

    /// Kills etcd (its data stays); every connection to it ends.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) -> Result<()> {
        assert!(self.child.is_none(), "stop() it first");
        self.spawn()
    }

    /// Replaces it by a new, empty etcd cluster (another cluster id, history from
    /// revision 1) on the same ports, as a rebuilt etcd would be.
    pub fn rebuild(&mut self) -> Result<()> {
        self.stop();
        std::fs::remove_dir_all(self.data_dir())?;
        self.token.push_str("-rebuilt");
        self.spawn()
    }

    /// The URL under which etcd is reachable from inside `netns`.
    pub fn endpoint_in(&self, netns: &Netns) -> Result<String> {
        let listener = in_netns(netns, || TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let target: SocketAddr = ([127, 0, 0, 1], self.client_port).into();
        let stop = Arc::clone(&self.stop_forwarders);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inside, _)) => {
                        let _ = inside.set_nonblocking(false);
                        thread::spawn(move || relay(inside, target));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(format!("http://127.0.0.1:{port}"))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

/// Copies bytes both ways between a connection from a namespace and etcd, until either
/// side closes.
fn relay(inside: TcpStream, target: SocketAddr) {
    let Ok(outside) = TcpStream::connect(target) else {
        let _ = inside.shutdown(Shutdown::Both);
        return;
    };
    let _ = inside.set_nodelay(true);
    let _ = outside.set_nodelay(true);
    let (Ok(inside_reader), Ok(outside_reader)) = (inside.try_clone(), outside.try_clone()) else {
        return;
    };
    let up = thread::spawn(move || pump(inside_reader, outside));
    pump(outside_reader, inside);
    let _ = up.join();
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                if to.write_all(&buffer[..read]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop_forwarders.store(true, Ordering::Relaxed);
        self.stop();
    }
}
