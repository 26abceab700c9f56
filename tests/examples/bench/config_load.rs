//! Section 5, config load: how long `allowlistd check` takes to read and validate a
//! config file of N `[[allow]]` entries (each with a description), and its peak memory.
//! `check` does what a start does before touching the kernel: parse, validate every
//! entry with its line, refuse duplicates, compile.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::lists::{self, Rng};
use crate::results::Results;
use crate::Options;

pub fn run(options: &Options, results: &mut Results, bin_dir: &Path) -> Result<()> {
    let work = tempfile::Builder::new()
        .prefix("allowlist-bench-config-")
        .tempdir()?;
    for &entries in &options.config_sizes {
        crate::check_interrupted()?;
        let list = lists::mixed_v4(entries, &mut Rng::new(options.seed ^ 0xc ^ entries as u64));
        let mut text = format!(
            "interfaces = [\"lo\"]\nmode = \"monitor\"\nstate_dir = {:?}\nsocket = {:?}\npin_path = \"/sys/fs/bpf/allowlist-bench-config\"\n",
            work.path().join("state"),
            work.path().join("run/control.sock"),
        );
        for (index, (network, _)) in list.v4.iter().enumerate() {
            let _ = write!(
                text,
                "\n[[allow]]\ncidr = \"{network}\"\ndescription = \"entry {index}\"\n"
            );
        }
        let config = work.path().join(format!("allowlist-{entries}.toml"));
        std::fs::write(&config, &text)?;
        results.note(&format!("config.{entries}.bytes"), &text.len().to_string())?;
        let (mut seconds, mut peaks) = (Vec::new(), Vec::new());
        for _ in 0..options.runs {
            let (elapsed, peak_kib) = timed_check(&bin_dir.join("allowlistd"), &config)?;
            seconds.push(elapsed);
            peaks.push(peak_kib as f64 / 1024.0);
        }
        results.figure(&format!("config.{entries}.check"), "s", &seconds)?;
        results.figure(&format!("config.{entries}.check_rss_peak"), "MiB", &peaks)?;
    }
    Ok(())
}

/// Wall time of `allowlistd --config CONFIG check` and its peak resident set (KiB).
fn timed_check(allowlistd: &Path, config: &Path) -> Result<(f64, i64)> {
    let started = Instant::now();
    let child = Command::new(allowlistd)
        .arg("--config")
        .arg(config)
        .arg("check")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", allowlistd.display()))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data we own; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child and reaps it; nothing else waits for it.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = started.elapsed().as_secs_f64();
    if waited != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr {
            std::io::Read::read_to_string(&mut pipe, &mut stderr).ok();
        }
        bail!("allowlistd check failed ({status}): {stderr}");
    }
    Ok((elapsed, usage.ru_maxrss))
}
