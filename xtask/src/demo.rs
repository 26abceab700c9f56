//! `cargo xtask demo`: the filter at work, narrated for a newcomer.
//!
//! Everything happens in three network namespaces that the demo creates and deletes: a
//! protected host and two clients, each joined to the host by a veth pair. The host's real
//! interfaces are never touched.
//!
//! ```text
//!   aldemo-allowed-PID            aldemo-host-PID             aldemo-blocked-PID
//!   eth0 10.77.1.2  ---- veth ---- to-allowed 10.77.1.1
//!        fd77:1::2                 fd77:1::1
//!                                  to-blocked 10.77.2.1 ---- veth ---- eth0 10.77.2.2
//!                                             fd77:2::1                     fd77:2::2
//! ```

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{process, setup, sys, workspace};

const SERVICE_PORT: u16 = 8080;
const GREETING: &str = "hello from the protected host";
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a client waits for an answer: long enough for a veth, short enough for a demo.
const CLIENT_TIMEOUT_SECS: u32 = 3;

pub fn demo() -> Result<()> {
    sys::require_root(
        "cargo xtask demo",
        "it creates network namespaces and attaches an XDP program inside them",
    )?;
    heading("Preparing: tools and a debug build of allowlistd and allowlistctl");
    setup::setup()?;
    workspace::build_userspace(false)?;

    sys::catch_interrupts();
    let mut lab = Lab::new(std::process::id(), workspace::bin_dir(false))?;
    let story = tell_story(&mut lab);
    // Clean up before the verdict so the last thing on screen is the result.
    drop(lab);
    story?;
    println!("\nDemo finished: the allowed client got through, the blocked one did not.");
    Ok(())
}

fn tell_story(lab: &mut Lab) -> Result<()> {
    heading("Step 1/7: a protected host and two clients, in network namespaces");
    lab.build_network()?;

    heading("Step 2/7: the configuration of allowlistd");
    let config = lab.write_config()?;
    println!("Written to {}:\n", lab.config_path().display());
    print_indented(&config);

    heading("Step 3/7: start allowlistd on the protected host");
    let status = lab.start_daemon()?;
    println!("\n$ allowlistctl status");
    print_indented(&status);

    heading("Step 4/7: a TCP service on the protected host");
    lab.start_service()?;

    let mut checks = Vec::new();
    heading("Step 5/7: the allowed client (10.77.1.2, fd77:1::2) talks to the host");
    println!("Its addresses are on the allowlist: every packet should get through.");
    checks.extend(lab.probe_all(&lab.allowed(), true)?);

    heading("Step 6/7: the blocked client (10.77.2.2, fd77:2::2) tries the same");
    println!(
        "Its addresses are not on the list: the XDP program drops its packets as they \
         arrive, before the host's network stack sees them, so it gets no answer at all \
         (a timeout, not a refusal). ARP and IPv6 neighbour discovery still pass, so this \
         is the filter at work, not a broken network."
    );
    checks.extend(lab.probe_all(&lab.blocked(), false)?);

    heading("Step 7/7: what the filter counted");
    println!("$ allowlistctl stats");
    print_indented(&lab.stats()?);

    let unexpected = checks.iter().filter(|check| !check.as_expected()).count();
    ensure!(
        unexpected == 0,
        "{unexpected} of {} checks did not behave as expected (marked UNEXPECTED above)",
        checks.len()
    );
    Ok(())
}

fn heading(text: &str) {
    println!("\n==> {text}");
}

fn print_indented(text: &str) {
    for line in text.trim_end().lines() {
        println!("    {line}");
    }
}

fn stop_if_interrupted() -> Result<()> {
    if sys::interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// A client namespace and the host addresses it talks to.
struct Client {
    label: &'static str,
    netns: String,
    host_v4: &'static str,
    host_v6: &'static str,
}

struct Check {
    expect_success: bool,
    succeeded: bool,
}

impl Check {
    fn as_expected(&self) -> bool {
        self.expect_success == self.succeeded
    }
}

/// The namespaces, processes and files of one demo run. Dropping it removes all of them,
/// also after an error or Ctrl-C.
struct Lab {
    bin_dir: PathBuf,
    work_dir: PathBuf,
    pin_path: PathBuf,
    host: String,
    allowed: String,
    blocked: String,
    namespaces: Vec<String>,
    daemon: Option<Child>,
    daemon_started: bool,
    service: Option<Child>,
}

impl Lab {
    fn new(pid: u32, bin_dir: PathBuf) -> Result<Self> {
        let work_dir = std::env::temp_dir().join(format!("aldemo-{pid}"));
        // A leftover of an earlier run that had our pid and was killed.
        if work_dir.exists() {
            fs::remove_dir_all(&work_dir)
                .with_context(|| format!("removing {}", work_dir.display()))?;
        }
        fs::create_dir_all(work_dir.join("state"))
            .with_context(|| format!("creating {}", work_dir.display()))?;
        Ok(Self {
            bin_dir,
            work_dir,
            pin_path: PathBuf::from(format!("/sys/fs/bpf/aldemo-{pid}")),
            host: format!("aldemo-host-{pid}"),
            allowed: format!("aldemo-allowed-{pid}"),
            blocked: format!("aldemo-blocked-{pid}"),
            namespaces: Vec::new(),
            daemon: None,
            daemon_started: false,
            service: None,
        })
    }

    fn config_path(&self) -> PathBuf {
        self.work_dir.join("allowlist.toml")
    }

    fn socket_path(&self) -> PathBuf {
        self.work_dir.join("control.sock")
    }

    fn daemon_log_path(&self) -> PathBuf {
        self.work_dir.join("allowlistd.log")
    }

    fn allowed(&self) -> Client {
        Client {
            label: "allowed",
            netns: self.allowed.clone(),
            host_v4: "10.77.1.1",
            host_v6: "fd77:1::1",
        }
    }

    fn blocked(&self) -> Client {
        Client {
            label: "blocked",
            netns: self.blocked.clone(),
            host_v4: "10.77.2.1",
            host_v6: "fd77:2::1",
        }
    }

    fn build_network(&mut self) -> Result<()> {
        for netns in [
            self.host.clone(),
            self.allowed.clone(),
            self.blocked.clone(),
        ] {
            process::run(Command::new("ip").args(["netns", "add", &netns]))?;
            self.namespaces.push(netns.clone());
            ip(&netns, &["link", "set", "lo", "up"])?;
        }
        let host = self.host.clone();
        let links = [
            (&self.allowed, "to-allowed", "10.77.1", "fd77:1::"),
            (&self.blocked, "to-blocked", "10.77.2", "fd77:2::"),
        ];
        for (client, host_side, v4_net, v6_net) in links {
            // Both ends are created inside their namespaces, never in the host's own.
            ip(
                &host,
                &[
                    "link", "add", host_side, "type", "veth", "peer", "name", "eth0", "netns",
                    client,
                ],
            )?;
            configure_end(
                &host,
                host_side,
                &format!("{v4_net}.1"),
                &format!("{v6_net}1"),
            )?;
            configure_end(
                client,
                "eth0",
                &format!("{v4_net}.2"),
                &format!("{v6_net}2"),
            )?;
        }
        println!(
            "\nThe host {} has two veth interfaces, to-allowed and to-blocked; allowlistd \
             will filter what arrives on both.",
            self.host
        );
        Ok(())
    }

    fn write_config(&self) -> Result<String> {
        let config = format!(
            r#"# Written by `cargo xtask demo`.
interfaces = ["to-allowed", "to-blocked"]
mode = "enforce"
xdp_mode = "auto"
socket = "{socket}"
pin_path = "{pin_path}"
state_dir = "{state_dir}"

[[allow]]
cidr = "10.77.1.2/32"
description = "demo: allowed client"

[[allow]]
cidr = "fd77:1::2/128"
description = "demo: allowed client (IPv6)"
"#,
            socket = self.socket_path().display(),
            pin_path = self.pin_path.display(),
            state_dir = self.work_dir.join("state").display(),
        );
        let path = self.config_path();
        fs::write(&path, &config).with_context(|| format!("writing {}", path.display()))?;
        Ok(config)
    }

    /// Starts the daemon in the host namespace and returns `allowlistctl status` once it
    /// answers.
    fn start_daemon(&mut self) -> Result<String> {
        let log_path = self.daemon_log_path();
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        // nsenter switches only the network namespace. `ip netns exec` would also give
        // the daemon a private /sys, where its pins would vanish with it.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.host))
            .arg(self.bin_dir.join("allowlistd"))
            .arg("--config")
            .arg(self.config_path())
            // The log goes to a file, where colour codes would only be noise.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        println!("$ {}", process::describe(&cmd));
        let daemon = cmd
            .spawn()
            .with_context(|| format!("could not start `{}`", process::describe(&cmd)))?;
        self.daemon = Some(daemon);
        self.daemon_started = true;
        let status = self.wait_until_daemon_answers()?;
        println!(
            "\nallowlistd is ready: the XDP program is attached to both host interfaces. \
             Its log ({}):",
            log_path.display()
        );
        print_indented(&self.daemon_log());
        Ok(status)
    }

    fn wait_until_daemon_answers(&mut self) -> Result<String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            stop_if_interrupted()?;
            if let Some(exit) = self
                .daemon
                .as_mut()
                .and_then(|d| d.try_wait().ok().flatten())
            {
                bail!(
                    "allowlistd exited ({exit}) before it was ready. Its log:\n{}",
                    self.daemon_log()
                );
            }
            if let Ok(status) = process::capture(&mut self.allowlistctl(&["status"])) {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "allowlistctl status got no answer within {}s. allowlistd's log:\n{}",
                    READY_TIMEOUT.as_secs(),
                    self.daemon_log()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn daemon_log(&self) -> String {
        fs::read_to_string(self.daemon_log_path())
            .unwrap_or_else(|error| format!("(no log: {error})"))
    }

    fn allowlistctl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("allowlistctl"));
        cmd.arg("--socket").arg(self.socket_path()).args(args);
        cmd
    }

    fn stats(&self) -> Result<String> {
        process::capture(&mut self.allowlistctl(&["stats"]))
    }

    fn start_service(&mut self) -> Result<()> {
        // One dual-stack socket serves IPv4 and IPv6 clients.
        let listen = format!("TCP6-LISTEN:{SERVICE_PORT},ipv6only=0,fork,reuseaddr");
        let reply = format!("SYSTEM:echo {GREETING}");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host, "socat", &listen, &reply])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        println!("$ {}", process::describe(&cmd));
        let service = cmd
            .spawn()
            .with_context(|| format!("could not start `{}`", process::describe(&cmd)))?;
        self.service = Some(service);
        self.wait_until_service_listens()?;
        println!("Port {SERVICE_PORT} answers every connection with \"{GREETING}\".");
        Ok(())
    }

    fn wait_until_service_listens(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let port_filter = format!("sport = :{SERVICE_PORT}");
        loop {
            stop_if_interrupted()?;
            if let Some(exit) = self
                .service
                .as_mut()
                .and_then(|s| s.try_wait().ok().flatten())
            {
                bail!("socat exited ({exit}) instead of listening on port {SERVICE_PORT}");
            }
            let listening = process::capture(Command::new("ip").args([
                "netns",
                "exec",
                &self.host,
                "ss",
                "-Hltn",
                &port_filter,
            ]));
            if listening.is_ok_and(|sockets| !sockets.trim().is_empty()) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "socat did not listen on port {SERVICE_PORT} within 5s"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// TCP and ping, over IPv4 and IPv6, from the client to its side of the host.
    fn probe_all(&self, client: &Client, expect_success: bool) -> Result<Vec<Check>> {
        let v4_service = format!("TCP4:{}:{SERVICE_PORT}", client.host_v4);
        let v6_service = format!("TCP6:[{}]:{SERVICE_PORT}", client.host_v6);
        let mut checks = Vec::new();
        for (what, probe) in [
            (
                format!("TCP to {}:{SERVICE_PORT}", client.host_v4),
                Probe::Tcp(&v4_service),
            ),
            (
                format!("TCP to [{}]:{SERVICE_PORT}", client.host_v6),
                Probe::Tcp(&v6_service),
            ),
            (
                format!("ping {}", client.host_v4),
                Probe::Ping(client.host_v4),
            ),
            (
                format!("ping {}", client.host_v6),
                Probe::Ping(client.host_v6),
            ),
        ] {
            stop_if_interrupted()?;
            let (succeeded, detail) = probe.run(&client.netns)?;
            // Ctrl-C also stops the probe, whose result then says nothing about the filter.
            stop_if_interrupted()?;
            let check = Check {
                expect_success,
                succeeded,
            };
            let verdict = if check.as_expected() {
                "as expected"
            } else {
                "UNEXPECTED"
            };
            println!(
                "  {} client, {what:<28} {detail}  [{verdict}]",
                client.label
            );
            checks.push(check);
        }
        Ok(checks)
    }
}

enum Probe<'a> {
    /// A socat address such as `TCP4:10.77.1.1:8080`.
    Tcp(&'a str),
    Ping(&'a str),
}

impl Probe<'_> {
    /// Runs the probe in the client's namespace; returns whether it got an answer and what
    /// to show.
    fn run(&self, netns: &str) -> Result<(bool, String)> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]);
        match self {
            Probe::Tcp(address) => {
                let timeout = CLIENT_TIMEOUT_SECS.to_string();
                // `timeout` is a backstop in case socat's own timeouts do not fire.
                cmd.args(["timeout", &(CLIENT_TIMEOUT_SECS + 3).to_string()])
                    .args(["socat", "-T", &timeout, "-"])
                    .arg(format!("{address},connect-timeout={timeout}"));
            }
            Probe::Ping(address) => {
                cmd.args(["ping", "-c", "3", "-W", "1", address]);
            }
        }
        let started = Instant::now();
        let output = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("could not start `{}`", process::describe(&cmd)))?;
        let took = started.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let succeeded = output.status.success();
        let detail = match self {
            Probe::Tcp(_) if succeeded => format!("connected, got \"{}\"", stdout.trim()),
            Probe::Tcp(_) => format!("no connection, gave up after {took:.1}s"),
            Probe::Ping(_) => stdout
                .lines()
                .find(|line| line.contains("packets transmitted"))
                .unwrap_or("no ping summary")
                .to_string(),
        };
        Ok((succeeded, detail))
    }
}

fn ip(netns: &str, args: &[&str]) -> Result<()> {
    process::capture(Command::new("ip").args(["-n", netns]).args(args)).map(drop)
}

fn configure_end(netns: &str, device: &str, v4: &str, v6: &str) -> Result<()> {
    ip(netns, &["addr", "add", &format!("{v4}/24"), "dev", device])?;
    // nodad: the address is usable at once instead of after duplicate address detection.
    ip(
        netns,
        &["addr", "add", &format!("{v6}/64"), "dev", device, "nodad"],
    )?;
    ip(netns, &["link", "set", device, "up"])?;
    println!("  {netns}: {device} {v4}/24 {v6}/64");
    Ok(())
}

impl Drop for Lab {
    fn drop(&mut self) {
        heading("Cleaning up (this always runs, also after an error or Ctrl-C)");
        if let Some(mut service) = self.service.take() {
            sys::terminate(&mut service, Duration::from_secs(2));
            println!("  stopped the TCP service");
        }
        if let Some(mut daemon) = self.daemon.take() {
            // allowlistd leaves the filter attached when it exits (fail closed); the
            // uninstall below detaches it.
            sys::terminate(&mut daemon, Duration::from_secs(5));
            println!("  stopped allowlistd");
        }
        if self.daemon_started {
            self.uninstall_filter();
        }
        for netns in self.namespaces.drain(..).rev() {
            match process::capture(Command::new("ip").args(["netns", "del", &netns])) {
                Ok(_) => println!("  deleted network namespace {netns}"),
                Err(error) => eprintln!("  warning: {error:#}"),
            }
        }
        for dir in [self.pin_path.clone(), self.work_dir.clone()] {
            remove_dir_if_present(&dir);
        }
    }
}

impl Lab {
    fn uninstall_filter(&self) {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.host))
            .arg(self.bin_dir.join("allowlistd"))
            .arg("--config")
            .arg(self.config_path())
            .arg("uninstall")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        println!("  $ {}", process::describe(&cmd));
        match cmd.output() {
            Ok(output) => {
                let said = String::from_utf8_lossy(&output.stdout).into_owned()
                    + &String::from_utf8_lossy(&output.stderr);
                for line in said.trim_end().lines() {
                    println!("      {line}");
                }
                // Deleting the namespaces below removes the interfaces and their XDP
                // programs anyway, so a failure here is only worth a warning.
                if !output.status.success() {
                    eprintln!("  warning: allowlistd uninstall failed ({})", output.status);
                }
            }
            Err(error) => eprintln!("  warning: could not start allowlistd uninstall: {error}"),
        }
    }
}

fn remove_dir_if_present(dir: &Path) {
    match fs::remove_dir_all(dir) {
        Ok(()) => println!("  removed {}", dir.display()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => eprintln!("  warning: removing {}: {error}", dir.display()),
    }
}
