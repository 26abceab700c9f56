//! The few libc calls xtask needs. std already links libc, so declaring them here keeps
//! xtask free of dependencies (it must build before anything else is installed).

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{ensure, Result};

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

unsafe extern "C" {
    fn geteuid() -> u32;
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() == 0 }
}

/// Fails with a message that says why `what` needs root.
pub fn require_root(what: &str, why: &str) -> Result<()> {
    ensure!(
        is_root(),
        "`{what}` needs root: {why}. Run it again as root (for example in a root shell)."
    );
    Ok(())
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_interrupt(_signal: i32) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// From now on Ctrl-C and SIGTERM only set a flag (see `interrupted`), so the caller can
/// stop at the next step and still clean up. Children get the default handlers back when
/// they exec, so Ctrl-C still stops them.
pub fn catch_interrupts() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        signal(SIGINT, note_interrupt);
        signal(SIGTERM, note_interrupt);
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
