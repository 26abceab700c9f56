//! `cargo xtask run`: build, then become allowlistd.

use std::{ffi::OsString, os::unix::process::CommandExt as _, process::Command};

use anyhow::{Context as _, Result};

use crate::{process, setup, sys, workspace};

pub fn run_daemon(release: bool, args: &[OsString]) -> Result<()> {
    sys::require_root(
        "cargo xtask run",
        "allowlistd attaches an XDP program to network interfaces and pins BPF maps",
    )?;
    setup::setup()?;
    workspace::build_userspace(release)?;
    let mut daemon = Command::new(workspace::bin_dir(release).join("allowlistd"));
    daemon.args(args);
    println!("$ {}", process::describe(&daemon));
    // exec, not spawn: Ctrl-C and SIGTERM then reach the daemon itself, and its exit code
    // is ours.
    let error = daemon.exec();
    Err(error).with_context(|| format!("could not start `{}`", process::describe(&daemon)))
}
