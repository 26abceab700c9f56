//! The measuring half of `cargo xtask bench` (xtask builds and runs it, then writes the
//! tables and BENCHMARKS.md from what it recorded).
//!
//! ```text
//! cargo build --release -p allowlist-tests --example bench
//! target/release/examples/bench --out results.tsv --bin-dir target/release [--quick] [--only SECTION]...
//! ```
//!
//! Sections, in order: `per-packet` (BPF_PROG_TEST_RUN), `drop-rate` (veth, live frames),
//! `apply` (the daemon, `nft -f`, `ipset restore`) and memory with it, `config`
//! (`allowlistd check` of large config files). Needs root.
//! Everything it creates (network namespaces, pins under /sys/fs/bpf, daemons, temp
//! files) is named uniquely and removed on the way out, also on failure.

mod apply;
mod config_load;
mod drop_rate;
mod frames;
mod kernel;
mod lists;
mod per_packet;
mod results;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use results::Results;

pub struct Options {
    pub quick: bool,
    /// Runs per figure (each figure is their median).
    pub runs: usize,
    pub seed: u64,
    /// `repeat` of each BPF_PROG_TEST_RUN of the per-packet section.
    pub repeat: u32,
    pub per_packet_sizes: Vec<usize>,
    pub drop_rate_sizes: Vec<usize>,
    /// Seconds of traffic per drop-rate sample.
    pub drop_rate_seconds: f64,
    pub apply_sizes: Vec<usize>,
    /// Runs per apply figure at 1M entries (each is seconds long).
    pub runs_1m: usize,
    /// Largest list `nft -f` is timed with.
    pub nft_max_entries: usize,
    /// `[[allow]]` entries of the config files `allowlistd check` reads.
    pub config_sizes: Vec<usize>,
}

impl Options {
    fn new(quick: bool) -> Self {
        Options {
            quick,
            runs: if quick { 3 } else { 5 },
            seed: 0x616c_6c6f_776c_6973,
            repeat: 1_000_000,
            per_packet_sizes: vec![10, 100, 1_000, 100_000, 1_000_000],
            drop_rate_sizes: vec![1_000, 10_000, 100_000],
            drop_rate_seconds: if quick { 0.3 } else { 1.0 },
            apply_sizes: vec![100_000, 1_000_000],
            runs_1m: 3,
            nft_max_entries: if quick { 100_000 } else { 1_000_000 },
            config_sizes: vec![100_000, 1_000_000],
        }
    }
}

const SECTIONS: [&str; 4] = ["per-packet", "drop-rate", "apply", "config"];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Fails once Ctrl-C or SIGTERM has arrived, so the run stops at the next step and its
/// guards remove namespaces, pins and daemons on the way out.
pub use allowlist_tests::interrupt::check as check_interrupted;

fn run() -> Result<()> {
    allowlist_tests::interrupt::catch();
    let mut out = None;
    let mut bin_dir = None;
    let mut quick = false;
    let mut only = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--bin-dir" => {
                bin_dir = Some(PathBuf::from(args.next().context("--bin-dir needs a path")?))
            }
            "--out" => out = Some(PathBuf::from(args.next().context("--out needs a path")?)),
            "--only" => {
                let section = args.next().context("--only needs a section")?;
                if !SECTIONS.contains(&section.as_str()) {
                    bail!(
                        "unknown section {section}; sections: {}",
                        SECTIONS.join(", ")
                    );
                }
                only.push(section);
            }
            other => bail!(
                "unknown argument {other}; usage: bench --out FILE [--bin-dir DIR] [--quick] [--only SECTION]..."
            ),
        }
    }
    let out = out.context("--out FILE is required")?;
    let options = Options::new(quick);
    let mut results = Results::new(out);
    results.note("mode", if quick { "quick" } else { "full" })?;
    results.note("runs", &options.runs.to_string())?;
    let wanted = |section: &str| only.is_empty() || only.iter().any(|s| s == section);

    if wanted("per-packet") {
        note_load(&mut results, "per-packet")?;
        println!(
            "\n== 1. per-packet cost (BPF_PROG_TEST_RUN, repeat {})",
            options.repeat
        );
        per_packet::run(&options, &mut results)?;
    }
    if wanted("drop-rate") {
        note_load(&mut results, "drop-rate")?;
        println!("\n== 2. drop rate on veth (live frames)");
        drop_rate::run(&options, &mut results)?;
    }
    if wanted("apply") {
        note_load(&mut results, "apply")?;
        println!("\n== 3./4. apply time and memory");
        let bin_dir = bin_dir.as_ref().context(
            "--bin-dir DIR (where the release allowlistd and allowlistctl are) is required for apply",
        )?;
        apply::run(&options, &mut results, bin_dir)?;
    }
    if wanted("config") {
        note_load(&mut results, "config")?;
        println!("\n== 5. config load (allowlistd check)");
        let bin_dir = bin_dir
            .as_ref()
            .context("--bin-dir DIR (where the release allowlistd is) is required for config")?;
        config_load::run(&options, &mut results, bin_dir)?;
    }
    note_load(&mut results, "end")?;
    Ok(())
}

/// The machine's one-minute load average as a section starts: other work on the machine
/// shows here, and the report quotes it.
fn note_load(results: &mut Results, section: &str) -> Result<()> {
    let load = std::fs::read_to_string("/proc/loadavg")?;
    let one_minute = load.split_whitespace().next().unwrap_or("?");
    results.note(&format!("load.{section}"), one_minute)
}
