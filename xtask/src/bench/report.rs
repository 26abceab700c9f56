//! The tables of `cargo xtask bench` and BENCHMARKS.md, from the figures of one run.
//!
//! Generated here: the method text, the figures, whether each target is met and by how
//! much it is missed, and for each target's topic the figures its analysis rests on. The
//! analyses themselves — why a target is missed, what would close it — are written by
//! hand in BENCHMARKS.md and carried over unchanged ([`super::analysis`]).

use std::fmt::Write as _;

use super::{analysis::Analyses, results::Results, Machine};

const SHAPES: [(&str, &str); 4] = [
    ("v4_dense32", "IPv4, all /32 (dense)"),
    ("v4_mixed", "IPv4, mixed prefix lengths"),
    ("v4_clustered", "IPv4, provider-shaped (clustered)"),
    ("v6_mixed", "IPv6, mixed prefix lengths"),
];

/// Published per-packet cost of the plain kernel LPM trie, dense /32 keys.
const PUBLISHED_LPM_NS: [(usize, f64); 3] = [(100, 62.0), (100_000, 263.0), (1_000_000, 665.0)];

/// Receivers of the drop-rate benchmark, in table order.
const RECEIVERS: [(&str, &str); 9] = [
    ("allowlist", "**this filter** (XDP, default features)"),
    (
        "allowlist_no_return_traffic",
        "this filter, `return_traffic` and `dhcp_client` off",
    ),
    (
        "allowlist_recording_drops",
        "this filter, recording dropped sources (`allowlistctl top`)",
    ),
    ("nft_set", "nftables: netdev ingress, interval set"),
    (
        "iptables_legacy_ipset",
        "iptables-legacy raw PREROUTING + ipset hash:net",
    ),
    (
        "iptables_nft_ipset",
        "iptables-nft raw PREROUTING + ipset hash:net",
    ),
    ("xdp_read_drop", "floor: XDP reads the source, drops"),
    ("xdp_drop_all", "floor: XDP drop-all"),
    ("nft_drop_all", "floor: nftables netdev ingress drop-all"),
];

enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

/// What a target is about: the targets of one topic share its analysis.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Topic {
    DropRate,
    PerPacketGrowth,
    ApplyWhole,
    ApplyIncremental,
    Memory,
    ConfigLoad,
}

impl Topic {
    const ALL: [Topic; 6] = [
        Topic::DropRate,
        Topic::PerPacketGrowth,
        Topic::ApplyWhole,
        Topic::ApplyIncremental,
        Topic::Memory,
        Topic::ConfigLoad,
    ];

    /// The key of its analysis in BENCHMARKS.md (`<!-- analysis:KEY -->`).
    fn key(self) -> &'static str {
        match self {
            Topic::DropRate => "drop-rate",
            Topic::PerPacketGrowth => "per-packet-growth",
            Topic::ApplyWhole => "apply-whole",
            Topic::ApplyIncremental => "apply-incremental",
            Topic::Memory => "memory",
            Topic::ConfigLoad => "config-load",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Topic::DropRate => "Drop rate",
            Topic::PerPacketGrowth => "Per-packet cost at 1M against 100 entries",
            Topic::ApplyWhole => "Applying a whole new list",
            Topic::ApplyIncremental => "One incremental add",
            Topic::Memory => "Daemon memory",
            Topic::ConfigLoad => "Loading a large config file",
        }
    }
}

/// Fails for an analysis in BENCHMARKS.md that no topic would write back.
pub fn check_analyses(analyses: &Analyses) -> anyhow::Result<()> {
    analyses.check_keys(&Topic::ALL.map(Topic::key))
}

/// Above the analyses, for whoever edits the file.
const ANALYSES_NOTE: &str = "<!-- The text between each `analysis:KEY` marker and the \
    `/analysis` marker after it is written by hand: `cargo xtask bench` carries it over \
    unchanged when it rewrites this file, and generates everything else. -->\n\n";

struct Target {
    what: String,
    key: String,
    goal: Goal,
    show: fn(f64) -> String,
    topic: Topic,
}

pub struct Report<'a> {
    results: &'a Results,
    machine: &'a Machine,
    quick: bool,
}

impl<'a> Report<'a> {
    pub fn new(results: &'a Results, machine: &'a Machine, quick: bool) -> Self {
        Report {
            results,
            machine,
            quick,
        }
    }

    /// What `cargo xtask bench` prints: the targets and every table.
    pub fn console(&self) -> String {
        let mut out = String::new();
        out.push_str("== targets\n\n");
        out.push_str(&self.targets_table());
        out.push_str("\n== 1. per-packet cost (ns, BPF_PROG_TEST_RUN)\n\n");
        out.push_str(&self.per_packet_table());
        out.push_str("\n== 2. drop rate on veth\n\n");
        out.push_str(&self.drop_rate_table("drop_rate"));
        out.push_str("\n== 2. drop rate on veth, provider-shaped list\n\n");
        out.push_str(&self.drop_rate_table("drop_rate.clustered"));
        out.push_str("\n== 3. apply time\n\n");
        out.push_str(&self.apply_table());
        out.push_str("\n== 4. memory\n\n");
        out.push_str(&self.memory_table());
        out.push_str("\n== 5. config load (allowlistd check)\n\n");
        out.push_str(&self.config_table());
        out
    }

    /// BENCHMARKS.md, with `analyses` (those of the file it replaces) carried over.
    pub fn markdown(&self, analyses: &Analyses) -> String {
        let r = self.results;
        let m = self.machine;
        let runs = r.note("runs").unwrap_or("?");
        let mode = if self.quick {
            "`cargo xtask bench --quick`"
        } else {
            "`cargo xtask bench`"
        };
        let mut doc = String::new();
        let _ = write!(
            doc,
            "# Benchmarks\n\n\
             Written by {mode} on {date}; every figure below comes from that run. Each figure is \
             the median of {runs} runs (fewer where a table says so), and every ratio is taken \
             within one run (figure A of run *i* over figure B of run *i*) before the median. \
             Run `cargo xtask bench` (about 10 minutes on this machine) or \
             `cargo xtask bench --quick` (about 4 minutes: fewer runs, shorter samples, no \
             `nft` at 1M) to measure again; it rewrites this file. \
             The raw figures, with the minimum and maximum of each, are in \
             `target/bench/results*.tsv`.\n\n",
            date = m.date,
        );

        if let Some(joined) = r.note("joined") {
            let _ = write!(
                doc,
                "**Not one run:** these figures were recorded by separate runs on the same \
                 machine and joined (`cargo xtask bench --report-from`): {joined}\n\n"
            );
        }
        doc.push_str("## Machine\n\n| | |\n|---|---|\n");
        let _ = writeln!(doc, "| kernel | {} |", m.kernel);
        let _ = writeln!(doc, "| CPU | {} × {} |", m.cpus, m.cpu);
        let _ = writeln!(doc, "| memory | {} |", m.memory);
        let _ = writeln!(doc, "| virtualization | {} |", m.virtualization);
        let _ = writeln!(doc, "| commit | {} |", m.commit);
        for (tool, version) in &m.tools {
            let _ = writeln!(doc, "| {tool} | {version} |");
        }
        let loads: Vec<String> = ["per-packet", "drop-rate", "apply", "config", "end"]
            .iter()
            .filter_map(|section| {
                r.note(&format!("load.{section}"))
                    .map(|load| format!("{section} {load}"))
            })
            .collect();
        let _ = writeln!(
            doc,
            "| load average (1 min) as each section started | {} |",
            loads.join(", ")
        );
        doc.push_str(
            "\nThe load average is there because this machine may be shared: anything else \
             running during the run (a compiler, a test suite) shows up in it and in the spread \
             of the raw figures.\n\n",
        );

        doc.push_str("## Targets\n\n");
        doc.push_str(&self.targets_table());
        doc.push_str(
            "\nWhy each missed target is missed, and what would close it, is under \
             [Missed targets](#missed-targets-why-and-what-would-close-them).\n\n",
        );

        doc.push_str("## 1. Per-packet cost\n\n");
        let repeat = r.note("per_packet.repeat").unwrap_or("1000000");
        let _ = write!(
            doc,
            "**Method.** The real XDP program, loaded and filled as the daemon does (the active slot \
             written, enforce mode, `return_traffic` and `dhcp_client` on as by default), runs \
             under `BPF_PROG_TEST_RUN` with repeat {repeat} on one 60-byte UDP frame (66 for \
             IPv6); the kernel reports the mean time per run. One source inside a listed network \
             (it passes) and one covered by none (it is dropped, after the lookup for a reply to \
             a flow the host opened). Lists: IPv4 host addresses counting up from 16.0.0.0 \
             (the \"dense /32 keys\" of the published LPM trie figures); IPv4 networks of mixed \
             lengths (half /24, 15% /32, the rest /16–/30) scattered over 1.0.0.0–223.255.255.255; \
             IPv4 networks shaped like the cloud providers' published ranges (1% /16–/19, 20% \
             /20–/22, 60% /23–/24, 19% /25–/29, laid out in runs in 300 blocks, one starting \
             at a random place in each 300th of the space, each network aligned to its size and \
             followed by a gap of up to a quarter of its size: 100k fill a thirtieth of each \
             block's share, 1M a third; \
             `tests/examples/bench/lists.rs`); \
             IPv6 networks (/32–/64 and /128) scattered over 2000::/3. N counts prefixes after \
             the daemon's compile step (no duplicates, nothing covered). The floor is a no-op \
             XDP program (`allowlist-ebpf/src/bench.rs`) on the same frame.\n\n\
             One frame repeated keeps the lookup path in cache, so these figures are the cost \
             of the path's length, not of cache misses; the published LPM figures (random keys) \
             include misses. Section 2 is the cache-cold counterpart. Lookups go screen bitmap, \
             then the hash of listed hosts, then the LPM trie (README, \"Lookup\"): a listed \
             host stops at the hash, an unlisted source mostly at the screen.\n\n",
        );
        doc.push_str(&self.per_packet_table());

        doc.push_str("\n## 2. Drop rate on veth\n\n");
        let listed = r.note("drop_rate.listed_share").unwrap_or("1/1024");
        let _ = write!(
            doc,
            "**Method.** Two ends of a veth pair in a network namespace of the benchmark's own. \
             The generator is an XDP program run with `BPF_PROG_TEST_RUN` and \
             `BPF_F_TEST_XDP_LIVE_FRAMES` (batches of 256) on one end: it writes the next IPv4 \
             source from a table of 65,536 into a 60-byte UDP frame, fixes the checksum and returns \
             `XDP_TX`, which transmits the frame to the other end, `vrx`. {listed} of the sources \
             lie in a listed network, the rest are random addresses no listed network covers. \
             The generator runs pinned to CPU 0. `vrx` has GRO on (so veth runs NAPI even with no \
             XDP program there) and threaded NAPI, its thread pinned to CPU 1 at real-time priority \
             (as softirq context would pre-empt tasks): the receiver under test has a core of its \
             own and does all its work there. It is one of: this filter attached to `vrx` in \
             native XDP mode; an nftables netdev-family ingress chain on `vrx` (`ip saddr @allow \
             counter accept; meta protocol ip counter drop`, the set holding the same prefixes as \
             intervals); iptables raw PREROUTING (`-i vrx -m set --match-set ... src -j ACCEPT`, \
             `-i vrx -j DROP`) with an ipset hash:net of the same prefixes, through each iptables \
             front end present ({iptables}); and three floors: an XDP program that counts and drops \
             everything without reading the frame, one that reads the IPv4 source (a volatile \
             load compared with the previous source, so it is not optimised away) before it \
             counts and drops — the least any filter must do, as it has to read the source, \
             and on veth that read is a cache miss on a page the generator's core just wrote \
             —, and an nftables ingress chain `counter drop`. Each counts what it judged, \
             and a figure is frames judged per second of wall-clock time. All receivers take turns \
             within each run.\n\n\
             The generator offers more than any filtering receiver takes, so veth's 256-frame \
             ring overflows and the receiver runs saturated: the figure is its capacity on one \
             core. Where a receiver lost under 1% at the ring it kept up with the generator, and \
             its figure is only a lower bound (marked ≥). Every receiver here also pays for \
             returning each frame's page to the generator's page pool on the other core (in \
             `perf`, taken while this benchmark was written, `page_pool_put_unrefed_netmem` and \
             its spinlock took a large share of the receiver's core); a NIC driver recycles its \
             pages locally, so absolute rates are lower \
             than on hardware, and ratios are closer to 1 than they would be there.\n\n",
            iptables = r.note("drop_rate.iptables").unwrap_or("?"),
        );
        doc.push_str(&self.drop_rate_table("drop_rate"));
        doc.push_str(
            "\n### The same with a provider-shaped list\n\nThe list of the largest size \
             clustered as a cloud provider's published ranges are (section 1's \
             provider-shaped lists); unlisted sources are random addresses it does not \
             cover, as above.\n\n",
        );
        doc.push_str(&self.drop_rate_table("drop_rate.clustered"));

        doc.push_str("\n## 3. Apply time\n\n");
        doc.push_str(
            "**Method.** The release `allowlistd` runs as in production, in a network namespace \
             of its own guarding a veth, with its socket, state and pins in private places, and \
             a list of N IPv4 networks (mixed lengths) imported. A whole new list is another N \
             networks, none shared: `allowlistctl import FILE --replace`, three lists taken in \
             turn after two unmeasured imports, so the idle slot the new list is written into \
             always holds a list sharing nothing with it (with two lists taking turns it would \
             hold the new one already). \"Until the kernel \
             judges by it\" is observed from outside: a thread reads the pinned CONTROL record \
             every 200 µs and notes when the active slot flips, measured from the start of \
             `allowlistctl`; the command itself returns later (the daemon waits out packets in flight on \
             the old slot and writes its state file first). One added entry is written into the \
             active slot in place, \
             without a flip: for it the thread notes when the host appears in the active slot's \
             hash of listed hosts. The kernel layer alone (`Filter::apply` called in the \
             benchmark process, no CLI, socket, checks or state) shows how much of it is map \
             writes. Against: `nft -f` of a file that flushes an interval set holding the old \
             list and adds the new one (one transaction); `ipset restore` of a new hash:net set, \
             `swap` with the live one and `destroy` of the old, in one restore. Each size is \
             measured again with provider-shaped lists (section 1), for the daemon, the \
             kernel layer and ipset (a new daemon; the ratio to ipset is taken run by run). One incremental \
             add: `allowlistctl add`, `nft add element`, `ipset add` of one address into the \
             list of N. Times include starting the command-line tool.\n\n",
        );
        doc.push_str(&self.apply_table());

        doc.push_str("\n## 4. Memory\n\n");
        doc.push_str(
            "**Method.** After the imports of section 3: the daemon's `VmRSS` and peak `VmHWM` \
             from `/proc/PID/status`, and the kernel's own accounting of the daemon's maps \
             (`memlock` in each pinned map's fdinfo: the lookup maps — both slots of both \
             families' screens, host hashes and tries — and all maps including the flow \
             table). Screens (8 MiB) and the host hashes' bucket arrays (40 MiB) are sized by \
             capacity, so they are there at any list size; the kernel counts one trie node or \
             hash element per entry, and the trie's intermediate nodes come on top. ipset's \"Size in memory\" of a hash:net of \
             the same prefixes is there for comparison.\n\n",
        );
        doc.push_str(&self.memory_table());

        doc.push_str("\n## 5. Config load\n\n");
        doc.push_str(
            "**Method.** A config file of N `[[allow]]` entries (IPv4 networks of mixed lengths, \
             each with a description, as in section 3) is read by the release \
             `allowlistd --config FILE check`, which does everything a start does before it \
             touches the kernel: parse the TOML, validate every entry with its line number, \
             refuse duplicates, read the saved state and compile the list. Wall time of the \
             whole command, and its peak resident set (`ru_maxrss`).\n\n",
        );
        doc.push_str(&self.config_table());

        doc.push_str("\n## Missed targets: why, and what would close them\n\n");
        doc.push_str(ANALYSES_NOTE);
        let missed = self.missed_topics();
        if missed.is_empty() {
            doc.push_str("None: every target measured in this run is met.\n\n");
        }
        for &topic in &missed {
            doc.push_str(&self.topic_section(topic, analyses));
        }
        doc.push_str(
            "## The other targets' analyses\n\n\
             Targets met (or not measured) in this run: what was written when a run missed \
             them, kept for when one is missed again.\n\n",
        );
        for topic in Topic::ALL {
            if !missed.contains(&topic) {
                doc.push_str(&self.topic_section(topic, analyses));
            }
        }
        doc.truncate(doc.trim_end().len());
        doc.push('\n');
        doc
    }

    // ---- targets -------------------------------------------------------------------

    fn targets(&self) -> Vec<Target> {
        let mut targets = vec![Target {
            what: "drop rate ≥ 3× nftables (interval set) at 100k prefixes".into(),
            key: "drop_rate.100000.ratio.allowlist_vs_nft_set".into(),
            goal: Goal::AtLeast(3.0),
            show: times,
            topic: Topic::DropRate,
        }];
        for (key, name) in [
            ("iptables_legacy_ipset", "iptables-legacy"),
            ("iptables_nft_ipset", "iptables-nft"),
        ] {
            targets.push(Target {
                what: format!("drop rate ≥ 3× ipset ({name} raw + hash:net) at 100k prefixes"),
                key: format!("drop_rate.100000.ratio.allowlist_vs_{key}"),
                goal: Goal::AtLeast(3.0),
                show: times,
                topic: Topic::DropRate,
            });
        }
        targets.push(Target {
            what: "unlisted drop rate at 100k random prefixes, return traffic on, ≥ 50% of \
                   the floor that reads the source"
                .into(),
            key: "drop_rate.100000.ratio.allowlist_vs_xdp_read_drop".into(),
            goal: Goal::AtLeast(0.5),
            show: percent,
            topic: Topic::DropRate,
        });
        for (shape, name) in SHAPES {
            for which in ["listed", "unlisted"] {
                targets.push(Target {
                    what: format!("per-packet cost at 1M ≤ 2× at 100 entries: {name}, {which}"),
                    key: format!("per_packet.{shape}.ratio_1000000_vs_100.{which}"),
                    goal: Goal::AtMost(2.0),
                    show: times,
                    topic: Topic::PerPacketGrowth,
                });
            }
        }
        targets.extend([
            Target {
                what: "apply a whole new list of 100k ≤ 100 ms (until the kernel judges by it)"
                    .into(),
                key: "apply.100000.allowlist.replace_judged".into(),
                goal: Goal::AtMost(0.1),
                show: seconds,
                topic: Topic::ApplyWhole,
            },
            Target {
                what: "apply a whole new list of 1M ≤ 1 s (until the kernel judges by it)".into(),
                key: "apply.1000000.allowlist.replace_judged".into(),
                goal: Goal::AtMost(1.0),
                show: seconds,
                topic: Topic::ApplyWhole,
            },
            Target {
                what: "a whole new list of 100k faster than `ipset restore` + `swap` in the \
                       same run (time over ipset's)"
                    .into(),
                key: "apply.100000.ratio.allowlist_judged_vs_ipset".into(),
                goal: Goal::AtMost(1.0),
                show: times,
                topic: Topic::ApplyWhole,
            },
            Target {
                what: "a whole new list of 1M faster than `ipset restore` + `swap` in the \
                       same run (time over ipset's)"
                    .into(),
                key: "apply.1000000.ratio.allowlist_judged_vs_ipset".into(),
                goal: Goal::AtMost(1.0),
                show: times,
                topic: Topic::ApplyWhole,
            },
            Target {
                what: "`allowlistctl import --replace` of 1M ≤ 2 s (until the command returns)"
                    .into(),
                key: "apply.1000000.allowlist.replace_returned".into(),
                goal: Goal::AtMost(2.0),
                show: seconds,
                topic: Topic::ApplyWhole,
            },
            Target {
                what: "one incremental add at 1M ≤ 5 ms (until the kernel judges by it)".into(),
                key: "apply.1000000.allowlist.add_judged".into(),
                goal: Goal::AtMost(0.005),
                show: seconds,
                topic: Topic::ApplyIncremental,
            },
            Target {
                what: "a config of 1M entries loaded and validated ≤ 10 s (`allowlistd check`)"
                    .into(),
                key: "config.1000000.check".into(),
                goal: Goal::AtMost(10.0),
                show: seconds,
                topic: Topic::ConfigLoad,
            },
            Target {
                what: "daemon RSS ≤ 64 MiB at 1M entries".into(),
                key: "memory.1000000.allowlistd.rss".into(),
                goal: Goal::AtMost(64.0),
                show: mib,
                topic: Topic::Memory,
            },
            Target {
                what: "daemon peak RSS (VmHWM) ≤ 128 MiB at 1M entries".into(),
                key: "memory.1000000.allowlistd.rss_peak".into(),
                goal: Goal::AtMost(128.0),
                show: mib,
                topic: Topic::Memory,
            },
        ]);
        targets
    }

    /// (met, text) for a target, or None when the run did not measure it.
    fn verdict(&self, target: &Target) -> Option<(bool, String)> {
        let value = self.results.median(&target.key)?;
        Some(match target.goal {
            Goal::AtLeast(goal) if value >= goal => (true, "met".into()),
            Goal::AtLeast(goal) => (
                false,
                format!(
                    "**missed**: {:.0}% of the target ({} short)",
                    value / goal * 100.0,
                    (target.show)(goal - value)
                ),
            ),
            Goal::AtMost(goal) if value <= goal => (true, "met".into()),
            Goal::AtMost(goal) => {
                let over = value / goal;
                let over = if over < 10.0 {
                    format!("{over:.2}")
                } else {
                    format!("{over:.0}")
                };
                (false, format!("**missed**: {over}× the target"))
            }
        })
    }

    fn targets_table(&self) -> String {
        let mut table = String::from(
            "| target | measured (median) | range over runs | verdict |\n|---|---:|---:|---|\n",
        );
        for target in self.targets() {
            let (measured, range, verdict) =
                match (self.results.figure(&target.key), self.verdict(&target)) {
                    (Some(figure), Some((_, verdict))) => (
                        (target.show)(figure.median),
                        if figure.runs > 1 {
                            format!(
                                "{} – {}",
                                (target.show)(figure.min),
                                (target.show)(figure.max)
                            )
                        } else {
                            "1 run".into()
                        },
                        verdict,
                    ),
                    _ => ("—".into(), "".into(), "not measured in this run".into()),
                };
            let _ = writeln!(
                table,
                "| {} | {measured} | {range} | {verdict} |",
                target.what
            );
        }
        table
    }

    // ---- tables ----------------------------------------------------------------------

    fn per_packet_sizes(&self) -> Vec<usize> {
        let mut sizes: Vec<usize> = self
            .results
            .keys_with_prefix("per_packet.v4_dense32.")
            .filter_map(|key| key.split('.').nth(2)?.parse().ok())
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    fn per_packet_table(&self) -> String {
        let r = self.results;
        let mut table = String::from(
            "| list | prefixes | listed source | unlisted source | published: plain LPM trie, dense /32 |\n\
             |---|---:|---:|---:|---:|\n",
        );
        for (shape, name) in SHAPES {
            for size in self.per_packet_sizes() {
                let cell = |which: &str| {
                    r.median(&format!("per_packet.{shape}.{size}.{which}"))
                        .map(nanos)
                        .unwrap_or_else(|| "—".into())
                };
                let published = PUBLISHED_LPM_NS
                    .iter()
                    .find(|(n, _)| shape == "v4_dense32" && *n == size)
                    .map(|(_, ns)| format!("~{ns:.0} ns"))
                    .unwrap_or_default();
                let _ = writeln!(
                    table,
                    "| {name} | {} | {} | {} | {published} |",
                    count(size),
                    cell("listed"),
                    cell("unlisted")
                );
            }
        }
        if let Some(noop) = r.median("per_packet.noop") {
            let _ = writeln!(
                table,
                "| floor: no-op XDP program | — | {} | {} | |",
                nanos(noop),
                nanos(noop)
            );
        }
        table.push_str(
            "\nUnlisted source at 1M with `return_traffic` and `dhcp_client` off (no flow \
             lookup), and with dropped sources recorded for `allowlistctl top` (one LRU \
             update per drop):\n\n| list | unlisted, default | unlisted, features off | \
             unlisted, recording drops |\n|---|---:|---:|---:|\n",
        );
        for (shape, name) in SHAPES {
            if let (Some(on), Some(off)) = (
                r.median(&format!("per_packet.{shape}.1000000.unlisted")),
                r.median(&format!(
                    "per_packet.{shape}.1000000.unlisted_no_return_traffic"
                )),
            ) {
                let recording = r
                    .median(&format!(
                        "per_packet.{shape}.1000000.unlisted_recording_drops"
                    ))
                    .map(nanos)
                    .unwrap_or_else(|| "—".into());
                let _ = writeln!(
                    table,
                    "| {name} | {} | {} | {recording} |",
                    nanos(on),
                    nanos(off)
                );
            }
        }
        table.push_str(
            "\nGrowth, 1M against 100 prefixes (target ≤ 2×):\n\n\
             | list | listed | unlisted |\n|---|---:|---:|\n",
        );
        for (shape, name) in SHAPES {
            let cell = |which: &str| {
                r.median(&format!("per_packet.{shape}.ratio_1000000_vs_100.{which}"))
                    .map(times)
                    .unwrap_or_else(|| "—".into())
            };
            let _ = writeln!(
                table,
                "| {name} | {} | {} |",
                cell("listed"),
                cell("unlisted")
            );
        }
        table
    }

    /// The list sizes measured under `base` (`drop_rate` or `drop_rate.clustered`).
    fn drop_rate_sizes(&self, base: &str) -> Vec<usize> {
        let prefix = format!("{base}.");
        let mut sizes: Vec<usize> = self
            .results
            .keys_with_prefix(&prefix)
            .filter_map(|key| key[prefix.len()..].split('.').next()?.parse().ok())
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    /// The tables of the drop-rate figures under `base`: `drop_rate` (random lists) or
    /// `drop_rate.clustered` (provider-shaped ones).
    fn drop_rate_table(&self, base: &str) -> String {
        let r = self.results;
        let sizes = self.drop_rate_sizes(base);
        let mut table = String::from("| receiver |");
        for size in &sizes {
            let _ = write!(table, " {} prefixes: Mpps (ns/packet) |", count(*size));
        }
        table.push_str("\n|---|");
        table.push_str(&"---:|".repeat(sizes.len()));
        table.push('\n');
        for (key, name) in RECEIVERS {
            if r.median(&format!(
                "{base}.{}.{key}.mpps",
                sizes.first().copied().unwrap_or(0)
            ))
            .is_none()
            {
                continue;
            }
            let _ = write!(table, "| {name} |");
            for size in &sizes {
                let figure = |what: &str| r.median(&format!("{base}.{size}.{key}.{what}"));
                match (figure("mpps"), figure("ns"), figure("lost_at_ring")) {
                    (Some(mpps), Some(ns), Some(lost)) => {
                        let bound = if lost < 1.0 { "≥ " } else { "" };
                        let _ = write!(table, " {bound}{mpps:.2} ({ns:.0} ns) |");
                    }
                    _ => table.push_str(" — |"),
                }
            }
            table.push('\n');
        }
        table.push_str("\nThis filter against each, within each run:\n\n| against |");
        for size in &sizes {
            let _ = write!(table, " {} |", count(*size));
        }
        table.push_str("\n|---|");
        table.push_str(&"---:|".repeat(sizes.len()));
        table.push('\n');
        for (key, name) in RECEIVERS
            .iter()
            .filter(|(key, _)| !key.starts_with("allowlist"))
        {
            let _ = write!(table, "| {name} |");
            for size in &sizes {
                let cell = r
                    .median(&format!("{base}.{size}.ratio.allowlist_vs_{key}"))
                    .map(times)
                    .unwrap_or_else(|| "—".into());
                let _ = write!(table, " {cell} |");
            }
            table.push('\n');
        }
        table.push_str(
            "\nShare of the offered frames veth dropped at the receiver's full ring (the \
             receiver was saturated):\n\n| receiver |",
        );
        for size in &sizes {
            let _ = write!(table, " {} |", count(*size));
        }
        table.push_str("\n|---|");
        table.push_str(&"---:|".repeat(sizes.len()));
        table.push('\n');
        for (key, name) in RECEIVERS {
            let _ = write!(table, "| {name} |");
            for size in &sizes {
                let cell = r
                    .median(&format!("{base}.{size}.{key}.lost_at_ring"))
                    .map(|lost| format!("{lost:.0}%"))
                    .unwrap_or_else(|| "—".into());
                let _ = write!(table, " {cell} |");
            }
            table.push('\n');
        }
        table
    }

    fn apply_table(&self) -> String {
        let r = self.results;
        let sizes = [100_000usize, 1_000_000];
        // (row, key after `apply.[clustered.]N.`, published, provider-shaped list)
        let rows: [(&str, &str, &str, bool); 16] = [
            (
                "allowlistctl import --replace: until the kernel judges by it",
                "allowlist.replace_judged",
                "",
                false,
            ),
            (
                "allowlistctl import --replace: until the command returns",
                "allowlist.replace_returned",
                "",
                false,
            ),
            (
                "kernel layer alone (`Filter::apply`): until the flip",
                "filter_apply.replace_judged",
                "",
                false,
            ),
            (
                "kernel layer alone (`Filter::apply`): until it returns",
                "filter_apply.replace_returned",
                "",
                false,
            ),
            (
                "`nft -f` (flush set + add element, one transaction)",
                "nft.replace",
                "≈ 4 s at 100k",
                false,
            ),
            (
                "`ipset restore` + `swap` + `destroy`",
                "ipset.replace",
                "",
                false,
            ),
            (
                "until the kernel judges, over `ipset restore` + `swap` (run by run)",
                "ratio.allowlist_judged_vs_ipset",
                "",
                false,
            ),
            (
                "provider-shaped: allowlistctl import --replace, until the kernel judges by it",
                "allowlist.replace_judged",
                "",
                true,
            ),
            (
                "provider-shaped: allowlistctl import --replace, until the command returns",
                "allowlist.replace_returned",
                "",
                true,
            ),
            (
                "provider-shaped: kernel layer alone, until the flip",
                "filter_apply.replace_judged",
                "",
                true,
            ),
            (
                "provider-shaped: `ipset restore` + `swap` + `destroy`",
                "ipset.replace",
                "",
                true,
            ),
            (
                "provider-shaped: until the kernel judges, over `ipset restore` + `swap`",
                "ratio.allowlist_judged_vs_ipset",
                "",
                true,
            ),
            (
                "one add: `allowlistctl add`, until the kernel judges by it",
                "allowlist.add_judged",
                "",
                false,
            ),
            (
                "one add: `allowlistctl add`, until the command returns",
                "allowlist.add_returned",
                "",
                false,
            ),
            ("one add: `nft add element`", "nft.add", "", false),
            ("one add: `ipset add`", "ipset.add", "", false),
        ];
        let mut table = String::from("| | 100k | 1M | published |\n|---|---:|---:|---:|\n");
        for (name, key, published, clustered) in rows {
            let _ = write!(table, "| {name} |");
            let show: fn(f64) -> String = if key.starts_with("ratio.") {
                times
            } else {
                seconds
            };
            for size in sizes {
                let key = if clustered {
                    format!("apply.clustered.{size}.{key}")
                } else {
                    format!("apply.{size}.{key}")
                };
                let cell = match r.figure(&key) {
                    Some(figure) if figure.runs > 1 => show(figure.median),
                    Some(figure) => format!("{} (1 run)", show(figure.median)),
                    None if key.contains(".nft.") => r
                        .note(&format!("apply.{size}.nft"))
                        .map(|_| "skipped (--quick)".to_string())
                        .unwrap_or_else(|| "—".into()),
                    None => "—".into(),
                };
                let _ = write!(table, " {cell} |");
            }
            let _ = writeln!(table, " {published} |");
        }
        if let Some(figure) = r.figure("apply.1000000.allowlist.replace_judged") {
            let _ = writeln!(
                table,
                "\nRuns per figure at 1M: {} (at 100k: as stated at the top).",
                figure.runs
            );
        }
        table
    }

    fn memory_table(&self) -> String {
        let r = self.results;
        let rows = [
            ("allowlistd resident set (VmRSS)", "allowlistd.rss"),
            (
                "allowlistd peak resident set (VmHWM)",
                "allowlistd.rss_peak",
            ),
            (
                "kernel: lookup maps (screens, host hashes, tries; 2 slots × 2 families)",
                "kernel.tries",
            ),
            ("kernel: all of the daemon's maps", "kernel.all_maps"),
            (
                "for comparison: ipset hash:net of the same prefixes",
                "ipset",
            ),
        ];
        let mut table = String::from("| | 100k | 1M |\n|---|---:|---:|\n");
        for (name, key) in rows {
            let _ = write!(table, "| {name} |");
            for size in [100_000, 1_000_000] {
                let cell = r
                    .median(&format!("memory.{size}.{key}"))
                    .map(mib)
                    .unwrap_or_else(|| "—".into());
                let _ = write!(table, " {cell} |");
            }
            table.push('\n');
        }
        table
    }

    fn config_table(&self) -> String {
        let r = self.results;
        let mut table = String::from("| | 100k | 1M |\n|---|---:|---:|\n");
        for (name, key, show) in [
            ("file size", "bytes", mib as fn(f64) -> String),
            ("`allowlistd check`: wall time", "check", seconds),
            (
                "`allowlistd check`: peak resident set",
                "check_rss_peak",
                mib,
            ),
        ] {
            let _ = write!(table, "| {name} |");
            for size in [100_000, 1_000_000] {
                let key = format!("config.{size}.{key}");
                let value = r.median(&key).or_else(|| {
                    r.note(&key)
                        .and_then(|bytes| bytes.parse::<f64>().ok())
                        .map(|bytes| bytes / (1024.0 * 1024.0))
                });
                let cell = value.map(show).unwrap_or_else(|| "—".into());
                let _ = write!(table, " {cell} |");
            }
            table.push('\n');
        }
        table
    }

    // ---- explanations ------------------------------------------------------------------

    /// Topics with a missed target, in the order of their targets.
    fn missed_topics(&self) -> Vec<Topic> {
        let mut topics = Vec::new();
        for target in self.targets() {
            let missed = matches!(self.verdict(&target), Some((false, _)));
            if missed && !topics.contains(&target.topic) {
                topics.push(target.topic);
            }
        }
        topics
    }

    /// A topic's heading, its missed targets, the figures its analysis rests on, and the
    /// analysis.
    fn topic_section(&self, topic: Topic, analyses: &Analyses) -> String {
        let mut out = format!("### {}\n\n", topic.title());
        let targets = self.targets();
        let missed: Vec<String> = targets
            .iter()
            .filter(|t| t.topic == topic)
            .filter_map(|t| match self.verdict(t) {
                Some((false, verdict)) => Some(format!(
                    "- {}: {} — {}\n",
                    t.what,
                    (t.show)(self.results.median(&t.key)?),
                    verdict.replace("**", "")
                )),
                _ => None,
            })
            .collect();
        if !missed.is_empty() {
            out.push_str(&missed.concat());
            out.push('\n');
        }
        let _ = write!(
            out,
            "Figures of this run: {}\n\n{}\n\n",
            self.figures(topic),
            analyses.block(topic.key())
        );
        out
    }

    /// The figures of this run a topic's analysis rests on, as a sentence.
    fn figures(&self, topic: Topic) -> String {
        let r = self.results;
        let fig = |key: &str, show: fn(f64) -> String| {
            r.median(key).map(show).unwrap_or_else(|| "—".into())
        };
        match topic {
            Topic::DropRate => format!(
                "at 100k prefixes this filter judged {ours} on its core, {plain} with \
                 `return_traffic` and `dhcp_client` off (no flow lookup); the floor that reads \
                 the source {read} (it lost {read_lost} at the ring), the XDP drop-all floor \
                 {floor}, nftables {nft}, iptables-legacy + ipset {ipset}; with the \
                 provider-shaped list this filter judged {clustered}. In cache (section 1, \
                 IPv4 mixed, 100k), an unlisted packet costs {warm}.",
                ours = fig("drop_rate.100000.allowlist.mpps", mpps),
                plain = fig("drop_rate.100000.allowlist_no_return_traffic.mpps", mpps),
                read = fig("drop_rate.100000.xdp_read_drop.mpps", mpps),
                read_lost = r
                    .median("drop_rate.100000.xdp_read_drop.lost_at_ring")
                    .map(|lost| format!("{lost:.0}%"))
                    .unwrap_or_else(|| "—".into()),
                clustered = fig("drop_rate.clustered.100000.allowlist.mpps", mpps),
                floor = fig("drop_rate.100000.xdp_drop_all.mpps", mpps),
                nft = fig("drop_rate.100000.nft_set.mpps", mpps),
                ipset = fig("drop_rate.100000.iptables_legacy_ipset.mpps", mpps),
                warm = fig("per_packet.v4_mixed.100000.unlisted", nanos),
            ),
            Topic::PerPacketGrowth => format!(
                "a listed source costs {d100} at 100 entries and {d1m} at 1M in the dense /32 \
                 list (the published plain trie: {p100} and {p1m}), {m100} and {m1m} in the \
                 IPv4 mixed one; the no-op floor is {noop}.",
                d100 = fig("per_packet.v4_dense32.100.listed", nanos),
                d1m = fig("per_packet.v4_dense32.1000000.listed", nanos),
                p100 = published_lpm(100),
                p1m = published_lpm(1_000_000),
                m100 = fig("per_packet.v4_mixed.100.listed", nanos),
                m1m = fig("per_packet.v4_mixed.1000000.listed", nanos),
                noop = fig("per_packet.noop", nanos),
            ),
            Topic::ApplyWhole => format!(
                "a whole new list of 1M reached the kernel after {judged1m} ({judged100} at \
                 100k) and the command returned after {ret1m}; the kernel layer alone flipped \
                 after {lib1m} ({lib100} at 100k), about {per_entry} for each of the 2M map \
                 writes before the flip (1M deletes, 1M inserts); `ipset restore` + `swap` \
                 took {ipset1m} ({ipset100} at 100k).",
                ipset1m = fig("apply.1000000.ipset.replace", seconds),
                ipset100 = fig("apply.100000.ipset.replace", seconds),
                judged1m = fig("apply.1000000.allowlist.replace_judged", seconds),
                judged100 = fig("apply.100000.allowlist.replace_judged", seconds),
                ret1m = fig("apply.1000000.allowlist.replace_returned", seconds),
                lib1m = fig("apply.1000000.filter_apply.replace_judged", seconds),
                lib100 = fig("apply.100000.filter_apply.replace_judged", seconds),
                per_entry = r
                    .median("apply.1000000.filter_apply.replace_judged")
                    .map(|s| format!("{:.1} µs", s / 2e6 * 1e6))
                    .unwrap_or_else(|| "—".into()),
            ),
            Topic::ApplyIncremental => format!(
                "one add to a list of 1M reached the kernel after {judged} and the command \
                 returned after {returned}; `nft add element` took {nft100} at 100k{nft1m}, \
                 `ipset add` {ipset} at 1M.",
                judged = fig("apply.1000000.allowlist.add_judged", seconds),
                returned = fig("apply.1000000.allowlist.add_returned", seconds),
                nft100 = fig("apply.100000.nft.add", seconds),
                nft1m = r
                    .median("apply.1000000.nft.add")
                    .map(|s| format!(" and {} at 1M", seconds(s)))
                    .unwrap_or_default(),
                ipset = fig("apply.1000000.ipset.add", seconds),
            ),
            Topic::Memory => format!(
                "with 1M entries the daemon's resident set is {rss} (peak {peak}), against \
                 {tries} in the kernel for the lookup maps.",
                rss = fig("memory.1000000.allowlistd.rss", mib),
                peak = fig("memory.1000000.allowlistd.rss_peak", mib),
                tries = fig("memory.1000000.kernel.tries", mib),
            ),
            Topic::ConfigLoad => format!(
                "`allowlistd check` of 1M entries took {took}, with a peak resident set of \
                 {peak}.",
                took = fig("config.1000000.check", seconds),
                peak = fig("config.1000000.check_rss_peak", mib),
            ),
        }
    }
}

/// The published per-packet cost of the plain LPM trie at `entries`, as the report shows it.
fn published_lpm(entries: usize) -> String {
    PUBLISHED_LPM_NS
        .iter()
        .find(|(n, _)| *n == entries)
        .map(|(_, ns)| format!("~{ns:.0} ns"))
        .unwrap_or_else(|| "—".into())
}

// ---- formatting ---------------------------------------------------------------------

fn nanos(value: f64) -> String {
    format!("{value:.0} ns")
}

fn mpps(value: f64) -> String {
    format!("{value:.2} Mpps")
}

fn times(value: f64) -> String {
    format!("{value:.2}×")
}

fn percent(value: f64) -> String {
    format!("{:.0}%", value * 100.0)
}

fn mib(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0} MiB")
    } else {
        format!("{value:.1} MiB")
    }
}

fn seconds(value: f64) -> String {
    if value < 0.01 {
        format!("{:.1} ms", value * 1e3)
    } else if value < 1.0 {
        format!("{:.0} ms", value * 1e3)
    } else {
        format!("{value:.2} s")
    }
}

fn count(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_units() {
        assert_eq!(seconds(0.0042), "4.2 ms");
        assert_eq!(seconds(0.665), "665 ms");
        assert_eq!(seconds(7.135), "7.13 s");
        assert_eq!(count(100_000), "100k");
        assert_eq!(count(1_000_000), "1M");
        assert_eq!(percent(0.064), "6%");
    }

    fn machine() -> Machine {
        Machine {
            date: "2026-01-01 00:00 UTC".into(),
            kernel: "6.1".into(),
            cpu: "a CPU".into(),
            cpus: 2,
            memory: "8.0 GiB".into(),
            virtualization: "none detected".into(),
            commit: "abc1234".into(),
            tools: Vec::new(),
        }
    }

    #[test]
    fn rewriting_benchmarks_md_carries_every_analysis_over_unchanged() {
        // A run that misses the memory target and meets the config-load one.
        let results = Results::parse(
            "figure\tmemory.1000000.allowlistd.rss\tMiB\t633\t633\t633\t1\n\
             figure\tconfig.1000000.check\ts\t3.7\t3.6\t4.3\t5\n",
        )
        .unwrap();
        let earlier = "# Benchmarks\n\nold figures\n\n\
            <!-- analysis:memory -->\n**Why.** Entries, *twice*.\n<!-- /analysis -->\n\
            <!-- analysis:config-load -->\nTOML builds a document.\n<!-- /analysis -->\n";
        let analyses = Analyses::parse(earlier).unwrap();
        let machine = machine();
        let written = Report::new(&results, &machine, false).markdown(&analyses);

        let rewritten = Analyses::parse(&written).unwrap();
        for topic in Topic::ALL {
            assert_eq!(
                rewritten.block(topic.key()),
                analyses.block(topic.key()),
                "{}",
                topic.key()
            );
        }
        // The missed target's analysis sits under the missed targets, after this run's
        // figures; the met one's with the others.
        let missed = written.find("## Missed targets").unwrap();
        let others = written.find("## The other targets' analyses").unwrap();
        let figures = written.find("resident set is 633 MiB").unwrap();
        let memory = written.find("**Why.** Entries, *twice*.").unwrap();
        let config = written.find("TOML builds a document.").unwrap();
        assert!(
            missed < figures && figures < memory && memory < others,
            "{written}"
        );
        assert!(others < config, "{written}");
        // Written again from its own output, the file does not change.
        assert_eq!(
            Report::new(&results, &machine, false).markdown(&rewritten),
            written
        );
    }

    #[test]
    fn the_committed_benchmarks_md_has_an_analysis_for_every_topic() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
        let analyses = Analyses::read(&path).unwrap();
        check_analyses(&analyses).unwrap();
        for topic in Topic::ALL {
            assert!(
                !analyses.block(topic.key()).contains("Not analysed yet"),
                "BENCHMARKS.md has no analysis {:?}",
                topic.key()
            );
        }
    }
}
