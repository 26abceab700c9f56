//! Named network namespaces that delete themselves, and running code inside them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use anyhow::{Context, Result};

use crate::process::run_checked;

static NEXT_NETNS: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace (`ip netns add`), deleted again on drop, also when the
/// test that made it panics. Its name is unique per process and per namespace, so
/// tests running in parallel, and test binaries running one after another, never share one.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `alt<pid>n<counter><role>`; `role` only helps a human
    /// reading `ip netns list` while a test hangs.
    pub fn new(role: &str) -> Result<Self> {
        let name = format!(
            "alt{}n{}{}",
            std::process::id(),
            NEXT_NETNS.fetch_add(1, Ordering::Relaxed),
            role
        );
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Self { name };
        // Loopback is down in a fresh namespace; local servers and pings need it.
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, what `setns` and `nsenter --net` take.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS...`, failing unless it exits 0; returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run_checked(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `ip netns exec NAME ARGS...` as a command to adjust and run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).args(args);
        command
    }

    /// Runs `ARGS...` inside the namespace, failing unless it exits 0; returns stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        run_checked(&mut self.command(args))
    }

    /// Sets a sysctl of this namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run(&["sysctl", "-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Turns IPv6 off on every interface of the namespace, present and future. IPv6
    /// autoconfiguration (router solicitations, MLD reports, DAD) sends packets on its
    /// own schedule, which would make exact counter checks flaky.
    pub fn disable_ipv6(&self) -> Result<()> {
        self.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        self.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
    }

    /// Turns IPv6 off on one interface only.
    pub fn disable_ipv6_on(&self, dev: &str) -> Result<()> {
        self.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "1")
    }

    /// The MAC address of `dev`.
    pub fn mac(&self, dev: &str) -> Result<String> {
        let json = self.ip(&["-j", "link", "show", "dev", dev])?;
        let links: serde_json::Value = serde_json::from_str(&json)?;
        links[0]["address"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no address for {dev} in {json}"))
    }

    /// Whether an XDP program is attached to `dev` in any mode, as `ip -d link show`
    /// reports it (which covers netlink and bpf_link attachments alike).
    pub fn xdp_attached(&self, dev: &str) -> Result<bool> {
        let details = self.ip(&["-j", "-d", "link", "show", "dev", dev])?;
        let links: serde_json::Value = serde_json::from_str(&details)
            .with_context(|| format!("parsing `ip -j -d link show dev {dev}`: {details}"))?;
        Ok(links
            .as_array()
            .into_iter()
            .flatten()
            .any(|link| link.get("xdp").is_some_and(|xdp| !xdp.is_null())))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also destroys the veths inside it (and their peers).
        if let Err(error) = run_checked(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!(
                "warning: could not delete network namespace {}: {error:#}",
                self.name
            );
        }
    }
}

/// Runs `work` on a new thread that has first joined `netns`; returns what it returns.
/// Sockets created inside `work` belong to that namespace for their whole life, so a
/// listener made here can be handed back and served from any thread.
/// A panic inside `work` is re-raised in the caller.
pub fn in_netns<T, F>(netns: &Netns, work: F) -> T
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let path = netns.path();
    thread::scope(|scope| {
        let worker = scope.spawn(move || {
            enter_netns(&path).unwrap_or_else(|error| panic!("{error:#}"));
            work()
        });
        match worker.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Moves the calling thread (only it: the network namespace is per thread) into the
/// namespace at `path`.
pub fn enter_netns(path: &std::path::Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: a plain syscall on a file descriptor we own for its whole duration.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns({}, CLONE_NEWNET)", path.display()));
    }
    Ok(())
}
