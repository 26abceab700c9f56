//! `allowlistd`: brings the kernel in line with the config, then serves the control socket.
//!
//! Start-up order matters for an operator's safety: the config is validated completely
//! before the kernel is touched; the list and mode are in the maps before the program is
//! attached anywhere; the socket only answers once every interface is protected.

use std::{
    io,
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
};
use tracing::{error, info, warn};

use crate::{
    compile::CompiledList,
    config::{Config, ConfigError},
    control::{self, CounterValue, EntryCounts, InterfaceStatus, Reply, Request, Stats, Status},
    filter::{Filter, FilterError, Pins},
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("control socket {path}: {message}")]
    Socket { path: String, message: String },
}

/// The daemon's state: the config it enforces and the kernel filter.
pub struct Daemon {
    config: Config,
    filter: Filter,
}

impl Daemon {
    /// Applies `config` to the kernel: loads (or takes over) the filter, fills the list,
    /// sets the mode, attaches to every configured interface.
    pub fn start(config: Config, ebpf_debug_log: bool) -> Result<Daemon, DaemonError> {
        for warning in &config.warnings {
            warn!("{warning}");
        }
        let pins = Pins::new(&config.pin_path);
        let taking_over = Filter::is_pinned(&pins)?;
        let filter = Filter::open(pins, ebpf_debug_log)?;
        if taking_over {
            info!(
                mode = %filter.mode(),
                ipv4 = filter.active_list().v4.len(),
                ipv6 = filter.active_list().v6.len(),
                "found a pinned filter still enforcing; taking it over"
            );
        }
        let mut daemon = Daemon { config, filter };
        daemon.converge()?;
        daemon.filter.pin_program()?;
        Ok(daemon)
    }

    /// Re-reads the config file; on any error the running state is kept.
    pub fn reload(&mut self) -> Result<String, DaemonError> {
        let config = Config::load(&self.config.path)?;
        for (what, old, new) in [
            ("socket", &self.config.socket, &config.socket),
            ("pin_path", &self.config.pin_path, &config.pin_path),
            ("state_dir", &self.config.state_dir, &config.state_dir),
        ] {
            if old != new {
                warn!(
                    "{what} changed from {} to {}; it takes effect at the next start",
                    old.display(),
                    new.display()
                );
            }
        }
        for warning in &config.warnings {
            warn!("{warning}");
        }
        let config = Config {
            socket: self.config.socket.clone(),
            pin_path: self.config.pin_path.clone(),
            state_dir: self.config.state_dir.clone(),
            ..config
        };
        let previous = std::mem::replace(&mut self.config, config);
        if let Err(error) = self.converge() {
            self.config = previous;
            return Err(error);
        }
        Ok(format!(
            "reloaded {}: mode {}, {} IPv4 and {} IPv6 prefixes",
            self.config.path.display(),
            self.filter.mode(),
            self.filter.active_list().v4.len(),
            self.filter.active_list().v6.len()
        ))
    }

    /// Brings the kernel to the config: list first, then mode, then attachments, so a
    /// newly attached interface is filtered by the right list from its first packet.
    fn converge(&mut self) -> Result<(), DaemonError> {
        let (list, report) =
            CompiledList::compile(self.config.allow.iter().map(|entry| entry.network));
        info!(
            entries = report.entries,
            duplicates = report.duplicates,
            covered = report.covered,
            ipv4 = report.v4,
            ipv6 = report.v6,
            "compiled the allowlist"
        );
        let applied = self.filter.apply(&list)?;
        info!(added = applied.added, removed = applied.removed, took = ?applied.took, "the kernel judges by the new list");
        self.filter.set_mode(self.config.mode)?;
        for interface in &self.config.interfaces {
            self.filter
                .attach(interface, self.config.xdp_mode, &self.config.state_dir)?;
        }
        self.filter
            .detach_others(&self.config.interfaces, &self.config.state_dir)?;
        info!(mode = %self.config.mode, interfaces = ?self.config.interfaces, "enforcing the config");
        Ok(())
    }

    pub fn status(&self) -> Status {
        let list = self.filter.active_list();
        Status {
            mode: self.filter.mode(),
            interfaces: self
                .filter
                .attached()
                .iter()
                .map(|(name, mode)| InterfaceStatus {
                    name: name.clone(),
                    xdp_mode: *mode,
                })
                .collect(),
            entries: EntryCounts {
                ipv4: list.v4.len(),
                ipv6: list.v6.len(),
            },
            pin_path: self.config.pin_path.display().to_string(),
            config: self.config.path.display().to_string(),
        }
    }

    pub fn stats(&self) -> Result<Stats, DaemonError> {
        let counters = self.filter.counters()?;
        Ok(Stats {
            counters: counters
                .into_iter()
                .map(|(name, counter)| {
                    (
                        name.to_string(),
                        CounterValue {
                            packets: counter.packets,
                            bytes: counter.bytes,
                        },
                    )
                })
                .collect(),
        })
    }

    fn handle(&mut self, request: Request) -> Reply {
        match request {
            Request::Status => Reply::with_status(self.status()),
            Request::Stats => match self.stats() {
                Ok(stats) => Reply::with_stats(stats),
                Err(error) => Reply::failed(error.to_string()),
            },
            Request::Reload => match self.reload() {
                Ok(message) => {
                    info!("{message}");
                    Reply::done(message)
                }
                Err(error) => {
                    error!(%error, "reload refused; the running state is kept");
                    Reply::failed(format!("{error}\nThe running list and mode are unchanged."))
                }
            },
        }
    }

    /// Serves the control socket until SIGTERM or SIGINT. Leaving does not detach the
    /// filter: the pinned program keeps enforcing the last applied list.
    pub async fn serve(self) -> Result<(), DaemonError> {
        let socket = self.config.socket.clone();
        let listener = bind_control_socket(&socket)?;
        info!(socket = %socket.display(), "ready");
        let daemon = Arc::new(Mutex::new(self));
        let socket_error = |error: io::Error| DaemonError::Socket {
            path: socket.display().to_string(),
            message: error.to_string(),
        };
        let mut hangup = signal(SignalKind::hangup()).map_err(socket_error)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(socket_error)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(socket_error)?;
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => { tokio::spawn(serve_client(stream, Arc::clone(&daemon))); }
                    Err(error) => warn!(%error, "accepting a control connection failed"),
                },
                _ = hangup.recv() => {
                    info!("SIGHUP: reloading the config");
                    let daemon = Arc::clone(&daemon);
                    let _ = tokio::task::spawn_blocking(move || lock(&daemon).handle(Request::Reload)).await;
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
        }
        let _ = std::fs::remove_file(&socket);
        info!("stopping; the filter stays attached and keeps enforcing the last applied list");
        Ok(())
    }
}

fn lock(daemon: &Mutex<Daemon>) -> std::sync::MutexGuard<'_, Daemon> {
    // A panic while holding the lock cannot leave the kernel half-changed (each change
    // is atomic there), so the state is still usable.
    daemon
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Answers one client's requests, one JSON line each. A client that sends garbage gets
/// an error reply; one that sends too much or nothing is disconnected. Neither can stall
/// other clients: only the handling of a parsed request takes the lock.
async fn serve_client(stream: UnixStream, daemon: Arc<Mutex<Daemon>>) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    loop {
        let mut line = Vec::new();
        let limit = control::MAX_REQUEST_BYTES as u64 + 1;
        let read = tokio::time::timeout(
            CLIENT_IDLE_TIMEOUT,
            (&mut reader).take(limit).read_until(b'\n', &mut line),
        )
        .await;
        let reply = match read {
            Err(_) | Ok(Err(_)) | Ok(Ok(0)) => return,
            Ok(Ok(_)) if line.len() > control::MAX_REQUEST_BYTES => {
                let reply = Reply::failed(format!(
                    "request longer than {} bytes refused",
                    control::MAX_REQUEST_BYTES
                ));
                let _ = write_reply(&mut writer, &reply).await;
                return;
            }
            Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
                Err(error) => Reply::failed(format!("malformed request: {error}")),
                Ok(request) => {
                    let daemon = Arc::clone(&daemon);
                    tokio::task::spawn_blocking(move || lock(&daemon).handle(request))
                        .await
                        .unwrap_or_else(|error| Reply::failed(format!("internal error: {error}")))
                }
            },
        };
        if write_reply(&mut writer, &reply).await.is_err() {
            return;
        }
    }
}

async fn write_reply(
    writer: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &Reply,
) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(reply).map_err(io::Error::other)?;
    bytes.push(b'\n');
    writer.write_all(&bytes).await
}

/// Binds the socket, replacing a stale file from a dead daemon but never a live one.
fn bind_control_socket(path: &Path) -> Result<UnixListener, DaemonError> {
    let fail = |message: String| DaemonError::Socket {
        path: path.display().to_string(),
        message,
    };
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(fail(
            "another allowlistd is already serving on this socket; stop it first".into(),
        ));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|error| fail(format!("creating {}: {error}", parent.display())))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(fail(format!("removing the stale socket: {error}"))),
    }
    let listener = UnixListener::bind(path).map_err(|error| fail(error.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|error| fail(format!("setting permissions: {error}")))?;
    Ok(listener)
}
