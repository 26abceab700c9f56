//! A systemd of the test's own, for running a unit as systemd runs it on a server, on
//! machines whose PID 1 is not systemd: `/lib/systemd/systemd` as PID 1 of private PID,
//! mount, UTS, IPC and cgroup namespaces, in a given network namespace, booting only a
//! target that wants the units the test names. It sees the host's file system (so the
//! installed package's units), the host's bpffs, a fresh sysfs for its network
//! namespace, and a /run of its own. Dropping it kills every process in it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::netns::Netns;
use crate::process::{output_with_timeout, wait_until, COMMAND_TIMEOUT};

static NEXT_SYSTEMD: AtomicUsize = AtomicUsize::new(0);

/// How long systemd may take to come up.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

pub struct Systemd {
    /// `unshare --kill-child`, whose child is the namespace's PID 1.
    unshare: Child,
    /// systemd's PID as the host sees it.
    pid: u32,
    /// Its cgroup (a subtree of the host's cgroup2 hierarchy), removed on drop.
    cgroup: PathBuf,
    dir: TempDir,
}

impl Systemd {
    /// Boots systemd in `netns`, wanting `units`; each unit's standard output and
    /// error go to a file of this directory ([`Systemd::log`]) rather than to a journal.
    pub fn boot(netns: &Netns, units: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("allowlist-test-systemd-")
            .tempdir()?;
        let setup = dir.path().join("run");
        let units_dir = setup.join("systemd/system");
        fs::create_dir_all(&units_dir)?;
        fs::write(
            units_dir.join("allowlist-test.target"),
            format!(
                "[Unit]\nDescription=the units of a test\nWants={}\n",
                units.join(" ")
            ),
        )?;
        for unit in units {
            let drop_in = units_dir.join(format!("{unit}.d"));
            fs::create_dir_all(&drop_in)?;
            fs::write(
                drop_in.join("test-log.conf"),
                format!(
                    "[Service]\nStandardOutput=append:{}\nStandardError=inherit\n",
                    dir.path().join(format!("{unit}.log")).display()
                ),
            )?;
        }
        let cgroup = cgroup2_root()?.join(format!(
            "allowlist-test-{}-{}",
            std::process::id(),
            NEXT_SYSTEMD.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
        let carrier = dir.path().join("bpffs");
        fs::create_dir(&carrier)?;
        // Into its cgroup first, so that the cgroup namespace makes that systemd's root;
        // /sys anew for the network namespace's devices, with the host's bpffs carried
        // over; /run its own, holding the test's target and drop-ins.
        let script = "echo $$ > \"$1/cgroup.procs\" && exec nsenter --net=\"$2\" \
             unshare --pid --fork --kill-child --mount --propagation private --uts --ipc --cgroup \
             sh -c 'mount --bind /sys/fs/bpf \"$1\" && umount -l /sys && \
             mount -t sysfs sysfs /sys && mount --move \"$1\" /sys/fs/bpf && \
             mount -t proc proc /proc && mount -t tmpfs tmpfs /run && cp -r \"$2\"/. /run/ && \
             exec env container=allowlist-test /lib/systemd/systemd --system \
             --unit=allowlist-test.target' sh \"$3\" \"$4\"";
        let unshare = Command::new("sh")
            .args(["-c", script, "sh"])
            .arg(&cgroup)
            .arg(netns.path())
            .arg(&carrier)
            .arg(&setup)
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.path().join("systemd.log"))?)
            .stderr(fs::File::create(dir.path().join("systemd.err"))?)
            .spawn()
            .context("starting systemd")?;
        let mut systemd = Self {
            unshare,
            pid: 0,
            cgroup,
            dir,
        };
        systemd.pid = systemd.find_pid_1()?;
        let booted = wait_until(BOOT_TIMEOUT, || {
            systemd
                .systemctl(&["is-system-running"])
                .map(|output| {
                    let state = String::from_utf8_lossy(&output.stdout);
                    matches!(state.trim(), "running" | "degraded")
                })
                .unwrap_or(false)
        });
        if !booted {
            bail!(
                "systemd did not come up within {BOOT_TIMEOUT:?}: {:?}\n{}",
                systemd.systemctl(&["is-system-running"]),
                fs::read_to_string(systemd.dir.path().join("systemd.err")).unwrap_or_default()
            );
        }
        Ok(systemd)
    }

    /// systemd's PID: the one process of its cgroup whose command is systemd.
    fn find_pid_1(&mut self) -> Result<u32> {
        let mut found = None;
        let started = wait_until(BOOT_TIMEOUT, || {
            found = processes_below(&self.cgroup).into_iter().find(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "systemd")
            });
            found.is_some()
        });
        match found {
            Some(pid) if started => Ok(pid),
            _ => bail!(
                "systemd did not start: {}",
                fs::read_to_string(self.dir.path().join("systemd.err")).unwrap_or_default()
            ),
        }
    }

    /// A command run inside systemd's namespaces (its /run, its PIDs, its network).
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--target={}", self.pid))
            .args(["--mount", "--pid", "--net", "--uts", "--ipc", "--cgroup"])
            .arg(program)
            .args(args);
        command
    }

    /// `systemctl ARGS...` of this systemd, whatever its exit status.
    pub fn systemctl(&self, args: &[&str]) -> Result<Output> {
        output_with_timeout(&mut self.command("systemctl", args), COMMAND_TIMEOUT)
    }

    /// A property of a unit (`systemctl show -p NAME --value UNIT`).
    pub fn property(&self, unit: &str, name: &str) -> Result<String> {
        let output = self.systemctl(&["show", "-p", name, "--value", unit])?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// What `unit` wrote to standard output and error.
    pub fn log(&self, unit: &str) -> String {
        fs::read_to_string(self.dir.path().join(format!("{unit}.log"))).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        // The namespace's PID 1 takes every process of the PID namespace with it; killed
        // from here (an ancestor namespace), it cannot ignore SIGKILL. `--kill-child`
        // makes sure of it should this process die first.
        if self.pid != 0 {
            // SAFETY: a plain syscall; the PID is systemd's, which unshare has not reaped.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        let emptied = wait_until(Duration::from_secs(10), || {
            processes_below(&self.cgroup).is_empty()
        });
        if !emptied {
            eprintln!(
                "warning: processes left in {}: {:?}",
                self.cgroup.display(),
                processes_below(&self.cgroup)
            );
        }
        if let Err(error) = remove_cgroup(&self.cgroup) {
            eprintln!("warning: removing {}: {error}", self.cgroup.display());
        }
    }
}

/// Where the host mounts cgroup2: /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified
/// on a hybrid one.
fn cgroup2_root() -> Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (mount, filesystem) = line.split_once(" - ")?;
            let fields: Vec<&str> = mount.split(' ').collect();
            (filesystem.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(fields[4]))
        })
        .context("no cgroup2 hierarchy is mounted; systemd needs one")
}

/// Every process in `cgroup` and the cgroups below it.
fn processes_below(cgroup: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|pid| pid.parse().ok())
        .collect();
    if let Ok(entries) = fs::read_dir(cgroup) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                pids.extend(processes_below(&entry.path()));
            }
        }
    }
    pids
}

/// Removes `cgroup` and the cgroups systemd made below it, deepest first.
fn remove_cgroup(cgroup: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(cgroup)?.flatten() {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            remove_cgroup(&entry.path())?;
        }
    }
    fs::remove_dir(cgroup)
}
