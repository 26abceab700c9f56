//! The control socket: accepting connections, deciding who may ask what, and handing
//! each parsed request to the daemon.
//!
//! Local users can reach the socket when it is opened to a group or to everyone, so no
//! user may starve root of it: connections per user other than root are capped
//! ([`MAX_CONNECTIONS_PER_USER`]), all of them together leave [`RESERVED_DESCRIPTORS`]
//! of the descriptor limit free, accept errors back off instead of spinning, and their
//! log lines are rate-limited.

use std::{
    collections::HashMap,
    io,
    os::fd::AsFd,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
    sync::Notify,
};
use tracing::{info, warn};

use crate::{
    access::{Access, Peer, SharedAccess},
    allowlist::{ImportRow, SetName},
    clock,
    control::{self, Reply, Request, Safety},
    daemon::{Actor, Daemon, DaemonError, FetchJob, FetchOutcome},
    metrics, service,
};

/// Connections one user other than root may hold open at once.
pub const MAX_CONNECTIONS_PER_USER: usize = 16;
/// Descriptors kept free of connections from users other than root, for root's own
/// connections and the daemon's work (state files, maps, netlink).
pub const RESERVED_DESCRIPTORS: u64 = 256;
/// A client that sends nothing for this long, or does not take its reply for this long,
/// is disconnected.
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a repeated warning (refused connections, accept errors) is logged at most.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// Longest pause after failed accepts (out of descriptors, say).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Raises the soft limit on open descriptors to the hard one, so connections and maps
/// are limited by what the administrator allowed rather than the login default (1024).
/// Returns the soft limit in force.
pub fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                info!(from = soft, to = hard, "raised the open-descriptor limit");
                return hard;
            }
            Err(error) => warn!(%error, soft, hard, "could not raise the open-descriptor limit"),
        }
    }
    soft
}

fn descriptor_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
}

/// Serves the control socket until SIGTERM or SIGINT. Leaving does not detach the
/// filter: the pinned program keeps enforcing the last applied list.
pub async fn serve(daemon: Daemon) -> Result<(), DaemonError> {
    let socket = daemon.socket().to_path_buf();
    let access = daemon.access();
    // Before READY=1: a SIGHUP (systemctl reload) that came before its handler would
    // end the daemon.
    let socket_error = |error: io::Error| DaemonError::Socket {
        path: socket.display().to_string(),
        message: error.to_string(),
    };
    let mut hangup = signal(SignalKind::hangup()).map_err(socket_error)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(socket_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(socket_error)?;
    let listener = bind_control_socket(&socket, &access.get())?;
    let metrics_listener = match daemon.metrics_listen() {
        Some(at) => Some((at, metrics::bind(at).await.map_err(DaemonError::Refused)?)),
        None => None,
    };
    info!(socket = %socket.display(), access = %access.get(), "ready");
    service::ready(&daemon.status());
    let daemon = Arc::new(Mutex::new(daemon));
    if let Some((at, listener)) = metrics_listener {
        info!(%at, "serving Prometheus metrics at http://{at}/metrics");
        tokio::spawn(metrics::serve(listener, Arc::clone(&daemon)));
    }
    let changed = Arc::new(Notify::new());
    tokio::spawn(run_timers(Arc::clone(&daemon), Arc::clone(&changed)));
    tokio::spawn(run_feeds(Arc::clone(&daemon), Arc::clone(&changed)));
    tokio::spawn(run_remote_filter_rebuilds(Arc::clone(&daemon)));
    {
        // Blocking HTTP to etcd on a thread of its own; it takes the lock only to apply.
        let daemon = Arc::clone(&daemon);
        if let Err(error) = std::thread::Builder::new()
            .name("fleet".into())
            .spawn(move || crate::fleet::follow::follow(daemon))
        {
            warn!(%error, "cannot start the fleet thread; [fleet] is not followed");
        }
    }
    let mut admission = Admission::new(descriptor_limit());
    let mut accept_errors = RateLimited::new(WARNING_INTERVAL);
    let mut backoff = Duration::ZERO;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff = Duration::ZERO;
                    if let Some((peer, slot)) = admission.admit(&stream) {
                        let client = Client { peer, access: access.clone(), _slot: slot };
                        tokio::spawn(serve_client(stream, client, Arc::clone(&daemon), Arc::clone(&changed)));
                    }
                }
                Err(error) => {
                    if let Some(suppressed) = accept_errors.ready() {
                        warn!(%error, suppressed, "accepting a control connection failed; backing off");
                    }
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                    tokio::time::sleep(backoff).await;
                }
            },
            _ = hangup.recv() => {
                info!("SIGHUP: reloading the config");
                let daemon = Arc::clone(&daemon);
                let _ = tokio::task::spawn_blocking(move || service::reload(&mut lock(&daemon))).await;
                changed.notify_one();
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    service::stopping();
    let _ = std::fs::remove_file(&socket);
    info!("stopping; the filter stays attached and keeps enforcing the last applied list");
    Ok(())
}

fn lock(daemon: &Mutex<Daemon>) -> std::sync::MutexGuard<'_, Daemon> {
    // A panic while holding the lock cannot leave the kernel half-changed (each change
    // is atomic there), so the state is still usable.
    daemon
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Longest the timer sleeps without looking at the deadlines again: a deadline far out
/// (or a clock that jumps) is re-read at least this often.
const TIMER_MAX_SLEEP: Duration = Duration::from_secs(3600);
/// Wait before trying again after expiry or a revert could not be applied.
const TIMER_RETRY: Duration = Duration::from_secs(5);

/// Wakes at the next expiry or confirm deadline, or when a change may have moved it (and
/// then updates the service manager's status line).
/// Nothing an entry holds can end this loop: waits are computed saturating, and a tick
/// that fails (or panics) is retried after [`TIMER_RETRY`].
async fn run_timers(daemon: Arc<Mutex<Daemon>>, changed: Arc<Notify>) {
    let mut retry = false;
    loop {
        let wait = if retry {
            TIMER_RETRY
        } else {
            let daemon = lock(&daemon);
            service::update(&daemon.status());
            daemon
                .next_deadline()
                .map_or(TIMER_MAX_SLEEP, |at| clock::until(at, TIMER_MAX_SLEEP))
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                let daemon = Arc::clone(&daemon);
                let ticked = tokio::task::spawn_blocking(move || lock(&daemon).tick()).await;
                retry = !matches!(ticked, Ok(true));
            }
            _ = changed.notified() => {}
        }
    }
}

/// Longest the feed timer sleeps without looking at the schedule again (a reload may
/// add a feed to fetch at once).
const FEEDS_MAX_SLEEP: Duration = Duration::from_secs(5);

/// Fetches each feed when it is due. Fetches run without the daemon's lock, so a slow
/// provider delays no request; only applying what one answered takes the lock.
async fn run_feeds(daemon: Arc<Mutex<Daemon>>, changed: Arc<Notify>) {
    loop {
        let wait = {
            let daemon = lock(&daemon);
            daemon
                .next_feed_due()
                .map_or(FEEDS_MAX_SLEEP, |at| clock::until(at, FEEDS_MAX_SLEEP))
        };
        tokio::time::sleep(wait).await;
        let jobs = lock(&daemon).due_feed_jobs(clock::now());
        if !jobs.is_empty() {
            refresh_feeds(&daemon, Ok(jobs), Safety::default(), Actor::FeedRefresh).await;
            changed.notify_one();
        }
    }
}

/// Runs fetches (`jobs`, or those of `feeds refresh [NAME]`) without the lock, then
/// applies their outcomes under it.
async fn refresh_feeds(
    daemon: &Arc<Mutex<Daemon>>,
    jobs: Result<Vec<FetchJob>, Option<SetName>>,
    safety: Safety,
    by: Actor,
) -> Reply {
    let jobs = match jobs {
        Ok(jobs) => jobs,
        Err(name) => match lock(daemon).feed_jobs(name.as_ref()) {
            Ok(jobs) => jobs,
            Err(message) => return Reply::failed(message),
        },
    };
    let fetched =
        tokio::task::spawn_blocking(move || jobs.into_iter().map(FetchJob::run).collect()).await;
    let outcomes: Vec<FetchOutcome> = match fetched {
        Ok(outcomes) => outcomes,
        Err(error) => return Reply::failed(format!("internal error: {error}")),
    };
    let daemon = Arc::clone(daemon);
    tokio::task::spawn_blocking(move || lock(&daemon).feeds_fetched(outcomes, &safety, &by))
        .await
        .unwrap_or_else(|error| Reply::failed(format!("internal error: {error}")))
}

/// How often the filter in front of the flow table is rebuilt from the live flows: the
/// remotes of flows that ended meanwhile still cost their packets a flow lookup.
const REMOTE_FILTER_REBUILD: Duration = Duration::from_secs(60);

async fn run_remote_filter_rebuilds(daemon: Arc<Mutex<Daemon>>) {
    loop {
        tokio::time::sleep(REMOTE_FILTER_REBUILD).await;
        let daemon = Arc::clone(&daemon);
        let _ = tokio::task::spawn_blocking(move || lock(&daemon).rebuild_remote_filter()).await;
    }
}

/// Counts open connections per user and refuses those over the caps.
struct Admission {
    open: Arc<Mutex<OpenConnections>>,
    /// Connections from users other than root, all together, at most.
    max_unprivileged: usize,
    refusals: RateLimited,
}

#[derive(Default)]
struct OpenConnections {
    by_user: HashMap<u32, usize>,
    unprivileged: usize,
}

/// A connection's place in the count (root's are not counted); given back when the
/// connection ends.
struct Slot {
    open: Arc<Mutex<OpenConnections>>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.uid == 0 {
            return;
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.unprivileged = open.unprivileged.saturating_sub(1);
        if let Some(count) = open.by_user.get_mut(&self.uid) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.by_user.remove(&self.uid);
            }
        }
    }
}

impl Admission {
    fn new(descriptor_limit: u64) -> Self {
        let max_unprivileged = descriptor_limit.saturating_sub(RESERVED_DESCRIPTORS).max(1);
        Admission {
            open: Arc::default(),
            max_unprivileged: usize::try_from(max_unprivileged).unwrap_or(usize::MAX),
            refusals: RateLimited::new(WARNING_INTERVAL),
        }
    }

    /// The peer and its slot, or `None` when the connection was refused (and closed).
    fn admit(&mut self, stream: &UnixStream) -> Option<(Peer, Slot)> {
        let peer = match Peer::of(stream.as_fd()) {
            Ok(peer) => peer,
            Err(error) => {
                warn!(%error, "cannot read a client's credentials; closing");
                return None;
            }
        };
        let slot = || Slot {
            open: Arc::clone(&self.open),
            uid: peer.uid,
        };
        if peer.uid == 0 {
            let slot = slot();
            return Some((peer, slot));
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mine = open.by_user.get(&peer.uid).copied().unwrap_or(0);
        if mine < MAX_CONNECTIONS_PER_USER && open.unprivileged < self.max_unprivileged {
            *open.by_user.entry(peer.uid).or_default() += 1;
            open.unprivileged += 1;
            drop(open);
            let slot = slot();
            return Some((peer, slot));
        }
        drop(open);
        let message = if mine >= MAX_CONNECTIONS_PER_USER {
            format!(
                "too many connections from uid {} (at most {MAX_CONNECTIONS_PER_USER} at once); close some and retry",
                peer.uid
            )
        } else {
            "the daemon is at its connection limit for users other than root; retry later".into()
        };
        if let Some(suppressed) = self.refusals.ready() {
            warn!(
                uid = peer.uid,
                suppressed, "refused a control connection: {message}"
            );
        }
        let mut line = serde_json::to_vec(&Reply::failed(message)).unwrap_or_default();
        line.push(b'\n');
        // Best effort, never waiting: the client may not be reading.
        let _ = stream.try_write(&line);
        None
    }
}

/// Lets a repeated log line through at most once per interval, counting the rest.
struct RateLimited {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    fn new(interval: Duration) -> Self {
        RateLimited {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(lines suppressed since the last one)` if this one may be logged.
    fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// One admitted connection.
struct Client {
    peer: Peer,
    access: SharedAccess,
    _slot: Slot,
}

/// Answers one client's requests, one JSON line each. A client that sends garbage gets
/// an error reply; one that sends too much or nothing is disconnected. Neither can stall
/// other clients: only the handling of a parsed request takes the lock. Permissions are
/// checked against the policy in force at each request.
async fn serve_client(
    stream: UnixStream,
    client: Client,
    daemon: Arc<Mutex<Daemon>>,
    changed: Arc<Notify>,
) {
    let peer = client.peer;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    loop {
        let limit = if client.access.get().may_change(&peer) {
            control::MAX_REQUEST_BYTES
        } else {
            control::MAX_READ_ONLY_REQUEST_BYTES
        };
        let mut line = Vec::new();
        let read = tokio::time::timeout(
            CLIENT_IDLE_TIMEOUT,
            (&mut reader)
                .take(limit as u64 + 1)
                .read_until(b'\n', &mut line),
        )
        .await;
        let reply = match read {
            Err(_) | Ok(Err(_)) | Ok(Ok(0)) => return,
            Ok(Ok(_)) if line.len() > limit => {
                let reply = Reply::failed(format!("request longer than {limit} bytes refused"));
                let _ = write_reply(&mut writer, &reply).await;
                return;
            }
            Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
                Err(error) => Reply::failed(format!("malformed request: {error}")),
                // Re-read: a reload may have changed the policy while this one waited.
                Ok(request) if !permitted(&client.access.get(), &peer, &request) => {
                    warn!(
                        by = %Actor::client(&peer),
                        "refused a request from a client without permission"
                    );
                    let reply = permission_denied(&client.access.get(), &peer, &request);
                    if matches!(request, Request::ImportStream { .. }) {
                        // Its rows would be read as requests: the connection ends here.
                        let _ = write_reply(&mut writer, &reply).await;
                        return;
                    }
                    reply
                }
                Ok(Request::ImportStream {
                    set,
                    replace,
                    dry_run,
                    safety,
                    summary_only,
                }) => {
                    let rows = match read_import_rows(&mut reader).await {
                        Ok(rows) => rows,
                        Err(RowsNotRead::Ended) => return,
                        Err(RowsNotRead::Refused(message)) => {
                            let reply = Reply::failed(format!(
                                "import refused, nothing changed: {message}"
                            ));
                            let _ = write_reply(&mut writer, &reply).await;
                            return;
                        }
                    };
                    let request = Request::Import {
                        rows,
                        set,
                        replace,
                        dry_run,
                        safety,
                    };
                    let mut reply = handle_blocking(&daemon, request, &peer).await;
                    if summary_only {
                        reply.import = None;
                    }
                    changed.notify_one();
                    reply
                }
                Ok(Request::FeedsRefresh { name, safety }) => {
                    let reply =
                        refresh_feeds(&daemon, Err(name), safety, Actor::client(&peer)).await;
                    changed.notify_one();
                    reply
                }
                Ok(request) => {
                    // A name added with `add --host` is resolved before the reply.
                    let resolve = match &request {
                        Request::AddHost { host, .. } => crate::feeds::dns::check_host(host)
                            .ok()
                            .and_then(|host| SetName::new(&host).ok()),
                        _ => None,
                    };
                    let mut reply = handle_blocking(&daemon, request, &peer).await;
                    if let (true, Some(name)) = (reply.ok, resolve) {
                        let resolved = refresh_feeds(
                            &daemon,
                            Err(Some(name)),
                            Safety::default(),
                            Actor::client(&peer),
                        )
                        .await;
                        let said = resolved.message.or(resolved.error).unwrap_or_default();
                        reply.message =
                            Some(format!("{}\n{said}", reply.message.unwrap_or_default()));
                    }
                    changed.notify_one();
                    reply
                }
            },
        };
        // A client that asks and never reads would hold the reply (a whole list) forever.
        let written = tokio::time::timeout(CLIENT_IDLE_TIMEOUT, write_reply(&mut writer, &reply));
        if !matches!(written.await, Ok(Ok(()))) {
            return;
        }
    }
}

/// Why the rows of a streamed import were not all read.
enum RowsNotRead {
    /// The client went away (or fell silent) before the empty line that ends the rows:
    /// it found a bad row in its file, or was stopped. Nothing is changed.
    Ended,
    /// A row the daemon cannot take; the message names it.
    Refused(String),
}

/// Reads the rows of an `import_stream` up to the empty line that ends them, each parsed
/// as it arrives, within the protocol's bounds ([`control::MAX_IMPORT_ROWS`] rows of
/// [`control::MAX_IMPORT_ROW_BYTES`], [`control::MAX_IMPORT_STREAM_BYTES`] in all, each
/// description within [`crate::allowlist::MAX_DESCRIPTION_BYTES`]).
async fn read_import_rows(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<Vec<ImportRow>, RowsNotRead> {
    let mut rows = Vec::new();
    let mut line = Vec::new();
    let mut bytes_read: usize = 0;
    loop {
        line.clear();
        let limit = control::MAX_IMPORT_ROW_BYTES;
        let read = tokio::time::timeout(
            CLIENT_IDLE_TIMEOUT,
            (&mut *reader)
                .take(limit as u64 + 1)
                .read_until(b'\n', &mut line),
        )
        .await;
        match read {
            Err(_) | Ok(Err(_)) | Ok(Ok(0)) => return Err(RowsNotRead::Ended),
            Ok(Ok(_)) => {}
        }
        if line.last() != Some(&b'\n') {
            if line.len() > limit {
                return Err(RowsNotRead::Refused(format!(
                    "row {} is longer than {limit} bytes",
                    rows.len() + 1
                )));
            }
            // The connection ended within a row.
            return Err(RowsNotRead::Ended);
        }
        if line == b"\n" {
            return Ok(rows);
        }
        bytes_read = bytes_read.saturating_add(line.len());
        if bytes_read > control::MAX_IMPORT_STREAM_BYTES {
            return Err(RowsNotRead::Refused(format!(
                "the rows up to row {} take more than {} bytes; import the file in parts",
                rows.len() + 1,
                control::MAX_IMPORT_STREAM_BYTES
            )));
        }
        if rows.len() >= control::MAX_IMPORT_ROWS {
            return Err(RowsNotRead::Refused(format!(
                "more than {} rows; the kernel holds at most {} prefixes per family",
                control::MAX_IMPORT_ROWS,
                allowlist_common::MAX_ENTRIES_PER_FAMILY
            )));
        }
        let row: ImportRow = serde_json::from_slice(&line).map_err(|error| {
            RowsNotRead::Refused(format!("row {} is not valid: {error}", rows.len() + 1))
        })?;
        // Checked as the row arrives, not once all are buffered.
        crate::allowlist::check_description(&row.description)
            .map_err(|error| RowsNotRead::Refused(format!("line {}: {error}", row.line)))?;
        rows.push(row);
    }
}

/// Handles `request` under the daemon's lock, on a thread where blocking is allowed (a
/// change writes maps and files).
async fn handle_blocking(daemon: &Arc<Mutex<Daemon>>, request: Request, peer: &Peer) -> Reply {
    let shared = Arc::clone(daemon);
    let by = Actor::client(peer);
    tokio::task::spawn_blocking(move || lock(&shared).handle(request, &by))
        .await
        .unwrap_or_else(|error| Reply::failed(format!("internal error: {error}")))
}

fn permitted(access: &Access, peer: &Peer, request: &Request) -> bool {
    if request.is_read_only() {
        access.may_read(peer)
    } else {
        access.may_change(peer)
    }
}

fn permission_denied(access: &Access, peer: &Peer, request: &Request) -> Reply {
    Reply::failed(format!(
        "permission denied: uid {} may not {}; changes need root{}",
        peer.uid,
        if request.is_read_only() {
            "read the allowlist"
        } else {
            "change the allowlist"
        },
        access
            .group
            .map(|_| " or the socket_group")
            .unwrap_or_default()
    ))
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
/// Its directory was checked at start (root's, writable by no one else), so nothing can
/// be swapped in between binding and setting the owner and mode.
fn bind_control_socket(path: &Path, access: &Access) -> Result<UnixListener, DaemonError> {
    let fail = |message: String| DaemonError::Socket {
        path: path.display().to_string(),
        message,
    };
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(fail(
            "another allowlistd is already serving on this socket; stop it first".into(),
        ));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(fail(format!("removing the stale socket: {error}"))),
    }
    let listener = UnixListener::bind(path).map_err(|error| fail(error.to_string()))?;
    access
        .apply_to_socket(path)
        .map_err(|error| fail(format!("setting owner and permissions: {error}")))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_warning_is_let_through_once_per_interval_with_a_count_of_the_rest() {
        let mut limited = RateLimited::new(Duration::from_secs(3600));
        assert_eq!(limited.ready(), Some(0));
        for _ in 0..1000 {
            assert_eq!(limited.ready(), None);
        }
        limited.last = Some(Instant::now() - Duration::from_secs(3601));
        assert_eq!(limited.ready(), Some(1000));
    }
}
