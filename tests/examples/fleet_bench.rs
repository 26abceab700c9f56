//! The fleet benchmark (`cargo xtask bench --fleet`): N daemons, each in a network
//! namespace of its own, follow one local etcd; the time from `allowlistctl fleet push`
//! returning until every host's kernel judges by the new list.
//!
//! ```text
//! cargo build --release -p allowlist-tests --example fleet_bench
//! target/release/examples/fleet_bench --bin-dir target/release [--hosts 10,20] [--sizes 1000,10000,100000] [--rounds 10]
//! ```
//!
//! Judged by packets, not by asking the daemons: the blocked client of every host sends
//! a datagram to it each millisecond, and each round pushes the set (`size` entries, 1%
//! of them new this round) listing the blocked client for the first time; a host's latency is when its first datagram from the blocked client arrives
//! after the push returned (0 when it arrived before: the host was faster than the CLI).
//! Between rounds a set without the client is pushed and every host is waited for.
//! Needs root and etcd (`cargo xtask setup`).

use std::{
    io::Write as _,
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    process::{Command, ExitCode},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use allowlist_tests::{
    daemon::toml_string, etcd::Etcd, in_netns, interrupt, ConfigBuilder, Daemon, Topology,
};
use allowlist_userspace::{
    allowlist::SetName,
    fleet::{admin, Layout},
};
use anyhow::{bail, Context as _, Result};

const PORT: u16 = 7161;
/// A round that takes longer than this is reported as failed.
const ROUND_LIMIT: Duration = Duration::from_secs(120);

struct Options {
    bin_dir: PathBuf,
    hosts: Vec<usize>,
    sizes: Vec<usize>,
    rounds: usize,
}

fn options() -> Result<Options> {
    let mut options = Options {
        bin_dir: PathBuf::from("target/release"),
        hosts: vec![10],
        sizes: vec![1_000, 10_000, 100_000],
        rounds: 10,
    };
    let mut args = std::env::args().skip(1);
    let list = |value: Option<String>| -> Result<Vec<usize>> {
        value
            .context("a value is missing")?
            .split(',')
            .map(|n| n.trim().parse().context("give numbers separated by commas"))
            .collect()
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bin-dir" => options.bin_dir = args.next().context("--bin-dir DIR")?.into(),
            "--hosts" => options.hosts = list(args.next())?,
            "--sizes" => options.sizes = list(args.next())?,
            "--rounds" => options.rounds = list(args.next())?.first().copied().unwrap_or(10),
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(options)
}

/// When the first datagram from the blocked client arrived since `armed`.
struct Receiver {
    first: Arc<Mutex<Option<Instant>>>,
    armed: Arc<AtomicBool>,
}

fn receive(topology: &Topology, stop: Arc<AtomicBool>) -> Result<Receiver> {
    let socket = in_netns(topology.host(), || UdpSocket::bind(("0.0.0.0", PORT)))?;
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    let first = Arc::new(Mutex::new(None));
    let armed = Arc::new(AtomicBool::new(false));
    let (first_in, armed_in) = (Arc::clone(&first), Arc::clone(&armed));
    thread::spawn(move || {
        let mut buffer = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if socket.recv_from(&mut buffer).is_ok() && armed_in.load(Ordering::Acquire) {
                let mut first = first_in.lock().unwrap();
                if first.is_none() {
                    *first = Some(Instant::now());
                }
            }
        }
    });
    Ok(Receiver { first, armed })
}

fn send(topology: &Topology, stop: Arc<AtomicBool>) -> Result<()> {
    let socket = in_netns(topology.blocked(), || UdpSocket::bind("0.0.0.0:0"))?;
    let host: SocketAddr = ([10, 10, 2, 1], PORT).into();
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let _ = socket.send_to(b"fleet", host);
            thread::sleep(Duration::from_millis(1));
        }
    });
    Ok(())
}

/// Share of a set each round replaces (at least one entry), besides the blocked client.
const CHURN_PERCENT: usize = 1;

fn churn(size: usize) -> usize {
    (size * CHURN_PERCENT / 100).max(1)
}

/// The entries every round of a `size`-entry set shares.
fn base(size: usize) -> Vec<std::net::Ipv4Addr> {
    let first = u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0));
    (0..size.saturating_sub(churn(size) + 1))
        .map(|i| std::net::Ipv4Addr::from(first + i as u32))
        .collect()
}

/// Round `round`'s set: the shared entries, [`churn`] entries of this round only, and
/// the blocked client when `with_client` (else one more entry of this round).
fn set_file(
    dir: &std::path::Path,
    size: usize,
    round: usize,
    with_client: bool,
) -> Result<PathBuf> {
    let path = dir.join(format!("set-{size}-{round}-{with_client}.csv"));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    writeln!(file, "ip_address,description")?;
    for address in base(size) {
        writeln!(file, "{address},bench")?;
    }
    let own = u32::from(std::net::Ipv4Addr::new(100, 96, 0, 0))
        + u32::try_from(round * 2 + usize::from(with_client))? * 0x0004_0000;
    for i in 0..churn(size) {
        writeln!(
            file,
            "{},round",
            std::net::Ipv4Addr::from(own + u32::try_from(i)?)
        )?;
    }
    if with_client {
        writeln!(file, "10.10.2.2,the blocked client")?;
    } else {
        writeln!(
            file,
            "{},round",
            std::net::Ipv4Addr::from(own + 0x0003_ffff)
        )?;
    }
    Ok(path)
}

/// Writes the shared entries in batches (etcd's default limits would refuse them in
/// one transaction, and seeding is not what is measured).
fn seed(etcd: &Etcd, size: usize) -> Result<()> {
    let layout = Layout::new("/allowlist");
    let set = SetName::new("office").map_err(anyhow::Error::msg)?;
    let networks: Vec<ipnet::IpNet> = base(size)
        .into_iter()
        .map(|address| ipnet::IpNet::from(std::net::IpAddr::from(address)))
        .collect();
    for batch in networks.chunks(10_000) {
        admin::add(&etcd.client(), &layout, &set, batch, "bench").map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

fn push(ctl: &std::path::Path, config: &std::path::Path, file: &std::path::Path) -> Result<()> {
    let output = Command::new(ctl)
        .arg("fleet")
        .arg("--config")
        .arg(config)
        .arg("push")
        .arg(file)
        .args(["--set", "office"])
        .output()?;
    if !output.status.success() {
        bail!("fleet push: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn run_one(options: &Options, etcd: &Etcd, hosts: usize, dir: &std::path::Path) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let topologies: Vec<Topology> = (0..hosts).map(|_| Topology::new()).collect::<Result<_>>()?;
    let mut daemons = Vec::new();
    for (i, topology) in topologies.iter().enumerate() {
        let endpoint = etcd.endpoint_in(topology.host())?;
        let config = ConfigBuilder::allowed_client(topology).table(&format!(
            "[fleet]\nendpoints = [{}]\nhost = \"bench-{i}\"\nsets = [\"office\"]\n",
            toml_string(&endpoint)
        ));
        daemons.push(Daemon::start(topology, &config)?);
    }
    let receivers: Vec<Receiver> = topologies
        .iter()
        .map(|topology| receive(topology, Arc::clone(&stop)))
        .collect::<Result<_>>()?;
    for topology in &topologies {
        send(topology, Arc::clone(&stop))?;
    }
    let ctl = options.bin_dir.join("allowlistctl");
    let config = dir.join("operator.toml");
    std::fs::write(
        &config,
        format!("[fleet]\nendpoints = [{}]\n", toml_string(&etcd.url())),
    )?;
    for &size in &options.sizes {
        seed(etcd, size)?;
        let mut all = Vec::new();
        let mut each = Vec::new();
        for round in 0..options.rounds {
            if interrupt::interrupted() {
                bail!("interrupted");
            }
            // Everyone drops the client first (judged by the same datagrams: none for a
            // while), then the new set that lists it is pushed.
            push(&ctl, &config, &set_file(dir, size, round, false)?)?;
            let quiet = Instant::now();
            loop {
                for receiver in &receivers {
                    *receiver.first.lock().unwrap() = None;
                    receiver.armed.store(true, Ordering::Release);
                }
                thread::sleep(Duration::from_millis(300));
                if receivers.iter().all(|r| r.first.lock().unwrap().is_none()) {
                    break;
                }
                if quiet.elapsed() > ROUND_LIMIT {
                    bail!("hosts never dropped the client after a push without it");
                }
            }
            let file = set_file(dir, size, round, true)?;
            push(&ctl, &config, &file)?;
            let returned = Instant::now();
            loop {
                let firsts: Vec<Option<Instant>> =
                    receivers.iter().map(|r| *r.first.lock().unwrap()).collect();
                if firsts.iter().all(Option::is_some) {
                    let latencies: Vec<f64> = firsts
                        .iter()
                        .flatten()
                        .map(|at| at.saturating_duration_since(returned).as_secs_f64() * 1000.0)
                        .collect();
                    all.push(latencies.iter().copied().fold(0.0, f64::max));
                    each.extend(latencies);
                    break;
                }
                if returned.elapsed() > ROUND_LIMIT {
                    bail!("not every host applied a {size}-entry push within {ROUND_LIMIT:?}");
                }
                thread::sleep(Duration::from_millis(1));
            }
        }
        all.sort_by(f64::total_cmp);
        each.sort_by(f64::total_cmp);
        println!(
            "fleet\t{hosts}\t{size}\t{}\tall hosts p50 {:.0} ms p99 {:.0} ms max {:.0} ms\teach host p50 {:.0} ms p99 {:.0} ms",
            options.rounds,
            percentile(&all, 50.0),
            percentile(&all, 99.0),
            all.last().copied().unwrap_or(f64::NAN),
            percentile(&each, 50.0),
            percentile(&each, 99.0),
        );
    }
    stop.store(true, Ordering::Relaxed);
    drop(daemons);
    Ok(())
}

fn main() -> ExitCode {
    interrupt::catch();
    let result = (|| -> Result<()> {
        let options = options()?;
        std::env::set_var("ALLOWLIST_BIN_DIR", &options.bin_dir);
        let etcd = Etcd::start()?;
        let dir = tempfile::tempdir()?;
        println!("fleet\thosts\tentries\trounds\tfrom `fleet push` returning until every host's kernel passes the new list");
        for &hosts in &options.hosts {
            run_one(&options, &etcd, hosts, dir.path())?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fleet_bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
