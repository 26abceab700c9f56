//! `cargo xtask fuzz [--seconds N] [TARGET]`: every untrusted input fuzzed against a model
//! of what the answer must be (README, "Fuzzing").
//!
//! - `packets`: random and mutated frames through the real XDP program
//!   (`BPF_PROG_TEST_RUN`) against the README's packet path written as a reference
//!   (`tests/tests/fuzz_packets.rs`);
//! - `control`: arbitrary bytes and extreme requests against a running daemon, whose
//!   state must match a model of the accepted requests (`tests/tests/fuzz_control.rs`);
//! - `config`, `csv`, `feeds`: the config, CSV and feed body parsers under libFuzzer (cargo-fuzz,
//!   `tests/fuzz/`), coverage-guided from the seeds in `tests/fuzz/corpus/`.
//!
//! Each run replays the regression cases in `tests/fuzz/regressions/` first. What
//! libFuzzer finds lands in `target/fuzz/artifacts/TARGET/`; a failing packet or control
//! case is printed whole. `cargo xtask test` runs every target for a bounded time.

use std::{fs, path::Path};

use anyhow::{bail, Context as _, Result};

use crate::{process, setup, summary::Summary, sys, workspace};

pub const TARGETS: [&str; 5] = ["packets", "control", "config", "csv", "feeds"];
/// What `cargo xtask test` gives each target.
pub const TEST_SECONDS: u64 = 30;

pub fn fuzz(seconds: u64, target: Option<&str>) -> Result<()> {
    sys::require_root(
        "cargo xtask fuzz",
        "the packet and control targets load the XDP program and start the daemon",
    )?;
    let targets: Vec<&str> = match target {
        Some(name) if TARGETS.contains(&name) => vec![name],
        Some(name) => bail!(
            "unknown fuzz target {name}; targets: {}",
            TARGETS.join(", ")
        ),
        None => TARGETS.to_vec(),
    };
    let mut summary = Summary::new("cargo xtask fuzz");
    let ready = summary.step("setup", setup::setup)
        && summary.step("build", || workspace::build_userspace(false));
    for name in targets {
        if ready {
            summary.step(&format!("fuzz {name} ({seconds} s)"), || run(name, seconds));
        } else {
            summary.skip(&format!("fuzz {name}"));
        }
    }
    summary.finish()
}

/// Runs one target for `seconds` (after its regression cases).
pub fn run(target: &str, seconds: u64) -> Result<()> {
    match target {
        "packets" => run_test("fuzz_packets", seconds),
        "control" => run_test("fuzz_control", seconds),
        parser => run_libfuzzer(parser, seconds),
    }
}

fn run_test(test: &str, seconds: u64) -> Result<()> {
    process::run(
        workspace::cargo()
            .args([
                "test",
                "-p",
                "allowlist-tests",
                "--test",
                test,
                "--",
                "--nocapture",
            ])
            .env("ALLOWLIST_FUZZ_SECONDS", seconds.to_string())
            .env("ALLOWLIST_BIN_DIR", workspace::bin_dir(false)),
    )
}

/// `cargo fuzz run` of a parser target: instrumented with debug assertions (so an
/// arithmetic overflow is a crash, as it must never happen), no sanitizer (the parsers
/// are safe Rust; panics are what is looked for).
fn run_libfuzzer(target: &str, seconds: u64) -> Result<()> {
    let root = workspace::root();
    let fuzz_dir = root.join("tests/fuzz");
    let work = workspace::target_dir().join("fuzz");
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    for dir in [&corpus, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let cargo_fuzz = |extra: &[&str]| {
        let mut cmd = workspace::nightly_cargo();
        cmd.args(["fuzz", "run", "--fuzz-dir"])
            .arg(&fuzz_dir)
            .arg("--target-dir")
            .arg(work.join("target"))
            .args(["--sanitizer", "none", "--debug-assertions", target])
            .args(extra);
        cmd
    };
    let regressions = files_in(&fuzz_dir.join("regressions").join(target))?;
    if !regressions.is_empty() {
        // libFuzzer runs the files it is given once each, and fails on the first crash.
        let mut cmd = cargo_fuzz(&[]);
        cmd.args(&regressions);
        process::run(&mut cmd).context("a regression case fails again")?;
    }
    let seeds = fuzz_dir.join("corpus").join(target);
    let mut cmd = cargo_fuzz(&[]);
    cmd.arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1");
    process::run(&mut cmd).with_context(|| {
        format!(
            "libFuzzer found an input that fails {target}: it is in {}; fix it, then keep it \
             in tests/fuzz/regressions/{target}/",
            artifacts.display()
        )
    })
}

fn files_in(dir: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten() {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        let hidden = path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('.'));
        if path.is_file() && !hidden {
            files.push(path.display().to_string());
        }
    }
    files.sort();
    Ok(files)
}
