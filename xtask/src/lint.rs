//! `cargo xtask lint`: formatting and clippy, for the host crates, the XDP program and
//! the fuzz targets (a workspace of their own, `tests/fuzz`).

use anyhow::Result;

use crate::{process, setup, summary::Summary, workspace};

/// Every lint check, as one step: `cargo xtask test` runs it after setup.
pub fn check() -> Result<()> {
    check_formatting()?;
    clippy_host_crates()?;
    clippy_xdp_program()?;
    clippy_fuzz_targets()
}

pub fn lint() -> Result<()> {
    let mut summary = Summary::new("cargo xtask lint");
    summary.step("rustfmt", check_formatting);
    // Clippy runs build scripts, and allowlist-userspace's compiles the XDP program: that
    // needs bpf-linker and nightly's rust-src.
    if summary.step("setup", setup::setup) {
        summary.step("clippy (host crates)", clippy_host_crates);
        summary.step("clippy (XDP program, nightly)", clippy_xdp_program);
        summary.step("clippy (fuzz targets)", clippy_fuzz_targets);
    } else {
        summary.skip("clippy (host crates)");
        summary.skip("clippy (XDP program, nightly)");
        summary.skip("clippy (fuzz targets)");
    }
    summary.finish()
}

fn check_formatting() -> Result<()> {
    process::run(workspace::cargo().args(["fmt", "--all", "--", "--check"]))?;
    process::run(workspace::cargo().args([
        "fmt",
        "--manifest-path",
        "tests/fuzz/Cargo.toml",
        "--",
        "--check",
    ]))
}

fn clippy_fuzz_targets() -> Result<()> {
    let target_dir = workspace::target_dir().join("fuzz/clippy");
    process::run(
        workspace::cargo()
            .args([
                "clippy",
                "--manifest-path",
                "tests/fuzz/Cargo.toml",
                "--target-dir",
            ])
            .arg(target_dir)
            .args(["--", "-D", "warnings"]),
    )
}

fn clippy_host_crates() -> Result<()> {
    process::run(workspace::cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "allowlist-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

// Checked for the target it runs on: much of it is cfg'd for BPF and the host build of
// that crate is not meaningful.
fn clippy_xdp_program() -> Result<()> {
    process::run(workspace::nightly_cargo().args([
        "clippy",
        "-p",
        "allowlist-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))
}
