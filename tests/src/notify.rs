//! The service manager's end of sd_notify: a unix datagram socket a daemon is pointed at
//! with `NOTIFY_SOCKET`, as systemd would, since PID 1 of the test machine is not systemd.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One datagram: its `KEY=VALUE` lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification(pub BTreeMap<String, String>);

impl Notification {
    fn parse(datagram: &str) -> Self {
        Self(
            datagram
                .lines()
                .filter_map(|line| line.split_once('='))
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Whether it carries `KEY=1` (READY, RELOADING, STOPPING).
    pub fn says(&self, key: &str) -> bool {
        self.get(key) == Some("1")
    }
}

/// A bound notification socket; the file goes with the directory it was made in.
pub struct NotifyListener {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifyListener {
    /// Binds `dir/notify.sock`.
    pub fn bind(dir: &Path) -> Result<Self> {
        let path = dir.join("notify.sock");
        let socket =
            UnixDatagram::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        Ok(Self { socket, path })
    }

    /// The `NOTIFY_SOCKET` variable that points a daemon here.
    pub fn env(&self) -> (OsString, OsString) {
        ("NOTIFY_SOCKET".into(), self.path.clone().into_os_string())
    }

    /// Every notification until one carries `KEY=1` (included, last); fails after
    /// `timeout` with what did arrive.
    pub fn until(&self, key: &str, timeout: Duration) -> Result<Vec<Notification>> {
        self.until_one(&format!("{key}=1"), timeout, |notification| {
            notification.says(key)
        })
    }

    /// Every notification until one for which `last` holds (included, last); fails after
    /// `timeout`, saying it waited for `what`, with what did arrive.
    pub fn until_one(
        &self,
        what: &str,
        timeout: Duration,
        last: impl Fn(&Notification) -> bool,
    ) -> Result<Vec<Notification>> {
        let deadline = Instant::now() + timeout;
        let mut received = Vec::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no {what} within {timeout:?}; received {received:?}");
            }
            self.socket.set_read_timeout(Some(left))?;
            let length = match self.socket.recv(&mut buffer) {
                Ok(length) => length,
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(error) => return Err(error).context("receiving a notification"),
            };
            let notification = Notification::parse(&String::from_utf8_lossy(&buffer[..length]));
            let done = last(&notification);
            received.push(notification);
            if done {
                return Ok(received);
            }
        }
    }
}
