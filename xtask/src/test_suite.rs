//! `cargo xtask test`: the whole test suite, as CI runs it.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::{fuzz, libtest, lint, package, setup, summary::Summary, sys, vm, workspace};

pub fn test(test_threads: usize, test_args: &[String]) -> Result<()> {
    sys::require_root(
        "cargo xtask test",
        "the integration tests attach XDP programs inside network namespaces (the unit tests \
         alone run without root: plain `cargo test` at the workspace root)",
    )?;
    let mut summary = Summary::new("cargo xtask test");
    let ready = summary.step("setup", setup::setup)
        && summary.step("build", || workspace::build_userspace(false));
    // What `cargo xtask lint` checks is part of the suite: formatting and clippy with
    // warnings denied, so CI enforces them. A failure here still lets the tests run.
    if ready {
        summary.step("lint (fmt, clippy)", lint::check);
    } else {
        summary.skip("lint (fmt, clippy)");
    }
    if ready {
        summary.step("unit tests", || run_unit_tests(test_args));
        // The package tests install this .deb; without it they fail, the others run.
        let mut deb: Option<PathBuf> = None;
        summary.step("Debian package (release build)", || {
            deb = Some(package::package()?);
            Ok(())
        });
        // The upgrade tests move from these binaries to the next layout's; without
        // them those tests fail, the others run.
        let mut next_layout: Option<PathBuf> = None;
        summary.step("next layout build (for the upgrade tests)", || {
            next_layout = Some(workspace::build_next_layout()?);
            Ok(())
        });
        summary.step(
            &format!("integration tests (Linux {})", sys::kernel_release()),
            || {
                run_integration_tests(
                    test_threads,
                    test_args,
                    deb.as_deref(),
                    next_layout.as_deref(),
                )
            },
        );
        // The packet and control fuzzers are integration tests (ALLOWLIST_FUZZ_SECONDS,
        // default 30 s each); the parsers run under libFuzzer here. A name filter given to
        // the test run selects tests, not fuzzers: then they are left out.
        if test_args.is_empty() {
            for target in ["config", "csv", "feeds"] {
                summary.step(&format!("fuzz {target} ({} s)", fuzz::TEST_SECONDS), || {
                    fuzz::run(target, fuzz::TEST_SECONDS)
                });
            }
            // The kernel-dependent tests again, on the kernel Debian 12 hosts run.
            vm::step(
                &mut summary,
                &vm::Options {
                    kernel: None,
                    modules: None,
                    all: false,
                    only: Vec::new(),
                },
            );
        }
    } else {
        summary.skip("unit tests");
        summary.skip("integration tests");
    }
    summary.finish()
}

fn run_unit_tests(test_args: &[String]) -> Result<()> {
    // The same crates as plain `cargo test` (the workspace's default members), named
    // explicitly so that a crate added to the workspace is unit-tested here even before
    // it is made a default member. allowlist-ebpf is a no_std, no_main program for the BPF
    // target and cannot be compiled as a host test binary; allowlist-tests needs root and
    // runs next.
    let mut cmd = workspace::cargo();
    cmd.args(["test", "--workspace", "--no-fail-fast"]).args([
        "--exclude",
        "allowlist-tests",
        "--exclude",
        "allowlist-ebpf",
    ]);
    if !test_args.is_empty() {
        cmd.arg("--").args(test_args);
    }
    libtest::run(cmd)
}

fn run_integration_tests(
    test_threads: usize,
    test_args: &[String],
    deb: Option<&Path>,
    next_layout: Option<&Path>,
) -> Result<()> {
    let mut cmd = workspace::cargo();
    // Every test binary runs even after one fails: a failure must not hide the others.
    cmd.args(["test", "-p", "allowlist-tests", "--no-fail-fast", "--"])
        .env("ALLOWLIST_BIN_DIR", workspace::bin_dir(false));
    if let Some(deb) = deb {
        cmd.env("ALLOWLIST_DEB", deb);
    }
    if let Some(next_layout) = next_layout {
        cmd.env("ALLOWLIST_NEXT_BIN_DIR", next_layout);
    }
    // libtest rejects an option given twice, so an explicit one in the extra arguments wins.
    if !test_args
        .iter()
        .any(|arg| arg.starts_with("--test-threads"))
    {
        cmd.arg(format!("--test-threads={test_threads}"));
    }
    cmd.args(test_args);
    libtest::run(cmd)
}
