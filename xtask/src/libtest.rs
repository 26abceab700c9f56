//! Reading what `cargo test` prints: which tests failed and why, so that a failure is named
//! at the end of a long log (CI may show only its tail) instead of hundreds of lines above.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::process;

/// Lines of one failed test's output kept for the report: its panic and what led to it.
const DETAIL_LINES: usize = 24;

/// How long output is still read after cargo exits, from processes a test left behind.
const LINGER: Duration = Duration::from_secs(5);

/// libtest's `test NAME ... ok` line, as (NAME, outcome). The console may put escape
/// sequences before it.
pub fn result_line(line: &str) -> Option<(String, String)> {
    let rest = &line[line.find("test ")? + "test ".len()..];
    let (name, outcome) = rest.split_once(" ... ")?;
    let outcome = outcome.split_whitespace().next()?;
    matches!(outcome, "ok" | "FAILED" | "ignored")
        .then(|| (name.trim().to_string(), outcome.to_string()))
}

/// Failed tests of one `cargo test` run, read line by line from its output.
#[derive(Default)]
pub struct Failures {
    /// The test binary whose output is being read (`tests/NAME.rs` or the crate's unit tests).
    binary: String,
    /// `binary::test` of each failed test, with its output's last lines.
    failed: BTreeMap<String, Vec<String>>,
    /// The test whose captured output (`---- NAME stdout ----`) is being read.
    reading: Option<String>,
}

impl Failures {
    pub fn read(&mut self, line: &str) {
        let line = line.trim_end();
        if let Some(running) = line.trim_start().strip_prefix("Running ") {
            // `Running tests/enforce.rs (target/debug/deps/enforce-…)`
            self.binary = running
                .split_whitespace()
                .next()
                .unwrap_or(running)
                .to_string();
            self.reading = None;
            return;
        }
        if let Some((name, outcome)) = result_line(line) {
            if outcome == "FAILED" {
                self.failed.entry(self.key(&name)).or_default();
            }
            return;
        }
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|rest| rest.strip_suffix(" stdout ----"))
        {
            self.reading = Some(self.key(name));
            return;
        }
        if line == "failures:" || line.starts_with("test result:") {
            self.reading = None;
            return;
        }
        if let Some(test) = &self.reading {
            let detail = self.failed.entry(test.clone()).or_default();
            detail.push(line.to_string());
            if detail.len() > DETAIL_LINES {
                detail.remove(0);
            }
        }
    }

    fn key(&self, test: &str) -> String {
        format!("{}::{test}", self.binary)
    }

    /// The failed tests and the end of each one's output, or None if none failed.
    pub fn report(&self) -> Option<String> {
        if self.failed.is_empty() {
            return None;
        }
        let mut report = format!("{} failed:", self.failed.len());
        for (test, detail) in &self.failed {
            report.push_str(&format!("\n  {test}"));
            let detail: Vec<&String> = detail
                .iter()
                .skip_while(|line| line.trim().is_empty())
                .collect();
            for line in detail {
                report.push_str(&format!("\n      {line}"));
            }
        }
        Some(report)
    }
}

/// Runs `cargo test …`, echoing its output as it comes; on failure the error names each failed
/// test with the end of its output.
pub fn run(mut cmd: Command) -> Result<()> {
    let shown = process::describe(&cmd);
    println!("$ {shown}");
    // One pipe for both streams keeps their order: cargo's `Running tests/X.rs` (stderr)
    // must come before X's results (stdout) to name the binary a failure belongs to.
    let (output, writer) = std::io::pipe().context("a pipe for cargo's output")?;
    cmd.stdout(writer.try_clone().context("a pipe for cargo's output")?)
        .stderr(writer);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    // The command holds the pipe's write ends: dropped, the pipe ends with cargo's output.
    drop(cmd);
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut failures = Failures::default();
    // A process a test left behind may still hold the pipe after cargo exits; its output is
    // read for a moment more, not waited for.
    let mut exited: Option<(ExitStatus, Instant)> = None;
    loop {
        match received.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                println!("{line}");
                failures.read(&line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        match exited {
            None => {
                if let Some(status) = child.try_wait()? {
                    exited = Some((status, Instant::now()));
                }
            }
            Some((_, at)) if at.elapsed() > LINGER => break,
            Some(_) => {}
        }
    }
    let status = match exited {
        Some((status, _)) => status,
        None => child.wait()?,
    };
    if status.success() {
        return Ok(());
    }
    match failures.report() {
        Some(report) => bail!("`{shown}` failed ({status}); {report}"),
        None => bail!("`{shown}` failed ({status}) with no failed test named in its output"),
    }
}

#[cfg(test)]
mod tests {
    use super::{result_line, Failures};

    #[test]
    fn libtest_lines_are_read_even_behind_console_noise() {
        assert_eq!(
            result_line("\u{1b}[0mtest lifecycle_kill_9 ... ok"),
            Some(("lifecycle_kill_9".into(), "ok".into()))
        );
        assert_eq!(
            result_line("test a::b ... FAILED"),
            Some(("a::b".into(), "FAILED".into()))
        );
        assert_eq!(result_line("test result: ok. 3 passed"), None);
        assert_eq!(result_line("running 3 tests"), None);
    }

    #[test]
    fn a_failed_test_is_named_with_its_binary_and_the_end_of_its_output() {
        let output = "\
     Running tests/enforce.rs (target/debug/deps/enforce-0123)
running 2 tests
test listed_passes ... ok
test unlisted_drops ... FAILED

failures:

---- unlisted_drops stdout ----
daemon log line
thread 'unlisted_drops' panicked at tests/tests/enforce.rs:12:5:
the unlisted ping got through

failures:
    unlisted_drops

test result: FAILED. 1 passed; 1 failed
     Running tests/fleet.rs (target/debug/deps/fleet-4567)
running 1 test
test a_push_reaches_every_host ... ok
";
        let mut failures = Failures::default();
        for line in output.lines() {
            failures.read(line);
        }
        let report = failures.report().expect("one test failed");
        assert!(report.starts_with("1 failed:"), "{report}");
        assert!(
            report.contains("tests/enforce.rs::unlisted_drops"),
            "{report}"
        );
        assert!(report.contains("the unlisted ping got through"), "{report}");
        assert!(!report.contains("listed_passes"), "{report}");
        assert!(!report.contains("fleet"), "{report}");
    }

    #[test]
    fn a_long_output_keeps_only_its_end() {
        let mut failures = Failures::default();
        failures.read("test noisy ... FAILED");
        failures.read("---- noisy stdout ----");
        for n in 0..1000 {
            failures.read(&format!("log line {n}"));
        }
        failures.read("thread 'noisy' panicked at x.rs:1:1:");
        let report = failures.report().expect("one test failed");
        assert!(report.contains("panicked"), "{report}");
        assert!(report.contains("log line 999"), "{report}");
        assert!(!report.contains("log line 900"), "{report}");
    }

    #[test]
    fn a_run_with_no_failed_test_reports_nothing() {
        let mut failures = Failures::default();
        failures.read("test fine ... ok");
        assert_eq!(failures.report(), None);
    }
}
