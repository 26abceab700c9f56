//! 2. Drop rate on a veth pair, mostly unlisted sources, for this filter and the usual
//!    alternatives.
//!
//! ```text
//!  bench netns:  vgen ──veth──► vrx 198.18.0.1/24 (GRO on, so veth takes XDP frames)
//!                 ▲              └─ the receiver under test: XDP program, nftables
//!   generate (XDP, live frames:      netdev ingress chain, or iptables raw PREROUTING
//!   BPF_PROG_TEST_RUN with           + ipset
//!   BPF_F_TEST_XDP_LIVE_FRAMES, XDP_TX = transmit out of vgen)
//! ```
//!
//! The generator rewrites the IPv4 source of each frame from a table of 65,536 addresses:
//! one in 1,024 inside a listed network, the others random addresses that no listed
//! network covers.
//!
//! Generator and receiver each have a core of their own, as a sender on a wire and a NIC
//! would: the generator runs pinned to CPU 0, and vrx's NAPI poll runs in its own kernel
//! thread (threaded NAPI) pinned to CPU 1. That thread does everything the receiver does
//! with a frame (XDP, or skb + GRO + ingress hook + IP + netfilter). When the receiver is
//! slower than the generator, veth's 256-frame ring overflows and the surplus is dropped
//! before the receiver sees it, so the receiver runs saturated and what it judged per
//! second of wall-clock time is its drop rate on one core. When it keeps up (nothing
//! lost at the ring), the figure is the generator's rate, a lower bound, and the results
//! say so.
//!
//! Every receiver counts what it judged with its own counters (per-CPU map, nft
//! `counter`, iptables rule counters), listed packets included.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Instant;

use allowlist_tests::raw::parse_mac;
use allowlist_tests::{in_netns, Netns};
use allowlist_userspace::compile::CompiledList;
use anyhow::{ensure, Context, Result};

use crate::kernel::{self, live_frames, Helpers, PinnedFilter, DEFAULT_FEATURES, SOURCE_SLOTS};
use crate::lists::{self, Rng};
use crate::results::Results;
use crate::Options;
use crate::{frames, tools};

const GEN_DEV: &str = "vgen";
const RX_DEV: &str = "vrx";
const RX_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// One source in this many is listed.
const LISTED_EVERY: usize = 1024;
const NFT_TABLE: &str = "albench";
const IPSET: &str = "albench";

pub fn run(options: &Options, results: &mut Results) -> Result<()> {
    ensure!(
        std::thread::available_parallelism()?.get() >= 2,
        "the drop-rate benchmark needs two CPUs: one generates, one receives"
    );
    let netns = Netns::new("drop")?;
    netns.disable_ipv6()?;
    netns.ip(&[
        "link", "add", GEN_DEV, "type", "veth", "peer", "name", RX_DEV,
    ])?;
    netns.ip(&["addr", "add", &format!("{RX_ADDR}/24"), "dev", RX_DEV])?;
    netns.ip(&["link", "set", GEN_DEV, "up"])?;
    netns.ip(&["link", "set", RX_DEV, "up"])?;
    // With GRO on, veth runs NAPI on vrx and accepts XDP frames even when no XDP program
    // is attached there (the nftables and iptables cases).
    netns.run(&["ethtool", "-K", RX_DEV, "gro", "on"])?;
    netns.run(&[
        "sh",
        "-c",
        &format!("echo 1 > /sys/class/net/{RX_DEV}/threaded"),
    ])?;
    let gen_mac = parse_mac(&netns.mac(GEN_DEV)?)?;
    let rx_mac = parse_mac(&netns.mac(RX_DEV)?)?;
    let gen_ifindex = ifindex(&netns, GEN_DEV)?;

    let iptables = iptables_variants();
    results.note("drop_rate.iptables", &iptables.join(", "))?;
    results.note("drop_rate.listed_share", &format!("1/{LISTED_EVERY}"))?;

    in_netns(&netns, || -> Result<()> {
        pin_to_cpu(0, GENERATOR_CPU)?;
        let largest = *options.drop_rate_sizes.iter().max().context("no sizes")?;
        let mut rng = Rng::new(options.seed ^ 0xd20b);
        let full = lists::mixed_v4(largest, &mut rng);
        let mut helpers = Helpers::load()?;
        let template = frames::udp_v4(rx_mac, gen_mac, Ipv4Addr::new(0, 0, 0, 0), RX_ADDR);
        let generator = Generator {
            template,
            ifindex: gen_ifindex,
        };

        for &entries in &options.drop_rate_sizes {
            println!("  -- {entries} prefixes");
            let list = subset(&full, entries, &mut rng);
            helpers.set_sources(&sources(&list, &full, &mut rng))?;
            let prefix = format!("drop_rate.{entries}");
            measure_list(
                options,
                results,
                &mut helpers,
                &generator,
                &list,
                &prefix,
                &iptables,
            )?;
        }
        // Provider-shaped: the clustered list of the largest size, against the same
        // receivers, under keys of its own (`drop_rate.clustered.N.…`).
        println!("  -- {largest} prefixes, clustered (provider-shaped)");
        let clustered = lists::clustered_v4(largest, &mut rng);
        helpers.set_sources(&sources(&clustered, &clustered, &mut rng))?;
        let prefix = format!("drop_rate.clustered.{largest}");
        measure_list(
            options,
            results,
            &mut helpers,
            &generator,
            &clustered,
            &prefix,
            &iptables,
        )?;
        Ok(())
    })
}

/// Every receiver judging the generator's frames with `list` loaded, `options.runs` times
/// in turns; figures under `prefix`.
fn measure_list(
    options: &Options,
    results: &mut Results,
    helpers: &mut Helpers,
    generator: &Generator,
    list: &CompiledList,
    prefix: &str,
    iptables: &[String],
) -> Result<()> {
    let mut receivers = receivers(list, list.v4.len(), iptables)?;
    // One sample per receiver per round; all receivers take turns in each round, and
    // ratios are taken within a round.
    let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for _round in 0..options.runs {
        for receiver in receivers.iter_mut() {
            crate::check_interrupted()?;
            let sample = generator.measure(helpers, receiver.as_mut(), options)?;
            samples.entry(receiver.key()).or_default().push(sample);
        }
    }
    for (key, samples) in &samples {
        let figure = |what: &str| format!("{prefix}.{key}.{what}");
        let mpps: Vec<f64> = samples.iter().map(|s| s.judged_mpps).collect();
        results.figure(&figure("mpps"), "Mpps", &mpps)?;
        let ns: Vec<f64> = mpps.iter().map(|mpps| 1e3 / mpps).collect();
        results.figure(&figure("ns"), "ns", &ns)?;
        let offered: Vec<f64> = samples.iter().map(|s| s.offered_mpps).collect();
        results.figure(&figure("offered_mpps"), "Mpps", &offered)?;
        let lost: Vec<f64> = samples.iter().map(|s| s.lost_share * 100.0).collect();
        results.figure(&figure("lost_at_ring"), "%", &lost)?;
    }
    let ours = &samples["allowlist"];
    for (other, theirs) in samples
        .iter()
        .filter(|(key, _)| !key.starts_with("allowlist"))
    {
        let ratio: Vec<f64> = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| a.judged_mpps / b.judged_mpps)
            .collect();
        results.figure(&format!("{prefix}.ratio.allowlist_vs_{other}"), "x", &ratio)?;
    }
    for receiver in receivers.iter_mut() {
        receiver.teardown()?;
    }
    Ok(())
}

const GENERATOR_CPU: usize = 0;
const RECEIVER_CPU: usize = 1;

/// What one measurement saw.
struct Sample {
    /// Frames the receiver judged per second, in millions.
    judged_mpps: f64,
    /// Frames the generator sent per second, in millions.
    offered_mpps: f64,
    /// Share of the frames sent that veth dropped because the receiver's ring was full.
    lost_share: f64,
}

/// The generator: a template frame and the veth end it is sent from.
struct Generator {
    template: Vec<u8>,
    ifindex: u32,
}

impl Generator {
    /// Sends frames through `receiver` for about `options.drop_rate_seconds`.
    fn measure(
        &self,
        helpers: &mut Helpers,
        receiver: &mut dyn Receiver,
        options: &Options,
    ) -> Result<Sample> {
        receiver.start(helpers)?;
        let result = (|| {
            pin_napi_thread(RECEIVER_CPU)?;
            // A short run to size the measured one, and to warm everything up.
            let warm_up = self.send(helpers, receiver, 500_000)?;
            let frames =
                (warm_up.offered_mpps * 1e6 * options.drop_rate_seconds).clamp(1e5, 4e9) as u32;
            self.send(helpers, receiver, frames)
        })();
        receiver.stop(helpers)?;
        result
    }

    fn send(
        &self,
        helpers: &mut Helpers,
        receiver: &mut dyn Receiver,
        frames: u32,
    ) -> Result<Sample> {
        let before = receiver.judged(helpers)?;
        let started = Instant::now();
        live_frames(
            helpers.program("generate")?,
            &self.template,
            self.ifindex,
            frames,
        )?;
        let took = started.elapsed().as_secs_f64();
        // Let the receiver finish what is still in the ring (at most 256 frames).
        std::thread::sleep(std::time::Duration::from_millis(20));
        let judged = receiver.judged(helpers)? - before;
        ensure!(
            judged <= u64::from(frames),
            "{}: sent {frames} frames but the receiver judged {judged}: something else is sending",
            receiver.key()
        );
        Ok(Sample {
            judged_mpps: judged as f64 / took / 1e6,
            offered_mpps: f64::from(frames) / took / 1e6,
            lost_share: 1.0 - judged as f64 / f64::from(frames),
        })
    }
}

/// Something on vrx that drops unlisted packets and can say how many packets it judged.
trait Receiver {
    fn key(&self) -> String;
    fn start(&mut self, helpers: &mut Helpers) -> Result<()>;
    fn judged(&mut self, helpers: &mut Helpers) -> Result<u64>;
    fn stop(&mut self, helpers: &mut Helpers) -> Result<()>;
    /// Removes what `receivers` set up for this list size.
    fn teardown(&mut self) -> Result<()> {
        Ok(())
    }
}

fn receivers(
    list: &CompiledList,
    entries: usize,
    iptables: &[String],
) -> Result<Vec<Box<dyn Receiver>>> {
    let mut filter = PinnedFilter::open(&format!("drop-{entries}"))?;
    filter.enforce(list, DEFAULT_FEATURES)?;
    let mut plain = PinnedFilter::open(&format!("drop-{entries}-plain"))?;
    plain.enforce(list, 0)?;
    let mut recording = PinnedFilter::open(&format!("drop-{entries}-recording"))?;
    recording.enforce(
        list,
        DEFAULT_FEATURES | allowlist_common::FEATURE_RECORD_DROPS,
    )?;
    let mut all: Vec<Box<dyn Receiver>> = vec![
        Box::new(XDP_DROP_ALL),
        Box::new(XDP_READ_DROP),
        Box::new(NftDropAll),
        Box::new(Allowlist {
            filter,
            key: "allowlist",
        }),
        Box::new(Allowlist {
            filter: plain,
            key: "allowlist_no_return_traffic",
        }),
        // Recording dropped sources for `allowlistctl top`: with 65,536 sources cycling
        // through a table of 4,096, nearly every drop is an LRU insert and eviction, the
        // worst case (a flood of random sources).
        Box::new(Allowlist {
            filter: recording,
            key: "allowlist_recording_drops",
        }),
        Box::new(NftSet::load(list)?),
    ];
    load_ipset(list)?;
    for binary in iptables {
        all.push(Box::new(IptablesIpset {
            binary: binary.clone(),
        }));
    }
    Ok(all)
}

/// The product's XDP program: as a default daemon runs it, and with `return_traffic` and
/// `dhcp_client` off (`features` 0), which shows what the flow lookup for replies costs.
struct Allowlist {
    filter: PinnedFilter,
    key: &'static str,
}

impl Receiver for Allowlist {
    fn key(&self) -> String {
        self.key.into()
    }
    fn start(&mut self, _: &mut Helpers) -> Result<()> {
        self.filter.attach(RX_DEV)
    }
    fn judged(&mut self, _: &mut Helpers) -> Result<u64> {
        self.filter.judged()
    }
    fn stop(&mut self, _: &mut Helpers) -> Result<()> {
        self.filter.detach()
    }
}

/// An XDP floor of `allowlist-bench`: `drop_all` (drops without reading the frame) or
/// `read_drop` (reads the IPv4 source first, as any filter must).
struct XdpFloor {
    program: &'static str,
    key: &'static str,
}

const XDP_DROP_ALL: XdpFloor = XdpFloor {
    program: "drop_all",
    key: "xdp_drop_all",
};
const XDP_READ_DROP: XdpFloor = XdpFloor {
    program: "read_drop",
    key: "xdp_read_drop",
};

impl Receiver for XdpFloor {
    fn key(&self) -> String {
        self.key.into()
    }
    fn start(&mut self, helpers: &mut Helpers) -> Result<()> {
        helpers.attach_floor(self.program, RX_DEV)
    }
    fn judged(&mut self, helpers: &mut Helpers) -> Result<u64> {
        helpers.dropped()
    }
    fn stop(&mut self, helpers: &mut Helpers) -> Result<()> {
        helpers.detach()
    }
}

struct NftDropAll;

impl Receiver for NftDropAll {
    fn key(&self) -> String {
        "nft_drop_all".into()
    }
    fn start(&mut self, _: &mut Helpers) -> Result<()> {
        tools::nft(&format!(
            "table netdev {NFT_TABLE}_all {{\n chain ingress {{\n  type filter hook ingress device \"{RX_DEV}\" priority 0;\n  counter drop\n }}\n}}\n"
        ))
    }
    fn judged(&mut self, _: &mut Helpers) -> Result<u64> {
        nft_counters(&format!("{NFT_TABLE}_all"))
    }
    fn stop(&mut self, _: &mut Helpers) -> Result<()> {
        tools::nft(&format!("delete table netdev {NFT_TABLE}_all\n"))
    }
}

/// nftables in the netdev family: an interval set of the same prefixes, looked up at
/// ingress (before IP processing: nftables' earliest hook).
struct NftSet;

impl NftSet {
    fn load(list: &CompiledList) -> Result<NftSet> {
        let _ = tools::nft(&format!("delete table netdev {NFT_TABLE}\n"));
        tools::nft(&nft_set_script_named(NFT_TABLE, list))?;
        Ok(NftSet)
    }
}

/// `table netdev TABLE` with `set allow` holding `list` as intervals.
pub fn nft_set_script_named(table: &str, list: &CompiledList) -> String {
    let mut script = format!(
        "table netdev {table} {{\n set allow {{\n  type ipv4_addr; flags interval;\n  elements = {{ "
    );
    for (i, (net, _)) in list.v4.iter().enumerate() {
        if i > 0 {
            script.push_str(", ");
        }
        script.push_str(&net.to_string());
    }
    script.push_str(" }\n }\n}\n");
    script
}

impl Receiver for NftSet {
    fn key(&self) -> String {
        "nft_set".into()
    }
    fn start(&mut self, _: &mut Helpers) -> Result<()> {
        tools::nft(&format!(
            "add chain netdev {NFT_TABLE} ingress {{ type filter hook ingress device \"{RX_DEV}\" priority 0; }}\n\
             add rule netdev {NFT_TABLE} ingress ip saddr @allow counter accept\n\
             add rule netdev {NFT_TABLE} ingress meta protocol ip counter drop\n"
        ))
    }
    fn judged(&mut self, _: &mut Helpers) -> Result<u64> {
        nft_counters(NFT_TABLE)
    }
    fn stop(&mut self, _: &mut Helpers) -> Result<()> {
        tools::nft(&format!("delete chain netdev {NFT_TABLE} ingress\n"))
    }
    fn teardown(&mut self) -> Result<()> {
        tools::nft(&format!("delete table netdev {NFT_TABLE}\n"))
    }
}

/// iptables (raw table, PREROUTING: before connection tracking) matching an ipset.
struct IptablesIpset {
    binary: String,
}

impl IptablesIpset {
    fn rules(&self, action: &str) -> Result<()> {
        let accept = [
            "-t",
            "raw",
            action,
            "PREROUTING",
            "-i",
            RX_DEV,
            "-m",
            "set",
            "--match-set",
            IPSET,
            "src",
            "-j",
            "ACCEPT",
        ];
        let drop = [
            "-t",
            "raw",
            action,
            "PREROUTING",
            "-i",
            RX_DEV,
            "-j",
            "DROP",
        ];
        tools::output(Command::new(&self.binary).args(accept))?;
        tools::output(Command::new(&self.binary).args(drop))?;
        Ok(())
    }
}

impl Receiver for IptablesIpset {
    fn key(&self) -> String {
        format!("{}_ipset", self.binary.replace('-', "_"))
    }
    fn start(&mut self, _: &mut Helpers) -> Result<()> {
        self.rules("-A")
    }
    fn judged(&mut self, _: &mut Helpers) -> Result<u64> {
        let listing = tools::output(Command::new(&self.binary).args([
            "-t",
            "raw",
            "-L",
            "PREROUTING",
            "-v",
            "-x",
            "-n",
        ]))?;
        // Rule lines start with their packet count.
        Ok(listing
            .lines()
            .skip(2)
            .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
            .sum())
    }
    fn stop(&mut self, _: &mut Helpers) -> Result<()> {
        self.rules("-D")
    }
    fn teardown(&mut self) -> Result<()> {
        // The set is shared by every iptables variant; destroying it twice is harmless.
        let _ = tools::output(Command::new("ipset").args(["destroy", IPSET]));
        Ok(())
    }
}

/// `ipset restore` of a hash:net set named albench holding `list`.
fn load_ipset(list: &CompiledList) -> Result<()> {
    let _ = tools::output(Command::new("ipset").args(["destroy", IPSET]));
    let script = ipset_script(IPSET, list);
    tools::output_with_input(Command::new("ipset").arg("restore"), &script)?;
    Ok(())
}

pub fn ipset_script(name: &str, list: &CompiledList) -> String {
    let mut script = format!(
        "create {name} hash:net family inet hashsize {} maxelem {}\n",
        (list.v4.len() / 4).next_power_of_two().max(1024),
        (list.v4.len() * 2).max(65536)
    );
    for (net, _) in &list.v4 {
        script.push_str(&format!("add {name} {net}\n"));
    }
    script
}

/// The iptables front ends present: Debian's default (nf_tables back end) and the legacy
/// xtables one.
fn iptables_variants() -> Vec<String> {
    ["iptables-nft", "iptables-legacy"]
        .into_iter()
        .filter(|binary| {
            Command::new(binary)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
        .map(String::from)
        .collect()
}

/// `list` cut down to `entries` prefixes chosen at random (a subset of a minimal list is
/// minimal too, and every address unlisted in the full list is unlisted in it).
fn subset(full: &CompiledList, entries: usize, rng: &mut Rng) -> CompiledList {
    let mut v4 = full.v4.clone();
    while v4.len() > entries {
        let victim = rng.below(v4.len() as u64) as usize;
        v4.swap_remove(victim);
    }
    v4.sort_unstable();
    CompiledList {
        v4,
        ..CompiledList::default()
    }
}

/// The generator's sources: every `LISTED_EVERY`th inside a network of `list`, the rest
/// covered by nothing in `full` (a superset of `list`).
fn sources(list: &CompiledList, full: &CompiledList, rng: &mut Rng) -> Vec<[u8; 4]> {
    (0..SOURCE_SLOTS as usize)
        .map(|slot| {
            let address = if slot % LISTED_EVERY == 0 {
                lists::listed_v4(list, rng)
            } else {
                lists::unlisted_v4(full, rng)
            };
            kernel::octets(address.into())
        })
        .collect()
}

/// Sum of the packet counters of every rule in an nftables table.
fn nft_counters(table: &str) -> Result<u64> {
    let listing = tools::output(Command::new("nft").args(["list", "table", "netdev", table]))?;
    let mut total = 0;
    let mut words = listing.split_whitespace();
    while let Some(word) = words.next() {
        if word == "packets" {
            total += words
                .next()
                .context("nft: no number after `packets`")?
                .parse::<u64>()?;
        }
    }
    Ok(total)
}

fn ifindex(netns: &Netns, dev: &str) -> Result<u32> {
    let json = netns.ip(&["-j", "link", "show", "dev", dev])?;
    let links: serde_json::Value = serde_json::from_str(&json)?;
    links[0]["ifindex"]
        .as_u64()
        .map(|index| index as u32)
        .with_context(|| format!("no ifindex for {dev} in {json}"))
}

/// Pins thread `tid` (0: the calling thread) to `cpu`.
fn pin_to_cpu(tid: libc::pid_t, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    ensure!(
        rc == 0,
        "sched_setaffinity({tid}, cpu {cpu}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Pins the NAPI kernel thread of vrx (`napi/vrx-ID`) to `cpu` and gives it real-time
/// priority: NAPI normally runs in softirq context, which pre-empts every task, and a
/// compiler or test suite running on the machine at the same time must not take the
/// receiver's core away. veth creates the thread again when an XDP program comes or goes,
/// so this runs for every measurement.
fn pin_napi_thread(cpu: usize) -> Result<()> {
    let prefix = format!("napi/{RX_DEV}-");
    let mut pinned = 0;
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(&prefix) {
            pin_to_cpu(pid, cpu)?;
            let priority = libc::sched_param { sched_priority: 50 };
            // SAFETY: plain syscall on a parameter struct we own.
            let rc = unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &priority) };
            ensure!(
                rc == 0,
                "sched_setscheduler({pid}, SCHED_FIFO): {}",
                std::io::Error::last_os_error()
            );
            pinned += 1;
        }
    }
    ensure!(
        pinned > 0,
        "no NAPI thread of {RX_DEV} found (threaded NAPI is off?)"
    );
    Ok(())
}
