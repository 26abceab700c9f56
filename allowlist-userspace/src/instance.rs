//! One daemon per filter and per state directory.
//!
//! Two daemons sharing a `pin_path` would take turns rewriting the same slots (one says
//! PASS while the kernel drops); two sharing a `state_dir` would overwrite each other's
//! list. Each daemon therefore holds an exclusive `flock` on its pin directory (on bpffs)
//! and on its state directory for as long as it lives; the kernel drops the locks when
//! the process ends, however it ends. A second daemon is refused with the first one's PID
//! and control socket, found through `/proc/locks`.

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use crate::config::{Locations, DEFAULT_CONFIG};

/// Locks held for the daemon's life; dropping it releases them.
#[derive(Debug)]
pub struct InstanceLock {
    _held: Vec<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// `holder` is "PID 1234, control socket PATH" as far as /proc tells.
    #[error("{what} {path} is in use by another allowlistd ({holder}): two daemons on one {what} would overwrite each other's list. Stop that daemon first, or give this one its own pin_path and state_dir")]
    Held {
        what: &'static str,
        path: String,
        holder: String,
    },
    #[error("locking {what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: String,
        cause: io::Error,
    },
}

impl LockError {
    /// The daemon holding the lock, when that is what went wrong.
    pub fn holder(&self) -> Option<&str> {
        match self {
            LockError::Held { holder, .. } => Some(holder),
            LockError::Io { .. } => None,
        }
    }
}

impl InstanceLock {
    /// Holds the locks [`lock_dir`] took until dropped.
    pub fn new(held: Vec<File>) -> InstanceLock {
        InstanceLock { _held: held }
    }
}

/// Takes an exclusive, non-blocking `flock` on the directory `dir`.
pub fn lock_dir(what: &'static str, dir: &Path) -> Result<File, LockError> {
    let io_error = |cause| LockError::Io {
        what,
        path: dir.display().to_string(),
        cause,
    };
    let file = File::open(dir).map_err(io_error)?;
    // SAFETY: flock on a descriptor we own; released when `file` is closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(file);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(io_error(error));
    }
    let holder = file
        .metadata()
        .ok()
        .and_then(|meta| lock_holder(meta.dev(), meta.ino()))
        .map_or_else(|| "PID unknown".to_string(), describe_daemon);
    Err(LockError::Held {
        what,
        path: dir.display().to_string(),
        holder,
    })
}

/// The PID holding a `flock` on the inode (`dev`, `ino`), from `/proc/locks`, whose
/// lines read `1: FLOCK  ADVISORY  WRITE 1234 fe:00:5374075 0 EOF`.
fn lock_holder(dev: u64, ino: u64) -> Option<u32> {
    let wanted = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let is_flock = fields.get(1) == Some(&"FLOCK");
        (is_flock && fields.get(5) == Some(&wanted.as_str()))
            .then(|| fields.get(4)?.parse().ok())
            .flatten()
    })
}

/// "PID 1234, control socket /run/allowlist/control.sock", as far as `/proc` tells.
fn describe_daemon(pid: u32) -> String {
    match socket_of(pid) {
        Some(socket) => format!("PID {pid}, control socket {}", socket.display()),
        None => format!("PID {pid}"),
    }
}

/// The control socket of the daemon `pid`, from its `--config`.
fn socket_of(pid: u32) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|byte| *byte == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    let config = args
        .iter()
        .enumerate()
        .find_map(|(i, arg)| match arg.strip_prefix("--config=") {
            Some(path) => Some(path.to_string()),
            None if arg == "--config" => args.get(i + 1).cloned(),
            None => None,
        })
        .unwrap_or_else(|| DEFAULT_CONFIG.to_string());
    let config = match Path::new(&config) {
        path if path.is_absolute() => path.to_path_buf(),
        path => std::fs::read_link(format!("/proc/{pid}/cwd"))
            .ok()?
            .join(path),
    };
    Locations::load(&config)
        .ok()
        .map(|locations| locations.socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_directory_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _first = lock_dir("state_dir", dir.path()).unwrap();
        let error = lock_dir("state_dir", dir.path()).unwrap_err().to_string();
        assert!(
            error.contains(&format!("PID {}", std::process::id())),
            "{error}"
        );
        assert!(error.contains("in use by another allowlistd"), "{error}");
    }

    #[test]
    fn the_lock_is_free_again_once_its_holder_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        drop(lock_dir("state_dir", dir.path()).unwrap());
        lock_dir("state_dir", dir.path()).unwrap();
    }
}
