//! The filter at work, narrated for a newcomer: `cargo xtask demo` builds the daemon and
//! this example and runs it as root.
//!
//! ```text
//! cargo build -p allowlist-userspace && cargo build -p allowlist-tests --example demo
//! ALLOWLIST_BIN_DIR=target/debug target/debug/examples/demo     # as root
//! ```
//!
//! It runs on the network every end-to-end test runs on (`tests/src/topology.rs`): a
//! protected host and two clients, each in a network namespace of its own and joined to
//! the host by a veth pair, so the machine's real interfaces are never touched. The daemon,
//! its config and the traffic are the tests' too. Everything it creates is removed on the
//! way out, also after an error or Ctrl-C.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use allowlist_tests::{
    interrupt, ping, tcp_connects, ConfigBuilder, Daemon, DaemonFiles, Link, Netns, TcpServer,
    Topology, ALLOWED_LINK, BLOCKED_LINK,
};
use anyhow::{ensure, Result};

const SERVICE_PORT: u16 = 8080;
/// How long a client waits for the service: long enough for a veth, short enough for a
/// demo (a dropped SYN shows up as this timeout).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
const PINGS: u32 = 3;

fn main() -> ExitCode {
    // Ctrl-C then ends the story at its next step, and the cleanup below still runs.
    interrupt::catch();
    // The daemon (which inherits this) logs to a file that the demo prints: colour codes
    // would only be noise there. Set before any thread starts.
    std::env::set_var("NO_COLOR", "1");
    match run() {
        Ok(()) => {
            println!("\nDemo finished: the allowed client got through, the blocked one did not.");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("\ndemo: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    heading("Step 1/7: a protected host and two clients, in network namespaces");
    let topology = Topology::new()?;
    describe(&topology);

    // What the story starts is kept out here, so that it is stopped in order and said
    // so, however the story ends.
    let mut daemon = None;
    let mut service = None;
    let story = tell_story(&topology, &mut daemon, &mut service);

    heading("Cleaning up (this always runs, also after an error or Ctrl-C)");
    if let Some(service) = service {
        drop(service);
        println!("  stopped the TCP service");
    }
    if let Some(mut running) = daemon.take() {
        stop(&mut running);
    }
    // (Moved out, so that nothing borrows the topology any more.)
    drop(daemon);
    let names = [topology.host(), topology.allowed(), topology.blocked()].map(Netns::name);
    let names = names.join(", ");
    drop(topology);
    println!("  deleted the network namespaces {names}, and with them the veths");
    story
}

fn tell_story<'t>(
    topology: &'t Topology,
    daemon: &mut Option<Daemon<'t>>,
    service: &mut Option<TcpServer>,
) -> Result<()> {
    heading("Step 2/7: the configuration of allowlistd");
    let config = ConfigBuilder::allowed_client(topology);
    let files = DaemonFiles::new()?;
    println!("Written to {}:\n", files.config.display());
    print_indented(&config.render(&files));

    heading("Step 3/7: start allowlistd on the protected host");
    interrupt::check()?;
    let running = daemon.insert(Daemon::start_with(topology.host(), &config, files, None)?);
    println!(
        "allowlistd is ready: the XDP program is attached to both host interfaces. Its log \
         ({}):",
        running.files().log.display()
    );
    // Less the harness's own marker lines.
    let log = running.log();
    let log: Vec<&str> = log
        .lines()
        .filter(|line| !line.starts_with("===== harness"))
        .collect();
    print_indented(&log.join("\n"));
    println!("\n$ allowlistctl status");
    print_indented(&running.ctl_ok(&["status"]));

    heading("Step 4/7: a TCP service on the protected host");
    let listen = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), SERVICE_PORT);
    service.replace(TcpServer::start(topology.host(), listen)?);
    println!(
        "Port {SERVICE_PORT}, over IPv4 and IPv6, greets every connection and echoes what \
         it reads."
    );

    // Whether each probe went as expected.
    let mut checks = Vec::new();
    heading(&format!(
        "Step 5/7: the allowed client ({}, {}) talks to the host",
        ALLOWED_LINK.client_v4, ALLOWED_LINK.client_v6
    ));
    println!("Its addresses are on the allowlist: every packet should get through.");
    probe_all(
        "allowed",
        topology.allowed(),
        &ALLOWED_LINK,
        true,
        &mut checks,
    )?;

    heading(&format!(
        "Step 6/7: the blocked client ({}, {}) tries the same",
        BLOCKED_LINK.client_v4, BLOCKED_LINK.client_v6
    ));
    println!(
        "Its addresses are not on the list: the XDP program drops its packets as they \
         arrive, before the host's network stack sees them, so it gets no answer at all \
         (a timeout, not a refusal). ARP and IPv6 neighbour discovery still pass, so this \
         is the filter at work, not a broken network."
    );
    probe_all(
        "blocked",
        topology.blocked(),
        &BLOCKED_LINK,
        false,
        &mut checks,
    )?;

    heading("Step 7/7: what the filter counted");
    println!("$ allowlistctl stats");
    print_indented(
        &daemon
            .as_ref()
            .expect("started in step 3")
            .ctl_ok(&["stats"]),
    );

    let unexpected = checks.iter().filter(|as_expected| !**as_expected).count();
    ensure!(
        unexpected == 0,
        "{unexpected} of {} checks did not behave as expected (marked UNEXPECTED above)",
        checks.len()
    );
    Ok(())
}

/// TCP and ping, over IPv4 and IPv6, from a client to its side of the host; notes in
/// `checks` whether each did what `expect_through` says.
fn probe_all(
    label: &str,
    client: &Netns,
    link: &Link,
    expect_through: bool,
    checks: &mut Vec<bool>,
) -> Result<()> {
    for v6 in [false, true] {
        let host = link.host_ip(v6);
        let service = SocketAddr::new(host, SERVICE_PORT);
        interrupt::check()?;
        let started = Instant::now();
        let connected = tcp_connects(client, service, CLIENT_TIMEOUT);
        let took = started.elapsed().as_secs_f64();
        // Ctrl-C also stops a probe, whose result then says nothing about the filter.
        interrupt::check()?;
        let detail = if connected {
            "connected: greeted, and its line echoed".to_string()
        } else {
            format!("no connection, gave up after {took:.1} s")
        };
        checks.push(report(
            label,
            &format!("TCP to {service}"),
            &detail,
            connected == expect_through,
        ));

        let replies = ping(client, host, PINGS)?;
        interrupt::check()?;
        let detail = format!("{PINGS} echo requests, {replies} replies");
        let through = replies > 0;
        checks.push(report(
            label,
            &format!("ping {host}"),
            &detail,
            through == expect_through,
        ));
    }
    Ok(())
}

/// Prints one probe's line; passes `as_expected` on.
fn report(label: &str, what: &str, detail: &str, as_expected: bool) -> bool {
    let verdict = if as_expected {
        "as expected"
    } else {
        "UNEXPECTED"
    };
    println!("  {label} client, {what:<28} {detail}  [{verdict}]");
    as_expected
}

/// Stops allowlistd as an operator would. It leaves the filter attached when it exits
/// (fail closed); `allowlistd uninstall` detaches it.
fn stop(daemon: &mut Daemon) {
    match daemon.terminate() {
        Ok(status) => println!("  stopped allowlistd ({status})"),
        Err(error) => eprintln!("  warning: stopping allowlistd: {error:#}"),
    }
    println!(
        "  $ allowlistd --config {} uninstall",
        daemon.files().config.display()
    );
    match daemon.uninstall() {
        Ok(output) => {
            let said = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            for line in said.trim_end().lines() {
                println!("      {line}");
            }
        }
        Err(error) => eprintln!("  warning: allowlistd uninstall: {error:#}"),
    }
    // Dropping the daemon uninstalls again (a no-op now) and removes its files and pins.
}

/// The namespaces and the addresses at either end of each veth.
fn describe(topology: &Topology) {
    let end = |dev: &str, v4: Ipv4Addr, v6: Ipv6Addr| format!("{dev} {v4} {v6}");
    println!(
        "\n  host    {:<14} {}, {}",
        topology.host().name(),
        end(
            ALLOWED_LINK.host_dev,
            ALLOWED_LINK.host_v4,
            ALLOWED_LINK.host_v6
        ),
        end(
            BLOCKED_LINK.host_dev,
            BLOCKED_LINK.host_v4,
            BLOCKED_LINK.host_v6
        ),
    );
    for (role, netns, link) in [
        ("allowed", topology.allowed(), ALLOWED_LINK),
        ("blocked", topology.blocked(), BLOCKED_LINK),
    ] {
        println!(
            "  {role} {:<14} {}",
            netns.name(),
            end(link.client_dev, link.client_v4, link.client_v6)
        );
    }
    println!(
        "\nThe host has two veth interfaces, {} and {}, one to each client; allowlistd \
         will filter what arrives on both.",
        ALLOWED_LINK.host_dev, BLOCKED_LINK.host_dev
    );
}

fn heading(text: &str) {
    println!("\n==> {text}");
}

fn print_indented(text: &str) {
    for line in text.trim_end().lines() {
        println!("    {line}");
    }
}
