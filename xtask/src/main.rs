//! `cargo xtask`: the developer commands of the allowlist firewall.
//!
//! This crate deliberately depends on nothing of the project (only anyhow and clap): it has
//! to compile on a fresh machine before bpf-linker exists, because `cargo xtask setup` is
//! what installs bpf-linker.

mod bench;
mod demo;
mod fuzz;
mod libtest;
mod lint;
mod package;
mod process;
mod run;
mod setup;
mod summary;
mod sys;
mod test_suite;
mod vm;
mod workspace;

use std::{ffi::OsString, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer commands for the allowlist XDP firewall"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building, testing and packaging need (nightly rust-src, Debian tools,
    /// bpf-linker, cargo-fuzz, cargo-deb); skips what is already there
    Setup,
    /// Set up, then build allowlistd and allowlistctl (the XDP program is built into allowlistd)
    Build {
        /// Build with optimisations (target/release)
        #[arg(long)]
        release: bool,
    },
    /// Set up, make a release build and the Debian package from it
    /// (target/debian/allowlist_VERSION-1_ARCH.deb)
    Package,
    /// Set up, build, then run allowlistd (as root) with the arguments after `--`
    Run {
        /// Build and run the optimised daemon (target/release)
        #[arg(long)]
        release: bool,
        /// Arguments for allowlistd, e.g. `-- --config examples/allowlist.toml`
        #[arg(last = true, value_name = "ALLOWLISTD_ARGS")]
        args: Vec<OsString>,
    },
    /// Set up, build, lint, run the unit tests, build the Debian package, then run the
    /// integration tests (as root)
    Test {
        /// Threads for the integration tests (each test builds its own network namespaces)
        #[arg(long, default_value_t = 4, value_name = "N")]
        test_threads: usize,
        /// Extra arguments for the test binaries of both runs, e.g. `-- reload` as a name filter
        #[arg(last = true, value_name = "TEST_ARGS")]
        args: Vec<String>,
    },
    /// Show the filter at work between network namespaces (as root; real interfaces are
    /// never touched)
    Demo,
    /// Measure the filter against nftables and iptables + ipset (as root), print the tables
    /// and write BENCHMARKS.md; about 10 minutes
    Bench {
        /// Fewer runs and shorter samples: a few minutes
        #[arg(long)]
        quick: bool,
        /// Measure only this section (repeatable): print its tables, leave BENCHMARKS.md
        /// as it is (it is written from full runs only)
        #[arg(long, value_name = "SECTION", value_parser = ["per-packet", "drop-rate", "apply", "config"])]
        only: Vec<String>,
        /// Write BENCHMARKS.md from figures recorded earlier (a results TSV, e.g. of
        /// sections run with --only and joined) instead of measuring
        #[arg(long, value_name = "TSV", conflicts_with_all = ["quick", "only"])]
        report_from: Option<std::path::PathBuf>,
        /// Instead: the fleet latency (N daemons following one local etcd, from `fleet
        /// push` returning until every kernel judges by the new list); prints its table
        #[arg(long, conflicts_with_all = ["quick", "only", "report_from"])]
        fleet: bool,
        /// With --fleet: daemons, comma-separated (each a run of its own)
        #[arg(long, default_value = "10", requires = "fleet")]
        hosts: String,
        /// With --fleet: set sizes, comma-separated
        #[arg(long, default_value = "1000,10000,100000", requires = "fleet")]
        sizes: String,
        /// With --fleet: pushes per figure
        #[arg(long, default_value_t = 10, requires = "fleet")]
        rounds: usize,
    },
    /// Check formatting and run clippy with warnings denied, on userspace and the XDP program
    Lint,
    /// Run the integration tests in a QEMU guest on another kernel (as root): Debian 12's
    /// 6.1 by default
    Vm {
        /// A kernel image (bzImage) to boot instead; needs --modules
        #[arg(long, value_name = "BZIMAGE")]
        kernel: Option<std::path::PathBuf>,
        /// Its modules: the lib/modules/VERSION directory
        #[arg(long, value_name = "DIR")]
        modules: Option<std::path::PathBuf>,
        /// Every integration test, not the subset that covers the kernel-dependent paths
        #[arg(long)]
        all: bool,
        /// Only these test binaries (e.g. --only lifecycle --only enforce)
        #[arg(long, value_name = "TEST")]
        only: Vec<String>,
    },
    /// Fuzz every untrusted input against a model (as root): packets through the real XDP
    /// program, requests to a running daemon, the config, CSV and feed parsers under libFuzzer
    Fuzz {
        /// How long each target runs
        #[arg(long, default_value_t = 300, value_name = "N")]
        seconds: u64,
        /// One of packets, control, config, csv, feeds (default: all)
        target: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A bpf-linker that setup has just installed must be found by the builds that follow.
    setup::put_cargo_bin_on_path();
    match perform(cli.task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn perform(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Setup => setup::setup(),
        Task::Build { release } => {
            setup::setup()?;
            workspace::build_userspace(release)
        }
        Task::Package => {
            setup::setup()?;
            package::package().map(drop)
        }
        Task::Run { release, args } => run::run_daemon(release, &args),
        Task::Test { test_threads, args } => test_suite::test(test_threads, &args),
        Task::Demo => demo::demo(),
        Task::Bench {
            fleet: true,
            hosts,
            sizes,
            rounds,
            ..
        } => bench::fleet(&hosts, &sizes, rounds),
        Task::Bench {
            quick,
            only,
            report_from: Some(raw),
            ..
        } => {
            let _ = (quick, only);
            bench::report_from(&raw)
        }
        Task::Bench {
            quick,
            only,
            report_from: None,
            ..
        } => bench::bench(quick, &only),
        Task::Lint => lint::lint(),
        Task::Fuzz { seconds, target } => fuzz::fuzz(seconds, target.as_deref()),
        Task::Vm {
            kernel,
            modules,
            all,
            only,
        } => vm::vm(&vm::Options {
            kernel,
            modules,
            all,
            only,
        }),
    }
}
