//! `cargo xtask demo`: the filter at work between network namespaces, narrated.
//!
//! The demo itself is `tests/examples/demo.rs`, built on the end-to-end tests' harness
//! (their network of namespaces, their daemon driver and traffic): it links the daemon's
//! library, which xtask must not (xtask builds before bpf-linker exists). xtask sets up,
//! builds it and the daemon, and runs it.

use std::process::Command;

use anyhow::{bail, Result};

use crate::{process, setup, sys, workspace};

pub fn demo() -> Result<()> {
    sys::require_root(
        "cargo xtask demo",
        "it creates network namespaces and attaches an XDP program inside them",
    )?;
    println!("==> Preparing: tools, a debug build of allowlistd and allowlistctl, and the demo");
    setup::setup()?;
    workspace::build_userspace(false)?;
    process::run(workspace::cargo().args(["build", "-p", "allowlist-tests", "--example", "demo"]))?;

    // Ctrl-C reaches the demo too, which stops and cleans up; xtask waits for it.
    sys::catch_interrupts();
    let bin_dir = workspace::bin_dir(false);
    let mut demo = Command::new(bin_dir.join("examples").join("demo"));
    demo.env("ALLOWLIST_BIN_DIR", &bin_dir);
    let ran = process::run(&mut demo);
    if sys::interrupted() {
        bail!("interrupted");
    }
    ran
}
