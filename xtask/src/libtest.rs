//! Reading what `cargo test` prints: which tests failed and why, so that a failure is named
//! at the end of a long log (CI may show only its tail) instead of hundreds of lines above.

use std::collections::BTreeMap;
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

/// The name of a test binary from cargo's `Running …` line: `tests/enforce.rs` for
/// `tests/enforce.rs (target/debug/deps/enforce-…)`, and the crate's name for its unit
/// tests (`unittests src/lib.rs (target/debug/deps/allowlist_userspace-…)`).
fn binary_name(running: &str) -> String {
    let (source, path) = running.split_once(" (").unwrap_or((running, ""));
    let Some(source) = source.strip_prefix("unittests ") else {
        return source.to_string();
    };
    let file = path.trim_end_matches(')').rsplit('/').next().unwrap_or("");
    let krate = file.rsplit_once('-').map_or(file, |(krate, _hash)| krate);
    format!("unit tests of {krate} ({source})")
}

/// Failed tests of one `cargo test` run, read line by line from its output. cargo may run
/// quietly (this workspace sets `CARGO_TERM_QUIET`): then there are no `Running …` lines and
/// libtest prints a dot per test, so a failure is known by its `---- NAME stdout ----`
/// section and its binary by cargo's `error: test failed, to rerun pass `…`` after it.
#[derive(Default)]
pub struct Failures {
    /// The test binary whose output is being read, when cargo says (`Running …`).
    binary: Option<String>,
    /// Failed tests of the binary being read, with the last lines of each one's output.
    of_this_binary: BTreeMap<String, Vec<String>>,
    /// The test whose captured output (`---- NAME stdout ----`) is being read.
    reading: Option<String>,
    /// Each failed test as `WHERE: TEST` (or a binary that named none), with its output's
    /// last lines.
    failed: Vec<(String, Vec<String>)>,
}

impl Failures {
    pub fn read(&mut self, line: &str) {
        let line = line.trim_end();
        if let Some(running) = line.trim_start().strip_prefix("Running ") {
            self.end_binary(None);
            self.binary = Some(binary_name(running));
            return;
        }
        if let Some(krate) = line.trim_start().strip_prefix("Doc-tests ") {
            self.end_binary(None);
            self.binary = Some(format!("doc tests of {krate}"));
            return;
        }
        if let Some(rerun) = line.strip_prefix("error: test failed, to rerun pass ") {
            self.end_binary(Some(rerun.trim_matches('`')));
            return;
        }
        if let Some((name, outcome)) = result_line(line) {
            if outcome == "FAILED" {
                self.of_this_binary.entry(name).or_default();
            }
            return;
        }
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|rest| rest.strip_suffix(" stdout ----"))
        {
            self.of_this_binary.entry(name.to_string()).or_default();
            self.reading = Some(name.to_string());
            return;
        }
        if line == "failures:" || line.starts_with("test result:") {
            self.reading = None;
            return;
        }
        if line.starts_with("stack backtrace:") {
            // The frames after the panic message would push it out of the lines kept.
            self.reading = None;
            return;
        }
        if let Some(test) = &self.reading {
            let detail = self.of_this_binary.entry(test.clone()).or_default();
            detail.push(line.to_string());
            if detail.len() > DETAIL_LINES {
                detail.remove(0);
            }
        }
    }

    /// Files the failures read so far under their binary. `rerun` is cargo's word that the
    /// binary failed (what to pass to run it again): one that crashed, was killed or timed
    /// out names no failed test, and must not be hidden by others that did.
    fn end_binary(&mut self, rerun: Option<&str>) {
        let binary = match (&self.binary, rerun) {
            (Some(binary), _) => binary.clone(),
            (None, Some(rerun)) => format!("cargo test {rerun}"),
            (None, None) => "a test binary".to_string(),
        };
        if rerun.is_some() && self.of_this_binary.is_empty() {
            self.failed.push((
                format!("{binary}: exited without naming a failed test (crashed or killed?)"),
                Vec::new(),
            ));
        }
        for (test, detail) in std::mem::take(&mut self.of_this_binary) {
            self.failed.push((format!("{binary}: {test}"), detail));
        }
        self.binary = None;
        self.reading = None;
    }

    /// The failed tests and the end of each one's output, or None if none failed.
    pub fn report(mut self) -> Option<String> {
        self.end_binary(None);
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
    // One pipe for both streams keeps their order: cargo's lines about a test binary
    // (stderr) must stay in place among its results (stdout) to name the binary a failure
    // belongs to.
    let (output, writer) = std::io::pipe().context("a pipe for cargo's output")?;
    cmd.stdout(writer.try_clone().context("a pipe for cargo's output")?)
        .stderr(writer);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    // The command holds the pipe's write ends: dropped, the pipe ends with cargo's output.
    drop(cmd);
    let received = process::lines_in_background(output);
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
            Some((_, at)) if at.elapsed() > LINGER => {
                for line in received.try_iter() {
                    println!("{line}");
                    failures.read(&line);
                }
                break;
            }
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

    /// What the report says of `output`, which has a failure.
    fn report_of(output: &str) -> String {
        let mut failures = Failures::default();
        for line in output.lines() {
            failures.read(line);
        }
        failures.report().expect("a failure in the output")
    }

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
        let report = report_of(output);
        assert!(report.starts_with("1 failed:"), "{report}");
        assert!(
            report.contains("tests/enforce.rs: unlisted_drops"),
            "{report}"
        );
        assert!(report.contains("the unlisted ping got through"), "{report}");
        assert!(!report.contains("listed_passes"), "{report}");
        assert!(!report.contains("fleet"), "{report}");
    }

    #[test]
    fn a_binary_that_crashed_is_named_even_when_another_named_its_failures() {
        let output = "\
     Running unittests src/lib.rs (target/debug/deps/allowlist_userspace-89ab)
running 1 test
test durable::tests::fine ... ok
     Running tests/enforce.rs (target/debug/deps/enforce-0123)
running 1 test
test unlisted_drops ... FAILED
failures:
---- unlisted_drops stdout ----
thread 'unlisted_drops' panicked at tests/tests/enforce.rs:12:5:
error: test failed, to rerun pass `-p allowlist-tests --test enforce`
     Running tests/fleet.rs (target/debug/deps/fleet-4567)
running 1 test
error: test failed, to rerun pass `-p allowlist-tests --test fleet`
   Doc-tests allowlist_common
running 1 test
test src/lib.rs - Control (line 12) ... FAILED
";
        let report = report_of(output);
        assert!(report.starts_with("3 failed:"), "{report}");
        assert!(
            report.contains("tests/enforce.rs: unlisted_drops"),
            "{report}"
        );
        assert!(
            report.contains("tests/fleet.rs: exited without naming a failed test"),
            "{report}"
        );
        assert!(
            report.contains("doc tests of allowlist_common: src/lib.rs - Control (line 12)"),
            "{report}"
        );
        assert!(!report.contains("enforce.rs: exited"), "{report}");
    }

    #[test]
    fn quiet_cargo_names_the_binary_after_its_output_and_libtest_prints_dots() {
        let output = "\
running 2 tests
.F
failures:

---- unlisted_drops stdout ----
thread 'unlisted_drops' panicked at tests/tests/enforce.rs:12:5:
the unlisted ping got through

failures:
    unlisted_drops

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out
error: test failed, to rerun pass `-p allowlist-tests --test enforce`

running 1 test
.
test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out

running 3 tests
error: test failed, to rerun pass `-p allowlist-tests --test fleet`
";
        let report = report_of(output);
        assert!(report.starts_with("2 failed:"), "{report}");
        assert!(
            report.contains(
                "cargo test -p allowlist-tests --test enforce: unlisted_drops\n      thread 'unlisted_drops' panicked"
            ),
            "{report}"
        );
        assert!(report.contains("the unlisted ping got through"), "{report}");
        assert!(
            report.contains("cargo test -p allowlist-tests --test fleet: exited without naming"),
            "{report}"
        );
    }

    #[test]
    fn unit_test_binaries_are_named_by_their_crate() {
        assert_eq!(
            super::binary_name("unittests src/lib.rs (target/debug/deps/allowlist_userspace-89ab)"),
            "unit tests of allowlist_userspace (src/lib.rs)"
        );
        assert_eq!(
            super::binary_name("tests/enforce.rs (target/debug/deps/enforce-0123)"),
            "tests/enforce.rs"
        );
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
        failures.read("the reason");
        failures.read("stack backtrace:");
        for n in 0..100 {
            failures.read(&format!("  {n}: frame"));
        }
        let report = failures.report().expect("one test failed");
        assert!(report.contains("panicked"), "{report}");
        assert!(report.ends_with("the reason"), "{report}");
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
