//! A real etcd (Debian's `etcd-server`, installed by `cargo xtask setup`) for the fleet
//! tests: started on 127.0.0.1 with free ports and a temporary data dir, killed on
//! `Drop`. Daemons run in network namespaces of their own, whose loopback is not the
//! test's: [`Etcd::endpoint_in`] opens a forwarder listening on 127.0.0.1 inside the
//! namespace (a socket stays in the namespace it was made in) that relays each
//! connection to etcd. Stopping etcd ends every relayed connection, as losing etcd would.
//!
//! [`Etcd::start_with`] secures it as a production etcd would be: TLS with certificates
//! of a CA made for the test (`--client-cert-auth` optionally), and users with
//! `--auth` ([`Security`]); [`Etcd::fleet_options`] gives the `[fleet]` lines a client
//! of it needs.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use allowlist_userspace::fleet::{etcd, FleetConfig};
use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::{in_netns, Netns};

/// Where Debian's etcd-server puts the binary.
pub const ETCD: &str = "/usr/bin/etcd";

/// How a test's etcd is reached and who may use it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Security {
    /// `https://` with a certificate (SAN 127.0.0.1) of a CA made for the test.
    pub tls: bool,
    /// With `tls`: clients must show a certificate of that CA (`--client-cert-auth`).
    pub client_certs: bool,
    /// Auth enabled: user `root`, and [`USER`] whose role reads and writes only
    /// `/allowlist/`.
    pub auth: bool,
}

/// The etcd user a secured etcd has for allowlist's hosts and operators.
pub const USER: &str = "allowlist";
const USER_PASSWORD: &str = "allowlist-secret";
const ROOT_PASSWORD: &str = "root-secret";

pub struct Etcd {
    child: Option<Child>,
    security: Security,
    /// Users exist and auth is on: the test's own client logs in as root.
    auth_enabled: bool,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// etcd derives its cluster id from it: another token, another cluster.
    token: String,
    stop_forwarders: Arc<AtomicBool>,
    /// The watches relayed so far: set, one stops passing bytes.
    watches: Watches,
}

/// One flag per relayed watch connection: set, the relay drops its bytes both ways.
type Watches = Arc<Mutex<Vec<Arc<AtomicBool>>>>;

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Etcd {
    /// Starts etcd and waits until it answers. Its limits let one transaction replace a
    /// 100,000-entry set (the defaults are 128 operations and 1.5 MiB).
    pub fn start() -> Result<Etcd> {
        Etcd::start_with(Security::default())
    }

    /// As [`Etcd::start`], secured as `security` says. Not `client_certs` with `auth`:
    /// etcd 3.4 then refuses every login through its JSON gateway.
    pub fn start_with(security: Security) -> Result<Etcd> {
        if security.client_certs && security.auth {
            bail!("etcd 3.4 refuses logins through its JSON gateway when it also asks for client certificates");
        }
        let mut etcd = Etcd {
            child: None,
            security,
            auth_enabled: false,
            dir: tempfile::tempdir()?,
            client_port: free_port()?,
            peer_port: free_port()?,
            token: "allowlist-test".into(),
            stop_forwarders: Arc::new(AtomicBool::new(false)),
            watches: Watches::default(),
        };
        if security.tls {
            etcd.make_certificates()?;
        }
        etcd.spawn()?;
        if security.auth {
            etcd.enable_auth()?;
        }
        Ok(etcd)
    }

    /// A CA, etcd's certificate signed by it (also usable as a client certificate: the
    /// JSON gateway inside etcd connects to etcd's gRPC with it), a client certificate,
    /// and another CA that signed none of them.
    fn make_certificates(&self) -> Result<()> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose as Eku, IsCa,
            Issuer, KeyPair, KeyUsagePurpose,
        };
        let write = |name: &str, text: String| std::fs::write(self.dir.path().join(name), text);
        let ca = |name: &str| -> Result<(CertificateParams, KeyPair, String)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.distinguished_name.push(DnType::CommonName, name);
            let pem = params.self_signed(&key)?.pem();
            Ok((params, key, pem))
        };
        let (ca_params, ca_key, ca_pem) = ca("allowlist test CA")?;
        write("ca.pem", ca_pem)?;
        write("other-ca.pem", ca("another CA")?.2)?;
        let issuer = Issuer::new(ca_params, ca_key);
        for (name, sans, usages) in [
            (
                "server",
                vec!["127.0.0.1".to_string(), "localhost".to_string()],
                vec![Eku::ServerAuth, Eku::ClientAuth],
            ),
            ("client", Vec::new(), vec![Eku::ClientAuth]),
        ] {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(sans)?;
            params
                .distinguished_name
                .push(DnType::CommonName, format!("etcd test {name}"));
            params.extended_key_usages = usages;
            write(
                &format!("{name}.pem"),
                params.signed_by(&key, &issuer)?.pem(),
            )?;
            write(&format!("{name}.key"), key.serialize_pem())?;
        }
        Ok(())
    }

    /// Adds `root` and [`USER`] (read-write on `/allowlist/` only) and turns auth on,
    /// through the JSON gateway as `etcdctl user add`, `role grant-permission` and `auth
    /// enable` do.
    fn enable_auth(&mut self) -> Result<()> {
        std::fs::write(self.dir.path().join("root.password"), ROOT_PASSWORD)?;
        std::fs::write(self.password_file(), format!("{USER_PASSWORD}\n"))?;
        let prefix = "/allowlist/";
        let client = self.client();
        for (path, body) in [
            (
                "/v3/auth/user/add",
                json!({"name": "root", "password": ROOT_PASSWORD}),
            ),
            ("/v3/auth/role/add", json!({"name": "root"})),
            (
                "/v3/auth/user/grant",
                json!({"user": "root", "role": "root"}),
            ),
            (
                "/v3/auth/user/add",
                json!({"name": USER, "password": USER_PASSWORD}),
            ),
            ("/v3/auth/role/add", json!({"name": USER})),
            (
                "/v3/auth/role/grant",
                json!({"name": USER, "perm": {
                    "permType": "READWRITE",
                    "key": etcd::encode(prefix.as_bytes()),
                    "range_end": etcd::encode(&etcd::prefix_end(prefix)),
                }}),
            ),
            ("/v3/auth/user/grant", json!({"user": USER, "role": USER})),
            ("/v3/auth/enable", json!({})),
        ] {
            client
                .call(path, &body)
                .with_context(|| format!("{path} {body}"))?;
        }
        self.auth_enabled = true;
        // Logged in as root from now on.
        self.client()
            .range_prefix("/")
            .context("reading as root once auth is on")?;
        Ok(())
    }

    /// Sets `user`'s password in etcd (as `etcdctl user passwd`), as root.
    pub fn change_password(&self, user: &str, password: &str) -> Result<Value> {
        Ok(self.client().call(
            "/v3/auth/user/changepw",
            &json!({"name": user, "password": password}),
        )?)
    }

    /// `http` or `https`.
    fn scheme(&self) -> &'static str {
        if self.security.tls {
            "https"
        } else {
            "http"
        }
    }

    /// The test CA's certificate (PEM), which signed etcd's and the client's.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A CA's certificate that signed nothing etcd shows.
    pub fn other_ca_file(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }

    /// The client certificate and key (PEM), signed by the test CA.
    pub fn client_cert(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("client.pem"),
            self.dir.path().join("client.key"),
        )
    }

    /// The file holding [`USER`]'s password (one line).
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("allowlist.password")
    }

    /// The `[fleet]` lines (after `endpoints`) a client of this etcd needs: the CA, the
    /// client certificate, [`USER`] and its password file, as `security` asks.
    pub fn fleet_options(&self) -> String {
        let path = |path: PathBuf| crate::daemon::toml_string(&path.to_string_lossy());
        let mut lines = String::new();
        if self.security.tls {
            lines.push_str(&format!("ca_file = {}\n", path(self.ca_file())));
        }
        if self.security.client_certs {
            let (cert, key) = self.client_cert();
            lines.push_str(&format!(
                "cert_file = {}\nkey_file = {}\n",
                path(cert),
                path(key)
            ));
        }
        if self.security.auth {
            lines.push_str(&format!(
                "username = {}\npassword_file = {}\n",
                crate::daemon::toml_string(USER),
                path(self.password_file())
            ));
        }
        lines
    }

    fn spawn(&mut self) -> Result<()> {
        let client = format!("{}://127.0.0.1:{}", self.scheme(), self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))?;
        let mut command = Command::new(ETCD);
        if self.security.tls {
            command
                .arg("--cert-file")
                .arg(self.dir.path().join("server.pem"))
                .arg("--key-file")
                .arg(self.dir.path().join("server.key"));
            if self.security.client_certs {
                command
                    .arg("--client-cert-auth")
                    .arg("--trusted-ca-file")
                    .arg(self.ca_file());
            }
        }
        let child = command
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
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    /// A client of it, as `allowlistctl fleet` makes one: over TLS when it has TLS (a
    /// client certificate when it asks for one), logged in as root once auth is on.
    pub fn client(&self) -> etcd::Etcd {
        let tls = self.security.tls;
        let (cert, key) = self.client_cert();
        let client_certs = self.security.client_certs;
        let config = FleetConfig {
            endpoints: vec![self.url()],
            prefix: "/allowlist".into(),
            host: "test".into(),
            sets: Vec::new(),
            ca_file: tls.then(|| self.ca_file()),
            cert_file: client_certs.then_some(cert),
            key_file: client_certs.then_some(key),
            username: self.auth_enabled.then(|| "root".to_string()),
            password_file: self
                .auth_enabled
                .then(|| self.dir.path().join("root.password")),
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
        let watches = Arc::clone(&self.watches);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inside, _)) => {
                        let _ = inside.set_nonblocking(false);
                        let watches = Arc::clone(&watches);
                        thread::spawn(move || relay(inside, target, &watches));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(format!("{}://127.0.0.1:{port}", self.scheme()))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Every watch relayed so far (plain HTTP only: the relay tells a watch by its
    /// request line) stops passing bytes either way without closing, as a connection
    /// does that a NAT or firewall forgot, or whose etcd member was cut off without a
    /// reset. Other connections, and new ones, pass as before.
    pub fn black_hole_watches(&self) -> usize {
        let watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        for dead in watches.iter() {
            dead.store(true, Ordering::Relaxed);
        }
        watches.len()
    }
}

/// Copies bytes both ways between a connection from a namespace and etcd, until either
/// side closes; a watch is registered in `watches` ([`Etcd::black_hole_watches`]).
fn relay(inside: TcpStream, target: SocketAddr, watches: &Watches) {
    let Ok(outside) = TcpStream::connect(target) else {
        let _ = inside.shutdown(Shutdown::Both);
        return;
    };
    let _ = inside.set_nodelay(true);
    let _ = outside.set_nodelay(true);
    let (Ok(inside_reader), Ok(outside_reader)) = (inside.try_clone(), outside.try_clone()) else {
        return;
    };
    let dead = Arc::new(AtomicBool::new(false));
    let registry = (Arc::clone(watches), Arc::clone(&dead));
    let up = thread::spawn(move || pump(inside_reader, outside, &registry.1, Some(&registry.0)));
    pump(outside_reader, inside, &dead, None);
    let _ = up.join();
}

/// Copies `from` to `to` until either closes; while `dead`, reads and drops. Given
/// `watches`, registers `dead` there when the first bytes are a watch request.
fn pump(mut from: TcpStream, mut to: TcpStream, dead: &Arc<AtomicBool>, watches: Option<&Watches>) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut first = true;
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                if std::mem::take(&mut first) && buffer[..read].starts_with(b"POST /v3/watch ") {
                    if let Some(watches) = watches {
                        watches
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Arc::clone(dead));
                    }
                }
                if dead.load(Ordering::Relaxed) {
                    continue;
                }
                if to.write_all(&buffer[..read]).is_err() {
                    break;
                }
            }
        }
    }
    // A black-holed connection is never closed by the relay: its ends just hear nothing.
    if dead.load(Ordering::Relaxed) {
        return;
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
