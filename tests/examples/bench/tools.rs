//! Running the command-line tools the benchmarks compare with (nft, ipset, iptables).

use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Runs `nft -f -` with `script` on stdin.
pub fn nft(script: &str) -> Result<()> {
    output_with_input(Command::new("nft").args(["-f", "-"]), script).map(|_| ())
}

pub fn output(command: &mut Command) -> Result<String> {
    output_with_input(command, "")
}

pub fn output_with_input(command: &mut Command, input: &str) -> Result<String> {
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output()?;
    writer.join().expect("stdin writer").ok();
    if !output.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
