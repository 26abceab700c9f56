//! Ctrl-C and SIGTERM for the programs built on the harness (the benchmark runner, the
//! demo): once caught, they only set a flag, so the program stops at its next step and
//! its guards — network namespaces, daemons, pins — are dropped on the way out. Killed
//! by the signal instead, it would leave all of them behind.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// From now on SIGINT and SIGTERM set the flag that [`check`] reads. Child processes get
/// the default handlers back when they exec, so Ctrl-C still stops them (and a blocking
/// `BPF_PROG_TEST_RUN` returns early with an error, which ends the step the same way).
pub fn catch() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            note_interrupt as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            note_interrupt as *const () as libc::sighandler_t,
        );
    }
}

/// Whether SIGINT or SIGTERM arrived since [`catch`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails once SIGINT or SIGTERM has arrived, so that `?` ends the run at this step.
pub fn check() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}
