//! Driving the real `allowlistd` and `allowlistctl` binaries.
//!
//! The daemon runs inside the topology's host namespace. Its control socket, state
//! directory, log and config live in a per-daemon temp dir, and its pins under a unique
//! directory of the bpffs, so daemons of parallel tests never meet.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use allowlist_userspace::config::{EncapsulatedIp, Mode, XdpMode};
use allowlist_userspace::control;
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use tempfile::TempDir;

use crate::netns::Netns;
use crate::process::{output_with_timeout, run_checked, wait_with_deadline, COMMAND_TIMEOUT};
use crate::topology::{Topology, ALLOWED_LINK};

/// How long a daemon may take from spawn to answering `status`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// [`READY_TIMEOUT`], or `$ALLOWLIST_READY_TIMEOUT_SECS` where loading the program is slow
/// (the VM's emulated CPU, whose verifier alone can take most of 20 s).
pub fn ready_timeout() -> Duration {
    std::env::var("ALLOWLIST_READY_TIMEOUT_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .map_or(READY_TIMEOUT, Duration::from_secs)
}

/// Where bpffs is expected; per-test pin directories are made below it.
const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// `statfs` magic number of bpffs.
const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;

static NEXT_DAEMON: AtomicUsize = AtomicUsize::new(0);

/// The two binaries under test, and how the daemon is run.
#[derive(Clone, Debug, Default)]
pub struct Binaries {
    pub daemon: PathBuf,
    pub ctl: PathBuf,
    /// A command the daemon runs under, its command line appended (e.g. `setpriv
    /// --bounding-set=…`); none by default.
    pub daemon_prefix: Vec<OsString>,
    /// Environment variables for the daemon only (e.g. `NOTIFY_SOCKET`).
    pub daemon_env: Vec<(OsString, OsString)>,
}

impl Binaries {
    /// `$ALLOWLIST_BIN_DIR` (set by `cargo xtask test`), else the workspace's target/debug.
    pub fn locate() -> Result<Self> {
        let dir = std::env::var_os("ALLOWLIST_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
        Self::at(
            dir.join("allowlistd"),
            dir.join("allowlistctl"),
            "run `cargo build -p allowlist-userspace` or set ALLOWLIST_BIN_DIR",
        )
    }

    /// The next version's binaries for the upgrade tests: another map layout, and crash
    /// points (`$ALLOWLIST_NEXT_BIN_DIR`, built by `cargo xtask test`).
    pub fn next_layout() -> Result<Self> {
        let dir = std::env::var_os("ALLOWLIST_NEXT_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/next-layout/debug")
            });
        Self::at(
            dir.join("allowlistd"),
            dir.join("allowlistctl"),
            "run `cargo xtask test`, or `ALLOWLIST_TEST_LAYOUT=1 cargo build -p allowlist-userspace \
             --features crash-points --target-dir target/next-layout` and set ALLOWLIST_NEXT_BIN_DIR",
        )
    }

    /// The same binaries, killed as by `kill -9` at `step` of an upgrade (next-layout
    /// binaries only: they have the crash points).
    pub fn crashing_at(mut self, step: &str) -> Self {
        self.daemon_env
            .push(("ALLOWLIST_CRASH_AT".into(), step.into()));
        self
    }

    /// Where the Debian package installs them.
    pub fn installed() -> Result<Self> {
        Self::at(
            "/usr/sbin/allowlistd".into(),
            "/usr/bin/allowlistctl".into(),
            "is the package installed?",
        )
    }

    fn at(daemon: PathBuf, ctl: PathBuf, hint: &str) -> Result<Self> {
        for binary in [&daemon, &ctl] {
            ensure!(binary.is_file(), "{} not found: {hint}", binary.display());
        }
        Ok(Self {
            daemon,
            ctl,
            ..Self::default()
        })
    }
}

/// A daemon config. The per-daemon paths (socket, pin_path, state_dir) are filled in
/// from [`DaemonFiles`] when rendered.
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    interfaces: Vec<String>,
    mode: Mode,
    xdp_mode: XdpMode,
    allow: Vec<(String, String)>,
    always: Vec<(String, String)>,
    socket_group: Option<String>,
    socket_readable_by_all: bool,
    /// Port scopes of `allow` entries, by their index.
    allow_ports: Vec<(usize, Vec<String>)>,
    return_traffic: Option<bool>,
    public_ports: Vec<String>,
    encapsulated_ip: Option<EncapsulatedIp>,
    dropped_sources: Option<u32>,
    metrics_listen: Option<std::net::SocketAddr>,
    /// Tables written last, as given (`[[feed]]`).
    tables: Vec<String>,
    /// Top-level keys written before the first table, as given (`dns_servers = …`).
    keys: Vec<String>,
}

impl ConfigBuilder {
    /// Enforce mode, `xdp_mode = "auto"`, an empty list.
    pub fn new(interfaces: &[&str]) -> Self {
        Self {
            interfaces: interfaces.iter().map(|name| name.to_string()).collect(),
            mode: Mode::Enforce,
            xdp_mode: XdpMode::Auto,
            allow: Vec::new(),
            always: Vec::new(),
            socket_group: None,
            socket_readable_by_all: false,
            allow_ports: Vec::new(),
            return_traffic: None,
            public_ports: Vec::new(),
            encapsulated_ip: None,
            dropped_sources: None,
            metrics_listen: None,
            tables: Vec::new(),
            keys: Vec::new(),
        }
    }

    /// A top-level key written as given before the first table, e.g. `dns_servers = […]`.
    pub fn key(mut self, toml: &str) -> Self {
        self.keys.push(toml.into());
        self
    }

    /// `dropped_sources = N`: how many dropped sources the kernel remembers (0: none).
    pub fn dropped_sources(mut self, capacity: u32) -> Self {
        self.dropped_sources = Some(capacity);
        self
    }

    /// `metrics_listen = "ADDRESS:PORT"`: serve Prometheus metrics there.
    pub fn metrics_listen(mut self, at: std::net::SocketAddr) -> Self {
        self.metrics_listen = Some(at);
        self
    }

    /// A table written as given at the end of the file, e.g. a `[[feed]]`.
    pub fn table(mut self, toml: &str) -> Self {
        self.tables.push(toml.into());
        self
    }

    /// Guards both host-side interfaces of `topology`.
    pub fn for_topology(topology: &Topology) -> Self {
        Self::new(&topology.guarded_interfaces())
    }

    /// The set-up most tests start from: guards `topology`, enforcing, with the allowed
    /// client listed by its IPv4 /32 ("allowed client v4") and IPv6 /128 ("allowed client
    /// v6"), for all ports; the blocked client is on no list.
    pub fn allowed_client(topology: &Topology) -> Self {
        Self::allowed_client_v4(topology).allow(
            format!("{}/128", ALLOWED_LINK.client_v6),
            "allowed client v6",
        )
    }

    /// As [`ConfigBuilder::allowed_client`] with the allowed client's IPv4 address alone
    /// listed: its IPv6 traffic is judged like the blocked client's.
    pub fn allowed_client_v4(topology: &Topology) -> Self {
        Self::for_topology(topology).mode(Mode::Enforce).allow(
            format!("{}/32", ALLOWED_LINK.client_v4),
            "allowed client v4",
        )
    }

    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    pub fn xdp_mode(mut self, xdp_mode: XdpMode) -> Self {
        self.xdp_mode = xdp_mode;
        self
    }

    pub fn allow(mut self, cidr: impl ToString, description: &str) -> Self {
        self.allow.push((cidr.to_string(), description.into()));
        self
    }

    pub fn allow_all<I, S>(mut self, cidrs: I, description: &str) -> Self
    where
        I: IntoIterator<Item = S>,
        S: ToString,
    {
        for cidr in cidrs {
            self.allow.push((cidr.to_string(), description.into()));
        }
        self
    }

    /// An `[[always]]` entry: always allowed, not removable from the CLI.
    pub fn always(mut self, cidr: impl ToString, description: &str) -> Self {
        self.always.push((cidr.to_string(), description.into()));
        self
    }

    /// `socket_group = NAME`: members may change the list through the socket.
    pub fn socket_group(mut self, group: &str) -> Self {
        self.socket_group = Some(group.into());
        self
    }

    /// An `[[allow]]` entry limited to destination ports (`ports = ["22/tcp", …]`).
    pub fn allow_ports(mut self, cidr: impl ToString, description: &str, ports: &[&str]) -> Self {
        self.allow_ports.push((
            self.allow.len(),
            ports.iter().map(|port| port.to_string()).collect(),
        ));
        self.allow.push((cidr.to_string(), description.into()));
        self
    }

    /// `return_traffic = true|false` (the daemon's default is true).
    pub fn return_traffic(mut self, enabled: bool) -> Self {
        self.return_traffic = Some(enabled);
        self
    }

    /// `public_ports = [...]`: reachable from every source.
    pub fn public_ports(mut self, ports: &[&str]) -> Self {
        self.public_ports = ports.iter().map(|port| port.to_string()).collect();
        self
    }

    /// `encapsulated_ip = "drop"|"pass"` (the daemon's default is drop).
    pub fn encapsulated_ip(mut self, value: EncapsulatedIp) -> Self {
        self.encapsulated_ip = Some(value);
        self
    }

    /// `socket_readable_by_all = true|false`: everyone may run read-only commands.
    pub fn socket_readable_by_all(mut self, readable: bool) -> Self {
        self.socket_readable_by_all = readable;
        self
    }

    pub fn render(&self, files: &DaemonFiles) -> String {
        let interfaces: Vec<String> = self
            .interfaces
            .iter()
            .map(|name| toml_string(name))
            .collect();
        let mut toml = format!(
            "interfaces = [{}]\nmode = {}\nxdp_mode = {}\n{}",
            interfaces.join(", "),
            toml_string(self.mode.as_str()),
            toml_string(&config_name(self.xdp_mode)),
            files.paths_toml()
        );
        // Optional keys are written only when set, so configs of tests that do not use
        // them stay exactly as before.
        if let Some(group) = &self.socket_group {
            toml.push_str(&format!("socket_group = {}\n", toml_string(group)));
        }
        if self.socket_readable_by_all {
            toml.push_str("socket_readable_by_all = true\n");
        }
        if let Some(enabled) = self.return_traffic {
            toml.push_str(&format!("return_traffic = {enabled}\n"));
        }
        if let Some(value) = self.encapsulated_ip {
            toml.push_str(&format!(
                "encapsulated_ip = {}\n",
                toml_string(&config_name(value))
            ));
        }
        if let Some(capacity) = self.dropped_sources {
            toml.push_str(&format!("dropped_sources = {capacity}\n"));
        }
        if let Some(at) = self.metrics_listen {
            toml.push_str(&format!(
                "metrics_listen = {}\n",
                toml_string(&at.to_string())
            ));
        }
        if !self.public_ports.is_empty() {
            toml.push_str(&format!(
                "public_ports = {}\n",
                toml_list(&self.public_ports)
            ));
        }
        for key in &self.keys {
            toml.push_str(key);
            toml.push('\n');
        }
        for (index, (cidr, description)) in self.allow.iter().enumerate() {
            toml.push_str(&format!(
                "\n[[allow]]\ncidr = {}\ndescription = {}\n",
                toml_string(cidr),
                toml_string(description)
            ));
            if let Some((_, ports)) = self.allow_ports.iter().find(|(at, _)| *at == index) {
                toml.push_str(&format!("ports = {}\n", toml_list(ports)));
            }
        }
        for (cidr, description) in &self.always {
            toml.push_str(&format!(
                "\n[[always]]\ncidr = {}\ndescription = {}\n",
                toml_string(cidr),
                toml_string(description)
            ));
        }
        for table in &self.tables {
            toml.push('\n');
            toml.push_str(table);
            toml.push('\n');
        }
        toml
    }
}

/// The name the config file gives `value` (`generic`, `pass`, …), from the same serde
/// derive the daemon reads it with, so the harness never writes a name the daemon would
/// not read.
fn config_name(value: impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(name)) => name,
        other => panic!("not a config keyword: {other:?}"),
    }
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| toml_string(item)).collect();
    format!("[{}]", quoted.join(", "))
}

/// A command prefix running what follows as `uid`/`gid` with no other groups (or with
/// `groups`): `setpriv --reuid=UID --regid=GID --clear-groups|--groups=G,...`.
pub fn as_user(uid: u32, gid: u32, groups: &[u32]) -> Command {
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        command.arg("--clear-groups");
    } else {
        let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
        command.arg(format!("--groups={}", groups.join(",")));
    }
    command
}

/// A TOML basic string.
pub fn toml_string(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The files of one daemon: a temp dir holding config, control socket, state dir and log,
/// plus a unique pin directory on bpffs. Dropping it removes the temp dir (not the pins:
/// [`Daemon`] cleans those).
#[derive(Debug)]
pub struct DaemonFiles {
    dir: TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub pin_path: PathBuf,
    /// An empty directory used to carry the bpffs mount into the daemon's namespace.
    bpffs_carrier: PathBuf,
}

impl DaemonFiles {
    pub fn new() -> Result<Self> {
        ensure_bpffs()?;
        let dir = tempfile::Builder::new()
            .prefix("allowlist-test-")
            .tempdir()?;
        let state_dir = dir.path().join("state");
        let bpffs_carrier = dir.path().join("bpffs");
        fs::create_dir(&state_dir)?;
        fs::create_dir(&bpffs_carrier)?;
        Ok(Self {
            config: dir.path().join("allowlist.toml"),
            socket: dir.path().join("control.sock"),
            log: dir.path().join("allowlistd.log"),
            pin_path: Path::new(BPFFS_ROOT).join(format!(
                "alt-{}-{}",
                std::process::id(),
                NEXT_DAEMON.fetch_add(1, Ordering::Relaxed)
            )),
            state_dir,
            bpffs_carrier,
            dir,
        })
    }

    /// The paths an installed package uses: /etc/allowlist/allowlist.toml and the
    /// defaults it leaves in force (socket, pins, state). System-wide, so only for tests
    /// that hold the machine to themselves; the log and the bpffs carrier stay in a temp
    /// dir.
    pub fn at_default_paths() -> Result<Self> {
        use allowlist_userspace::config::{
            DEFAULT_CONFIG, DEFAULT_PIN_PATH, DEFAULT_SOCKET, DEFAULT_STATE_DIR,
        };
        Ok(Self {
            config: DEFAULT_CONFIG.into(),
            socket: DEFAULT_SOCKET.into(),
            state_dir: DEFAULT_STATE_DIR.into(),
            pin_path: DEFAULT_PIN_PATH.into(),
            ..Self::new()?
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `socket`, `pin_path` and `state_dir` lines of a config for these files.
    pub fn paths_toml(&self) -> String {
        format!(
            "socket = {}\npin_path = {}\nstate_dir = {}\n",
            toml_string(&self.socket.to_string_lossy()),
            toml_string(&self.pin_path.to_string_lossy()),
            toml_string(&self.state_dir.to_string_lossy())
        )
    }

    /// Replaces the config file atomically, so a daemon reading it concurrently sees
    /// either the old or the new text, never half of one.
    pub fn write_config(&self, text: &str) -> Result<()> {
        // Beside the config, so that the rename stays on one file system.
        let staging = self.config.with_extension("toml.new");
        fs::write(&staging, text)?;
        fs::rename(&staging, &self.config)?;
        Ok(())
    }

    /// A command running `allowlistd --config CONFIG ARGS...` inside `netns`.
    ///
    /// `ip netns exec` would remount /sys for the namespace and so hide bpffs, which is
    /// mounted under /sys: pins made there would live in a private bpffs and vanish with
    /// the daemon. Instead the command enters the network namespace, takes a private
    /// mount namespace, remounts /sys (so /sys/class/net shows the namespace's devices,
    /// as with `ip netns exec`) and mounts the host's bpffs back on top of it.
    pub fn daemon_command(&self, netns: &Netns, binaries: &Binaries, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", netns.path().display()))
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount --bind /sys/fs/bpf \"$1\" && umount -l /sys && \
                 mount -t sysfs sysfs /sys && mount --move \"$1\" /sys/fs/bpf && \
                 shift && exec \"$@\"",
            )
            .arg("sh")
            .arg(&self.bpffs_carrier)
            .args(&binaries.daemon_prefix)
            .arg(&binaries.daemon)
            .envs(binaries.daemon_env.iter().map(|(key, value)| (key, value)))
            .arg("--config")
            .arg(&self.config)
            .args(args);
        command
    }

    /// Runs `allowlistd --config CONFIG ARGS...` in `netns` to completion (it is killed
    /// after `timeout`: a daemon that accepted a bad config would otherwise run forever).
    pub fn run_daemon_to_exit(
        &self,
        netns: &Netns,
        binaries: &Binaries,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output> {
        output_with_timeout(&mut self.daemon_command(netns, binaries, args), timeout)
    }
}

/// Makes sure bpffs is mounted at /sys/fs/bpf in the root mount namespace (minimal
/// machines do not mount it); the daemon can only pin there if it is.
pub fn ensure_bpffs() -> Result<()> {
    static CHECKED: Mutex<bool> = Mutex::new(false);
    let mut checked = CHECKED.lock().unwrap_or_else(|poison| poison.into_inner());
    if *checked {
        return Ok(());
    }
    // Test binaries of other runs may be doing the same; a second mount on top of the
    // first would split pins between two bpffs instances.
    let lock = File::create("/run/allowlist-tests-bpffs.lock")?;
    // SAFETY: flock on a descriptor we own; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context("flock bpffs lock");
    }
    if !is_bpffs(Path::new(BPFFS_ROOT))? {
        run_checked(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS_ROOT]))
            .context("mounting bpffs at /sys/fs/bpf")?;
    }
    *checked = true;
    Ok(())
}

fn is_bpffs(path: &Path) -> Result<bool> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs fills a zeroed struct we own from a NUL-terminated path.
    let mut info: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs writes into `info`, which we own, from a NUL-terminated path.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut info) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statfs {path:?}"));
    }
    Ok(info.f_type as libc::c_long == BPF_FS_MAGIC)
}

/// One counter of `allowlistctl stats` (packets and bytes): the daemon's own reply type.
pub use allowlist_userspace::control::CounterValue as Counter;

/// The counters of `allowlistctl stats --json`, by reason: the daemon's reply, read with
/// its own type, and what tests ask of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats(control::Stats);

impl Stats {
    /// Every reason the interface documents; a daemon leaving one out is a bug.
    pub const REASONS: [&'static str; 16] = [
        "passed_listed",
        "passed_non_ip",
        "passed_exempt",
        "passed_off",
        "passed_return_traffic",
        "passed_public_port",
        "passed_fragment",
        "passed_encapsulated",
        "dropped_not_listed",
        "dropped_port_not_allowed",
        "dropped_malformed",
        "dropped_encapsulated",
        "monitor_would_drop",
        "monitor_port_not_allowed",
        "monitor_malformed",
        "monitor_encapsulated",
    ];

    pub fn from_json(json: &Value) -> Result<Self> {
        let stats: control::Stats = serde_json::from_value(json.clone())
            .with_context(|| format!("not the stats of allowlistctl: {json}"))?;
        for reason in Self::REASONS {
            ensure!(
                stats.counters.contains_key(reason),
                "reason {reason} missing in {json}"
            );
        }
        Ok(Self(stats))
    }

    /// The counter for `reason`; panics for a reason the daemon did not report.
    pub fn get(&self, reason: &str) -> Counter {
        *self
            .0
            .counters
            .get(reason)
            .unwrap_or_else(|| panic!("no counter {reason:?} in {self:?}"))
    }

    /// What was counted between `earlier` and `self`. Counters only grow; one that went
    /// back (say, was reset by a restart) fails the test here.
    pub fn since(&self, earlier: &Stats) -> Stats {
        let counters = self
            .0
            .counters
            .iter()
            .map(|(reason, now)| {
                let before = earlier.0.counters.get(reason).copied().unwrap_or_default();
                assert!(
                    now.packets >= before.packets && now.bytes >= before.bytes,
                    "counter {reason} went backwards: {before:?} -> {now:?}"
                );
                let delta = Counter {
                    packets: now.packets - before.packets,
                    bytes: now.bytes - before.bytes,
                };
                (reason.clone(), delta)
            })
            .collect();
        Stats(control::Stats {
            counters,
            interfaces: Default::default(),
        })
    }

    pub fn reasons(&self) -> impl Iterator<Item = (&str, Counter)> {
        self.0
            .counters
            .iter()
            .map(|(reason, counter)| (reason.as_str(), *counter))
    }
}

/// One entry of `allowlistctl list --json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedEntry {
    pub network: String,
    pub description: String,
    /// `config`, `always`, `cli`, `csv import` or `feed NAME`.
    pub origin: String,
    /// The set it belongs to: `default`, a name given with `--set`, `config`, `always`
    /// or a feed's name.
    pub set: String,
    /// RFC 3339.
    pub added_at: String,
    /// RFC 3339, for temporary entries.
    pub expires_at: Option<String>,
}

impl ListedEntry {
    pub fn from_json(json: &Value) -> Result<Self> {
        let field = |name: &str| {
            json[name]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("no string {name:?} in list entry {json}"))
        };
        let expires_at = match &json["expires_at"] {
            Value::Null => None,
            Value::String(at) => Some(at.clone()),
            other => bail!("expires_at is neither null nor a string: {other} in {json}"),
        };
        Ok(Self {
            network: field("network")?,
            description: field("description")?,
            origin: field("origin")?,
            set: field("set")?,
            added_at: field("added_at")?,
            expires_at,
        })
    }

    /// (network, description, origin): what an operator manages.
    pub fn managed_fields(&self) -> (String, String, String) {
        (
            self.network.clone(),
            self.description.clone(),
            self.origin.clone(),
        )
    }
}

/// A running `allowlistd` in the host namespace of a topology.
///
/// On drop (also when the test panics) it kills the daemon, runs
/// `allowlistd uninstall` and removes the pin directory, and if the test is failing it
/// prints the daemon's log.
pub struct Daemon<'netns> {
    host: &'netns Netns,
    binaries: Binaries,
    files: DaemonFiles,
    child: Option<Child>,
    starts: usize,
    /// RLIMIT_NOFILE (soft, hard) the daemon is started with, if not inherited.
    descriptor_limit: Option<(u64, u64)>,
    /// Arguments after `--config CONFIG` (e.g. `--log-format json`).
    args: Vec<String>,
}

impl<'netns> Daemon<'netns> {
    /// Writes `config` and starts the daemon in the topology's host namespace; returns
    /// once `allowlistctl status` answers.
    pub fn start(topology: &'netns Topology, config: &ConfigBuilder) -> Result<Self> {
        Self::start_in(topology.host(), config)
    }

    pub fn start_in(host: &'netns Netns, config: &ConfigBuilder) -> Result<Self> {
        Self::start_with(host, config, DaemonFiles::new()?, None)
    }

    /// As [`Daemon::start_in`], with files prepared by the test (a state dir on a small
    /// tmpfs, say) and optionally an RLIMIT_NOFILE (soft, hard) to start with.
    pub fn start_with(
        host: &'netns Netns,
        config: &ConfigBuilder,
        files: DaemonFiles,
        descriptor_limit: Option<(u64, u64)>,
    ) -> Result<Self> {
        let mut daemon = Self::prepare(host, Some(config), files, Binaries::locate()?)?;
        daemon.descriptor_limit = descriptor_limit;
        daemon.spawn_and_wait_ready()?;
        Ok(daemon)
    }

    /// Writes `config` (or, given `None`, uses the config file already at
    /// `files.config`, e.g. a package's conffile) and starts `binaries`' daemon without
    /// waiting for it, for tests that watch it get ready themselves
    /// ([`Daemon::wait_ready`] waits as `start` does).
    pub fn launch(
        host: &'netns Netns,
        config: Option<&ConfigBuilder>,
        files: DaemonFiles,
        binaries: Binaries,
    ) -> Result<Self> {
        let mut daemon = Self::prepare(host, config, files, binaries)?;
        daemon.spawn()?;
        Ok(daemon)
    }

    fn prepare(
        host: &'netns Netns,
        config: Option<&ConfigBuilder>,
        files: DaemonFiles,
        binaries: Binaries,
    ) -> Result<Self> {
        if let Some(config) = config {
            files.write_config(&config.render(&files))?;
        }
        Ok(Self {
            host,
            binaries,
            files,
            child: None,
            starts: 0,
            descriptor_limit: None,
            args: Vec::new(),
        })
    }

    /// As [`Daemon::start`], with `args` after `--config CONFIG` at every start.
    pub fn start_with_args(
        topology: &'netns Topology,
        config: &ConfigBuilder,
        args: &[&str],
    ) -> Result<Self> {
        let mut daemon = Self::prepare(
            topology.host(),
            Some(config),
            DaemonFiles::new()?,
            Binaries::locate()?,
        )?;
        daemon.args = args.iter().map(ToString::to_string).collect();
        daemon.spawn_and_wait_ready()?;
        Ok(daemon)
    }

    /// The daemon's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn files(&self) -> &DaemonFiles {
        &self.files
    }

    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    pub fn pin_path(&self) -> &Path {
        &self.files.pin_path
    }

    /// Everything the daemon wrote to stdout and stderr, across restarts.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.files.log).unwrap_or_default()
    }

    fn spawn_and_wait_ready(&mut self) -> Result<()> {
        self.spawn()?;
        self.wait_ready()
    }

    fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.files.log)?;
        writeln!(
            log,
            "===== harness: allowlistd start #{} =====",
            self.starts
        )?;
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut command = self.files.daemon_command(self.host, &self.binaries, &args);
        if let Some((soft, hard)) = self.descriptor_limit {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: only setrlimit, async-signal-safe, runs between fork and exec; the
            // limit is inherited through nsenter/unshare/sh by the daemon they exec.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning allowlistd")?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until `allowlistctl status` answers; fails if the daemon exits first.
    pub fn wait_ready(&mut self) -> Result<()> {
        let timeout = ready_timeout();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                // Gone: a later restart() may try again.
                self.child = None;
                bail!(
                    "allowlistd exited with {status} before it was ready; log:\n{}",
                    self.log()
                );
            }
            let probe = output_with_timeout(
                &mut self.ctl_command(&["status", "--json"]),
                Duration::from_secs(5),
            );
            if matches!(&probe, Ok(output) if output.status.success()) {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "allowlistd did not answer `status` within {timeout:?}; last try: {probe:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `allowlistctl --socket SOCKET ARGS...` as a command to adjust and run.
    ///
    /// `SSH_CONNECTION` is removed from its environment: allowlistctl reports it to the
    /// daemon as the caller's address for the lockout checks, and tests must not judge
    /// differently when the suite happens to run in an SSH session. Tests that play an
    /// SSH caller set it with [`Daemon::ctl_env`].
    pub fn ctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binaries.ctl);
        command
            .env_remove("SSH_CONNECTION")
            .arg("--socket")
            .arg(&self.files.socket)
            .args(args);
        command
    }

    /// As [`Daemon::ctl`], with extra environment variables (e.g. `SSH_CONNECTION`).
    pub fn ctl_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut command = self.ctl_command(args);
        command.envs(env.iter().copied());
        output_with_timeout(&mut command, COMMAND_TIMEOUT).unwrap_or_else(|error| {
            panic!(
                "allowlistctl {args:?} with {env:?}: {error:#}\nlog:\n{}",
                self.log()
            )
        })
    }

    /// As [`Daemon::ctl`], run as another user: `setpriv --reuid=UID --regid=GID
    /// --clear-groups`, or with `groups` as its supplementary groups when not empty.
    /// Call [`Daemon::open_socket_dir`] first, or the user cannot even reach the socket.
    pub fn ctl_as(&self, uid: u32, gid: u32, groups: &[u32], args: &[&str]) -> Output {
        let ctl = self.ctl_command(args);
        let mut command = as_user(uid, gid, groups);
        command
            .arg(ctl.get_program())
            .args(ctl.get_args())
            .env_remove("SSH_CONNECTION");
        output_with_timeout(&mut command, COMMAND_TIMEOUT).unwrap_or_else(|error| {
            panic!(
                "allowlistctl {args:?} as uid {uid}: {error:#}\nlog:\n{}",
                self.log()
            )
        })
    }

    /// Lets every user traverse (not list) the per-daemon temp dir, so that the socket's
    /// own owner and mode alone decide who may connect, as they do in /run/allowlist.
    pub fn open_socket_dir(&self) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(self.files.dir(), fs::Permissions::from_mode(0o711))
            .expect("chmod the daemon's temp dir");
    }

    /// `allowlistctl --socket SOCKET ARGS...`, whatever its exit status. The control
    /// socket is a path, reachable from any network namespace.
    pub fn ctl(&self, args: &[&str]) -> Output {
        output_with_timeout(&mut self.ctl_command(args), COMMAND_TIMEOUT).unwrap_or_else(|error| {
            panic!("allowlistctl {args:?}: {error:#}\nlog:\n{}", self.log())
        })
    }

    /// As [`Daemon::ctl`], but panics (showing stderr and the daemon log) unless it exits 0.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let output = self.ctl(args);
        assert!(
            output.status.success(),
            "allowlistctl {args:?} failed with {}: {}{}\ndaemon log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `allowlistctl ARGS... --json`, parsed.
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let stdout = self.ctl_ok(&args);
        serde_json::from_str(&stdout).unwrap_or_else(|error| {
            panic!("allowlistctl {args:?} printed no JSON ({error}): {stdout}")
        })
    }

    /// `allowlistctl check ARGS...`: its text, after checking that the exit code tells the
    /// verdict (0 pass, 4 drop), as scripts read it.
    pub fn check(&self, args: &[&str]) -> String {
        let mut all = vec!["check"];
        all.extend_from_slice(args);
        let output = self.ctl(&all);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let expected = if stdout.contains(": DROP") { 4 } else { 0 };
        assert_eq!(
            output.status.code(),
            Some(expected),
            "allowlistctl {all:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// `allowlistctl check ARGS... --json`, parsed, after checking the exit code against
    /// the verdict (0 pass, 4 drop).
    pub fn check_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["check"];
        all.extend_from_slice(args);
        all.push("--json");
        let output = self.ctl(&all);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|error| {
            panic!(
                "allowlistctl {all:?} printed no JSON ({error}): {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        let expected = if json["verdict"] == "drop" { 4 } else { 0 };
        assert_eq!(
            output.status.code(),
            Some(expected),
            "allowlistctl {all:?}: {json}"
        );
        json
    }

    /// `allowlistctl list --json`, entry by entry.
    pub fn list(&self) -> Vec<ListedEntry> {
        let json = self.ctl_json(&["list"]);
        json.as_array()
            .unwrap_or_else(|| panic!("`list --json` is not an array: {json}"))
            .iter()
            .map(|entry| ListedEntry::from_json(entry).unwrap_or_else(|error| panic!("{error:#}")))
            .collect()
    }

    /// The entries `list` shows for exactly `network` (as the daemon prints it, e.g.
    /// `10.0.0.1/32`): none, one, or one per origin.
    pub fn listed(&self, network: &str) -> Vec<ListedEntry> {
        self.list()
            .into_iter()
            .filter(|entry| entry.network == network)
            .collect()
    }

    pub fn status(&self) -> Value {
        self.ctl_json(&["status"])
    }

    pub fn stats(&self) -> Stats {
        let json = self.ctl_json(&["stats"]);
        Stats::from_json(&json).unwrap_or_else(|error| panic!("{error:#}"))
    }

    /// Replaces the config file (the daemon reads it on `reload`).
    pub fn write_config(&self, config: &ConfigBuilder) {
        self.files
            .write_config(&config.render(&self.files))
            .expect("writing config");
    }

    /// `allowlistctl reload`, which returns once the kernel judges by the new config.
    pub fn reload(&self) {
        self.ctl_ok(&["reload"]);
    }

    /// Writes `config` and reloads it.
    pub fn apply(&self, config: &ConfigBuilder) {
        self.write_config(config);
        self.reload();
    }

    /// Kills the daemon with SIGKILL, leaving whatever it had in the kernel behind.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the daemon to exit on its own (a start it refuses, say); returns its
    /// exit status, or fails if it still runs after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().context("daemon is not running")?;
        match wait_with_deadline(&mut child, timeout)? {
            Some(status) => Ok(status),
            None => {
                self.child = Some(child);
                bail!(
                    "allowlistd still runs after {timeout:?}; log:\n{}",
                    self.log()
                );
            }
        }
    }

    /// Sends SIGTERM and waits for the daemon to exit; returns its exit status.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("daemon is not running")?;
        // SAFETY: signalling a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        match wait_with_deadline(&mut child, Duration::from_secs(10))? {
            Some(status) => Ok(status),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("allowlistd ignored SIGTERM for 10 s");
            }
        }
    }

    /// Starts a new daemon with the same files (config, socket, pins, state) after the
    /// previous one was killed or terminated.
    pub fn restart(&mut self) -> Result<()> {
        assert!(
            self.child.is_none(),
            "restart() needs the previous daemon stopped first"
        );
        self.spawn_and_wait_ready()
    }

    /// Runs `binaries` from now on, with the same files (config, socket, pins, state): an
    /// upgrade or a downgrade. The previous daemon must be stopped first.
    pub fn switch_binaries(&mut self, binaries: Binaries) {
        assert!(
            self.child.is_none(),
            "switch_binaries() needs the previous daemon stopped first"
        );
        self.binaries = binaries;
    }

    /// Starts the daemon and waits for it to exit without getting ready (a refusal, or a
    /// crash point); returns its exit status.
    pub fn start_until_exit(&mut self) -> Result<ExitStatus> {
        assert!(
            self.child.is_none(),
            "start_until_exit() needs the previous daemon stopped first"
        );
        self.spawn()?;
        self.wait_exit(ready_timeout())
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// `allowlistd --config CONFIG uninstall` in the host namespace.
    pub fn uninstall(&self) -> Result<Output> {
        self.files
            .run_daemon_to_exit(self.host, &self.binaries, &["uninstall"], COMMAND_TIMEOUT)
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        self.kill9();
        // By pin path: the test may have broken the config, and the daemon would then
        // fall back to the default pin path, which is not this test's.
        let pin_path = self.files.pin_path.display().to_string();
        let uninstall = self.files.run_daemon_to_exit(
            self.host,
            &self.binaries,
            &["uninstall", "--pin-path", &pin_path],
            COMMAND_TIMEOUT,
        );
        match uninstall {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "warning: allowlistd uninstall failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) => eprintln!("warning: allowlistd uninstall: {error:#}"),
        }
        if self.files.pin_path.exists() {
            if let Err(error) = fs::remove_dir_all(&self.files.pin_path) {
                eprintln!(
                    "warning: removing {}: {error}",
                    self.files.pin_path.display()
                );
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "----- allowlistd log ({}) -----\n{}\n----- end of allowlistd log -----",
                self.files.log.display(),
                self.log()
            );
        }
    }
}
