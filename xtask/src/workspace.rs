//! Where the workspace and its build output are, and how cargo is invoked on it.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::process;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in a directory of the workspace")
}

/// target/ of the workspace, or CARGO_TARGET_DIR when set (cargo resolves it from the
/// current directory, and so do we).
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => env::current_dir()
            .map(|cwd| cwd.join(&dir))
            .unwrap_or_else(|_| PathBuf::from(dir)),
        None => root().join("target"),
    }
}

/// Where `cargo build -p allowlist-userspace` puts allowlistd and allowlistctl.
pub fn bin_dir(release: bool) -> PathBuf {
    target_dir().join(if release { "release" } else { "debug" })
}

/// cargo in the workspace root. Plain `cargo` (rustup's proxy) rather than the absolute path
/// in $CARGO keeps the echoed commands short enough to copy; rustup exports the toolchain
/// that runs xtask as RUSTUP_TOOLCHAIN, so both pick the same one.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root());
    cmd
}

/// cargo of the nightly toolchain (through rustup's proxy, which understands `+nightly`).
pub fn nightly_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly").current_dir(root());
    cmd
}

/// Builds allowlistd and allowlistctl; allowlist-userspace's build script compiles the XDP
/// program (nightly + bpf-linker) and embeds it in allowlistd.
pub fn build_userspace(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "allowlist-userspace"]);
    if release {
        cmd.arg("--release");
    }
    process::run(&mut cmd)
}

/// Builds allowlistd and allowlistctl as the next version would be: a different map layout
/// (`ALLOWLIST_TEST_LAYOUT`, see allowlist-common's `LAYOUT_VERSION`) and crash points,
/// for the upgrade tests. In a target directory of its own, so it never replaces the
/// binaries the other tests run. Returns the directory holding the binaries.
pub fn build_next_layout() -> Result<PathBuf> {
    let target = target_dir().join("next-layout");
    let mut cmd = cargo();
    cmd.args([
        "build",
        "-p",
        "allowlist-userspace",
        "--features",
        "crash-points",
        "--target-dir",
    ])
    .arg(&target)
    .env("ALLOWLIST_TEST_LAYOUT", "1");
    process::run(&mut cmd)?;
    Ok(target.join("debug"))
}
