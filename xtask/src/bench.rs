//! `cargo xtask bench [--quick] [--only SECTION]...`: measures the filter side by side
//! with nftables and iptables + ipset, prints the tables and writes BENCHMARKS.md (not
//! with `--only`: a report of some sections would blank the others).
//!
//! The measuring is done by `tests/examples/bench` (it links the daemon's library, which
//! xtask must not: xtask builds before bpf-linker exists). xtask sets up, builds it and
//! the release daemon, runs it, and turns the figures it records into the report.

mod analysis;
mod report;
mod results;

use std::{fs, process::Command};

use anyhow::{Context as _, Result};

use crate::{process, setup, sys, workspace};

use results::Results;

/// Facts about the machine and the run that the report states.
pub struct Machine {
    pub date: String,
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub memory: String,
    pub virtualization: String,
    pub commit: String,
    pub tools: Vec<(&'static str, String)>,
}

pub fn bench(quick: bool, only: &[String]) -> Result<()> {
    sys::require_root(
        "cargo xtask bench",
        "it loads XDP programs, creates network namespaces and runs nft, ipset and iptables",
    )?;
    // Read first: a file whose hand-written analyses could not be carried over stops the
    // run here, not after ten minutes of measuring.
    let path = workspace::root().join("BENCHMARKS.md");
    let analyses = analysis::Analyses::read(&path)?;
    report::check_analyses(&analyses)?;
    sys::catch_interrupts();
    setup::setup()?;
    workspace::build_userspace(true)?;
    build_release_example("bench")?;

    let out_dir = workspace::target_dir().join("bench");
    fs::create_dir_all(&out_dir)?;
    let raw = out_dir.join(match (only.is_empty(), quick) {
        (false, _) => "results-only.tsv",
        (true, true) => "results-quick.tsv",
        (true, false) => "results.tsv",
    });
    let bin_dir = workspace::bin_dir(true);
    let mut runner = Command::new(bin_dir.join("examples").join("bench"));
    runner.arg("--out").arg(&raw).arg("--bin-dir").arg(&bin_dir);
    if quick {
        runner.arg("--quick");
    }
    for section in only {
        runner.arg("--only").arg(section);
    }
    // Gathered first: the date is when the run started.
    let machine = machine()?;
    let ran = process::run(&mut runner);
    if sys::interrupted() {
        anyhow::bail!("interrupted; BENCHMARKS.md is unchanged");
    }
    ran.context("the benchmark run failed; BENCHMARKS.md is unchanged")?;

    let results = Results::read(&raw)?;
    let report = report::Report::new(&results, &machine, quick);
    println!("\n{}", report.console());
    if !only.is_empty() {
        println!(
            "BENCHMARKS.md is unchanged (--only); raw figures: {}",
            raw.display()
        );
        return Ok(());
    }
    fs::write(&path, report.markdown(&analyses))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {} (raw figures: {})", path.display(), raw.display());
    Ok(())
}

/// Rewrites BENCHMARKS.md from the figures in `raw`, recorded by an earlier run (the
/// machine facts are taken now: run it on the machine and commit that measured).
pub fn report_from(raw: &std::path::Path) -> Result<()> {
    let path = workspace::root().join("BENCHMARKS.md");
    let analyses = analysis::Analyses::read(&path)?;
    report::check_analyses(&analyses)?;
    let results = Results::read(raw)?;
    let quick = results.note("mode") == Some("quick");
    let machine = machine()?;
    let report = report::Report::new(&results, &machine, quick);
    println!("\n{}", report.console());
    fs::write(&path, report.markdown(&analyses))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {} (from {})", path.display(), raw.display());
    Ok(())
}

/// `cargo xtask bench --fleet`: builds the release daemon and `tests/examples/fleet_bench`
/// and runs it; its table goes to standard output (and the Fleet section of
/// BENCHMARKS.md is written by hand from it: the main report does not run it).
pub fn fleet(hosts: &str, sizes: &str, rounds: usize) -> Result<()> {
    sys::require_root(
        "cargo xtask bench --fleet",
        "it loads XDP programs and creates network namespaces",
    )?;
    sys::catch_interrupts();
    setup::setup()?;
    workspace::build_userspace(true)?;
    build_release_example("fleet_bench")?;
    let bin_dir = workspace::bin_dir(true);
    let mut runner = Command::new(bin_dir.join("examples").join("fleet_bench"));
    runner
        .arg("--bin-dir")
        .arg(&bin_dir)
        .args(["--hosts", hosts, "--sizes", sizes, "--rounds"])
        .arg(rounds.to_string());
    process::run(&mut runner).context("the fleet benchmark failed")
}

fn machine() -> Result<Machine> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
        .map(|(_, name)| name.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cpus = cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    let memory = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| {
            let kib: f64 = meminfo
                .lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(format!("{:.1} GiB", kib / (1024.0 * 1024.0)))
        })
        .unwrap_or_else(|| "unknown".into());
    let mut commit = first_line(Command::new("git").args(["rev-parse", "--short", "HEAD"]));
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(workspace::root())
        .output()
        .is_ok_and(|output| !output.stdout.is_empty());
    if dirty {
        commit.push_str(" (with uncommitted changes)");
    }
    let tools = [
        ("nft", &["nft", "--version"][..]),
        ("ipset", &["ipset", "--version"][..]),
        ("iptables-nft", &["iptables-nft", "--version"][..]),
        ("iptables-legacy", &["iptables-legacy", "--version"][..]),
        ("rustc", &["rustc", "--version"][..]),
    ]
    .into_iter()
    .map(|(name, command)| {
        (
            name,
            first_line(Command::new(command[0]).args(&command[1..])),
        )
    })
    .collect();
    Ok(Machine {
        date: first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
        kernel: first_line(Command::new("uname").arg("-r")),
        cpu,
        cpus,
        memory,
        virtualization: virtualization(),
        commit,
        tools,
    })
}

/// What `systemd-detect-virt` says (it names a container before a VM), and whether the
/// CPU reports a hypervisor.
fn virtualization() -> String {
    let mut facts = Vec::new();
    let detected = first_line(&mut Command::new("systemd-detect-virt"));
    if detected != "unknown" && detected != "none" {
        facts.push(format!("systemd-detect-virt: {detected}"));
    }
    let hypervisor =
        fs::read_to_string("/proc/cpuinfo").is_ok_and(|cpuinfo| cpuinfo.contains(" hypervisor"));
    if hypervisor {
        facts.push("the CPU reports a hypervisor (a virtual machine)".into());
    }
    if facts.is_empty() {
        "none detected".into()
    } else {
        facts.join("; ")
    }
}

/// The first line a command prints, or "unknown".
fn first_line(command: &mut Command) -> String {
    command
        .current_dir(workspace::root())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .next()
                .map(|line| line.trim().to_string())
        })
        .filter(|line| !line.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Builds the release example `name` of allowlist-tests (a benchmark runner).
fn build_release_example(name: &str) -> Result<()> {
    let mut build = workspace::cargo();
    build.args([
        "build",
        "--release",
        "-p",
        "allowlist-tests",
        "--example",
        name,
    ]);
    process::run(&mut build)
}
