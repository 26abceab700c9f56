//! Running external commands with a deadline, so a hung tool or daemon fails a test
//! instead of hanging the suite.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Default deadline for short administrative commands (`ip`, `sysctl`, `allowlistctl`).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `command` to completion, killing it if it takes longer than `timeout`.
/// A killed command is an error; a non-zero exit is not (callers judge the status).
pub fn output_with_timeout(command: &mut Command, timeout: Duration) -> Result<Output> {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {description}"))?;
    // Pipes are drained on their own threads: a chatty child must not block on a full
    // pipe while we wait for it to exit.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = match wait_with_deadline(&mut child, timeout)? {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{description} did not finish within {timeout:?}");
        }
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Runs `command` with [`COMMAND_TIMEOUT`] and fails unless it exits 0; returns stdout.
pub fn run_checked(command: &mut Command) -> Result<String> {
    let description = format!("{command:?}");
    let output = output_with_timeout(command, COMMAND_TIMEOUT)?;
    if !output.status.success() {
        bail!(
            "{description} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Waits for `child` to exit; `None` if it is still running at the deadline.
pub fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    // Short commands (allowlistctl) finish in milliseconds and some tests run thousands
    // of them: poll fast at first, then back off.
    let mut pause = Duration::from_micros(250);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// Asserts that `output` exited with `code` (showing both streams if not); returns its
/// stdout and stderr as text.
pub fn assert_exit_code(output: &Output, code: i32, what: &str) -> (String, String) {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}: expected exit code {code}, got {}\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    (stdout, stderr)
}

/// Opens `count` connections to the Unix socket at `path` as user `uid`/`gid` without
/// supplementary groups, as that user's own process would: the kernel records the
/// connecting thread's credentials (SO_PEERCRED) at connect time. It runs on a thread of
/// its own whose credentials alone are changed, with raw syscalls (glibc's setuid would
/// change every thread of the test). The test's descriptor limit is raised to its hard
/// limit first, so that it can hold many.
pub fn connect_as(
    uid: u32,
    gid: u32,
    path: &std::path::Path,
    count: usize,
) -> std::io::Result<Vec<std::os::unix::net::UnixStream>> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        // SAFETY: raw credential syscalls affect only this thread, which ends here.
        let changed = unsafe {
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0
                && libc::syscall(libc::SYS_setresgid, gid, gid, gid) == 0
                && libc::syscall(libc::SYS_setresuid, uid, uid, uid) == 0
        };
        if !changed {
            return Err(std::io::Error::last_os_error());
        }
        (0..count)
            .map(|_| std::os::unix::net::UnixStream::connect(&path))
            .collect()
    })
    .join()
    .map_err(|_| std::io::Error::other("connecting thread panicked"))?
}
