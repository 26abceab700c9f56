//! `cargo xtask package`: the Debian package, built with cargo-deb from the release build
//! made here first (`--no-build`, so cargo-deb never builds on its own with other flags).
//! What goes in it is `[package.metadata.deb]` in allowlist-userspace/Cargo.toml.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};

use crate::{process, workspace};

/// Shell completions generated from allowlistctl at package time, as the file names
/// `[package.metadata.deb]` assets expect in target/release/completions/.
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "allowlistctl.bash"),
    ("zsh", "_allowlistctl"),
    ("fish", "allowlistctl.fish"),
];

/// Builds the release binaries and the .deb; returns the .deb's path.
pub fn package() -> Result<PathBuf> {
    anyhow::ensure!(
        std::env::var_os("ALLOWLIST_TEST_LAYOUT").is_none(),
        "ALLOWLIST_TEST_LAYOUT is set: it builds the upgrade tests' next map layout, which \
         no package may ship. Unset it and run cargo xtask package again"
    );
    workspace::build_userspace(true)?;
    write_completions()?;
    let mut cmd = workspace::cargo();
    cmd.args(["deb", "-p", "allowlist-userspace", "--no-build"])
        .stderr(Stdio::inherit());
    println!("$ {}", process::describe(&cmd));
    // cargo-deb prints the path of the package it wrote as its last line.
    let stdout = process::capture(&mut cmd)?;
    let deb = stdout
        .lines()
        .map(str::trim)
        .rfind(|line| line.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb named no .deb in its output: {stdout}"))?;
    println!("built {}", deb.display());
    Ok(deb)
}

fn write_completions() -> Result<()> {
    let release = workspace::bin_dir(true);
    let dir = release.join("completions");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (shell, file) in COMPLETIONS {
        let script = process::capture(
            Command::new(release.join("allowlistctl")).args(["completions", shell]),
        )?;
        let path = dir.join(file);
        fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
