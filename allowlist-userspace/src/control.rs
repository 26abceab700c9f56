//! The control protocol between `allowlistctl` and `allowlistd`: one JSON request per
//! line on a Unix socket, one JSON reply per line.
//!
//! ```text
//! → {"command":"status"}
//! ← {"ok":true,"status":{"mode":"enforce",...}}
//! → {"command":"reload"}
//! ← {"ok":false,"error":"/etc/allowlist.toml:7: invalid cidr ..."}
//! ```
//!
//! An import streams its rows instead of sending them in one line: the request
//! (`import_stream`), then one row per line, then an empty line; the reply comes after
//! the empty line. A connection that ends before it (the client found a bad row in its
//! file) changes nothing. At most [`MAX_IMPORT_ROWS`] rows of at most
//! [`MAX_IMPORT_ROW_BYTES`] each are read; the older one-line `import` still works.
//!
//! ```text
//! → {"command":"import_stream","set":"default","replace":true}
//! → {"line":2,"network":"192.0.2.0/24","description":"office"}
//! → {"line":3,"network":"2001:db8::/48","description":""}
//! →
//! ← {"ok":true,"message":"imported 2 rows: 2 added, 0 updated, 0 removed, …"}
//! ```

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    allowlist::{Entry, ImportPlan, ImportRow, SetName},
    config::Mode,
    filter::{AttachedMode, EgressMechanism},
    ports::PortSpec,
    safety::AtRisk,
};

/// Longest request line the daemon reads from a client that may change the list (an
/// import of a million rows is ~50 MB); anything longer is refused unread.
pub const MAX_REQUEST_BYTES: usize = 256 << 20;
/// Longest request line from a client that may only read.
pub const MAX_READ_ONLY_REQUEST_BYTES: usize = 64 << 10;
/// Most rows one streamed import may carry: as many as the kernel holds for both
/// families, so the daemon never buffers more than a list it could enforce.
pub const MAX_IMPORT_ROWS: usize = 2 * allowlist_common::MAX_ENTRIES_PER_FAMILY as usize;
/// Longest row line of a streamed import: a description of the most bytes kept
/// ([`crate::allowlist::MAX_DESCRIPTION_BYTES`], each escaped as up to 6), a network,
/// ports and an expiry.
pub const MAX_IMPORT_ROW_BYTES: usize = 32 << 10;
/// Most bytes of rows one streamed import may carry in all, as much as a one-line
/// import ([`MAX_REQUEST_BYTES`]): rows of long descriptions cannot make the daemon
/// buffer more than that.
pub const MAX_IMPORT_STREAM_BYTES: usize = MAX_REQUEST_BYTES;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    Stats,
    List,
    Export,
    Check {
        address: IpAddr,
        /// A destination port to judge, e.g. 22/tcp.
        #[serde(default)]
        port: Option<PortSpec>,
    },
    /// Re-read the config file; the reply comes once the kernel judges by it.
    Reload,
    /// Adds a network, or changes the listed entry: fields left out keep what the entry
    /// has (a new one gets no description, all ports, no expiry).
    Add {
        network: IpNet,
        #[serde(default)]
        description: Option<String>,
        /// Make the entry temporary: it leaves the kernel this many seconds from now
        /// (1 s to [`crate::clock::MAX_EXPIRY`]).
        #[serde(default)]
        expires_in_secs: Option<u64>,
        /// Make the entry permanent.
        #[serde(default)]
        never_expires: bool,
        /// Destination ports the network may reach; empty means all.
        #[serde(default)]
        ports: Option<Vec<PortSpec>>,
        /// The set the entry belongs to (`default` when not given).
        #[serde(default)]
        set: SetName,
        /// The caller, for the lockout check of an update that narrows an entry; `force`
        /// also lists 0.0.0.0/0 or ::/0, which allow every source.
        #[serde(default)]
        safety: Safety,
    },
    Remove {
        network: IpNet,
        /// An entry that is not listed is no error: nothing to do (scripts converging a
        /// list). One the config file lists is still refused.
        #[serde(default)]
        if_present: bool,
        /// The set to remove it from (`default` when not given).
        #[serde(default)]
        set: SetName,
        #[serde(default)]
        safety: Safety,
    },
    Import {
        rows: Vec<ImportRow>,
        /// With `replace`, the set the file replaces; other sets are left alone.
        #[serde(default)]
        set: SetName,
        #[serde(default)]
        replace: bool,
        #[serde(default)]
        dry_run: bool,
        #[serde(default)]
        safety: Safety,
    },
    /// An import whose rows follow on lines of their own, ended by an empty line (see
    /// the module's documentation).
    ImportStream {
        #[serde(default)]
        set: SetName,
        #[serde(default)]
        replace: bool,
        #[serde(default)]
        dry_run: bool,
        #[serde(default)]
        safety: Safety,
        /// Answer with the summary only, without the networks the import added,
        /// updated and removed (a million of them, for a whole new list).
        #[serde(default)]
        summary_only: bool,
    },
    SetMode {
        mode: Mode,
        /// Revert to the previous mode unless `confirm` arrives within this many seconds.
        #[serde(default)]
        confirm_secs: Option<u64>,
        #[serde(default)]
        safety: Safety,
    },
    Confirm,
    /// The sources the program dropped most (or, with `would_drop`, would have dropped
    /// in monitor mode), from the kernel's table of dropped sources.
    Top {
        #[serde(default)]
        would_drop: bool,
        /// Only sources seen in the last this many seconds.
        #[serde(default)]
        since_secs: Option<u64>,
        /// At most this many rows; all when absent.
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Each feed: entries, last fetch, last change, error, next refresh.
    Feeds,
    /// Fetch feeds now (all fetched ones, or `name`); the reply comes once the kernel
    /// judges by what they answered (or says why not).
    FeedsRefresh {
        #[serde(default)]
        name: Option<SetName>,
        #[serde(default)]
        safety: Safety,
    },
    /// Apply a feed's refresh held for removing more than `max_shrink` of its entries.
    FeedsAccept {
        name: SetName,
        #[serde(default)]
        safety: Safety,
    },
    /// Lists a DNS name (`add --host`): its A and AAAA records, followed like an
    /// `[[allow]] host`, kept in the state file. Fields left out keep what a listed name
    /// has.
    AddHost {
        host: String,
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        ports: Option<Vec<PortSpec>>,
    },
    /// Removes a name added with `add --host` (and the addresses it allowed).
    RemoveHost {
        host: String,
        #[serde(default)]
        if_present: bool,
        #[serde(default)]
        safety: Safety,
    },
}

impl Request {
    /// Requests anyone allowed to read may make; everything else changes state.
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Request::Status
                | Request::Stats
                | Request::List
                | Request::Export
                | Request::Check { .. }
                | Request::Top { .. }
                | Request::Feeds
        )
    }
}

/// What the lockout check needs from the client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Safety {
    /// The caller's SSH client address (from SSH_CONNECTION), if any.
    #[serde(default)]
    pub caller: Option<IpAddr>,
    /// The local (server) port of the caller's SSH session, so that an entry listing the
    /// caller only for other ports is not taken as keeping the session.
    #[serde(default)]
    pub caller_port: Option<u16>,
    /// Go ahead even if someone would be cut off.
    #[serde(default)]
    pub force: bool,
}

/// The kernel's verdict for a source, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub address: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSpec>,
    pub mode: Mode,
    /// "pass" or "drop".
    pub verdict: String,
    /// The counter reason the packet would be counted under.
    pub reason: String,
    /// The longest listed prefix containing the address.
    pub entry: Option<Entry>,
    /// When the address's longest match is port-scoped: the ports it may reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_ports: Option<Vec<PortSpec>>,
    /// What the kernel's table of dropped sources holds for this address: packets it
    /// dropped (or monitor would have), per interface and reason.
    #[serde(default)]
    pub recent_drops: Vec<DroppedRow>,
}

/// A source the program dropped (or would have) on one interface for one reason, from
/// the kernel's table of dropped sources (`dropped_sources` in the config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedRow {
    pub source: IpAddr,
    pub interface: String,
    /// The counter reason (`dropped_not_listed`, `monitor_would_drop`, …).
    pub reason: String,
    /// Whether the packets were dropped (false: monitor mode passed them).
    pub dropped: bool,
    pub packets: u64,
    pub bytes: u64,
    /// Unix seconds of the last packet.
    pub last_seen: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<Entry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportPlan>,
    /// Set when the request was refused because it would cut these people off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_for_safety: Option<Vec<AtRisk>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feeds: Option<Vec<FeedStatus>>,
    /// The answer to `top`, most packets first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<Vec<DroppedRow>>,
    /// With `list`: what each entry that the kernel counts for admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hits: Option<Vec<EntryHitsRow>>,
}

/// What one entry admitted since it was listed (the kernel counts the entries it holds as
/// prefixes, up to allowlist_common::MAX_COUNTED_ENTRIES).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryHitsRow {
    pub network: IpNet,
    pub packets: u64,
    pub bytes: u64,
    /// Unix seconds of the last packet; none yet when absent.
    #[serde(default)]
    pub last_hit: Option<u64>,
}

impl Reply {
    pub fn done(message: impl Into<String>) -> Self {
        Self {
            message: Some(message.into()),
            ..Self::empty(true)
        }
    }
    pub fn failed(error: impl Into<String>) -> Self {
        Self {
            error: Some(error.into()),
            ..Self::empty(false)
        }
    }
    pub fn with_status(status: Status) -> Self {
        Self {
            status: Some(status),
            ..Self::empty(true)
        }
    }
    pub fn with_stats(stats: Stats) -> Self {
        Self {
            stats: Some(stats),
            ..Self::empty(true)
        }
    }
    pub fn with_entries(entries: Vec<Entry>) -> Self {
        Self {
            entries: Some(entries),
            ..Self::empty(true)
        }
    }
    pub fn with_check(check: CheckResult) -> Self {
        Self {
            check: Some(check),
            ..Self::empty(true)
        }
    }
    pub fn with_import(message: impl Into<String>, plan: ImportPlan) -> Self {
        Self {
            message: Some(message.into()),
            import: Some(plan),
            ..Self::empty(true)
        }
    }
    pub fn unsafe_change(error: impl Into<String>, at_risk: Vec<AtRisk>) -> Self {
        Self {
            error: Some(error.into()),
            refused_for_safety: Some(at_risk),
            ..Self::empty(false)
        }
    }
    pub fn with_top(rows: Vec<DroppedRow>) -> Self {
        Self {
            top: Some(rows),
            ..Self::empty(true)
        }
    }
    fn empty(ok: bool) -> Self {
        Self {
            ok,
            error: None,
            status: None,
            stats: None,
            message: None,
            entries: None,
            check: None,
            import: None,
            refused_for_safety: None,
            top: None,
            hits: None,
            feeds: None,
        }
    }

    pub fn with_feeds(feeds: Vec<FeedStatus>) -> Self {
        Self {
            feeds: Some(feeds),
            ..Self::empty(true)
        }
    }
}

/// One feed as `allowlistctl feeds` and `status` show it. Times are seconds since the
/// Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedStatus {
    pub name: SetName,
    /// The URL, or `preset NAME`.
    pub source: String,
    /// The body format (`None` for a preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Networks the feed lists now (its last good list).
    pub entries: usize,
    pub refresh_secs: u64,
    /// When the last fetch was tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetch: Option<u64>,
    /// When the provider last answered with a good list (or "not modified").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good: Option<u64>,
    /// When the list last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh: Option<u64>,
    /// Why the last fetch was not applied; the last good list stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A refresh held for `allowlistctl feeds accept NAME`, or a fleet change held
    /// because it would cut off a local session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// A fleet set: the etcd revision its list is as of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub mode: Mode,
    /// Set while an `activate --confirm` waits for `allowlistctl confirm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_deadline: Option<u64>,
    pub interfaces: Vec<InterfaceStatus>,
    pub entries: EntryCounts,
    pub pin_path: String,
    pub config: String,
    /// The running kernel's release.
    #[serde(default)]
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feeds: Vec<FeedStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub xdp_mode: AttachedMode,
    /// How the flow tracker is attached to the interface's egress (`tcx` on Linux 6.6+,
    /// `tc` before), or `None` when it is not.
    #[serde(default)]
    pub egress: Option<EgressMechanism>,
}

/// Prefixes in the kernel's active list, after compiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryCounts {
    pub ipv4: usize,
    pub ipv6: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// By reason name (allowlist_common::Reason::name), summed over CPUs and interfaces.
    pub counters: BTreeMap<String, CounterValue>,
    /// Each attached interface's counters, by interface name, then reason name. What no
    /// attached interface counted (an interface since detached, or counted before an
    /// upgrade to per-interface counters) is only in the totals.
    #[serde(default)]
    pub interfaces: BTreeMap<String, BTreeMap<String, CounterValue>>,
}

/// Why a request could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach allowlistd at {socket}: {cause} (is the daemon running? is --socket or ALLOWLIST_SOCKET right?)"
    )]
    Connect {
        socket: String,
        cause: std::io::Error,
    },
    #[error("permission denied: {socket} {detail}; run as root{hint}")]
    PermissionDenied {
        socket: String,
        detail: String,
        hint: String,
    },
    #[error("talking to allowlistd at {socket}: {cause}")]
    Io {
        socket: String,
        cause: std::io::Error,
    },
    #[error("allowlistd at {socket} sent a reply that is not valid: {detail}")]
    BadReply { socket: String, detail: String },
}

/// Says whose the socket (or the directory in the way) is and what would let this user in.
fn permission_denied(socket: &Path) -> ClientError {
    use std::os::unix::fs::MetadataExt as _;
    let describe = |path: &Path| {
        std::fs::metadata(path).ok().map(|meta| {
            let name = |gid| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                    .ok()
                    .flatten()
                    .map_or_else(|| gid.to_string(), |group| group.name)
            };
            let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(meta.uid()))
                .ok()
                .flatten()
                .map_or_else(|| meta.uid().to_string(), |user| user.name);
            let group = name(meta.gid());
            let owners = format!("{user}:{group} {:04o}", meta.mode() & 0o7777);
            (owners, group, meta.mode() & 0o070 != 0)
        })
    };
    let (detail, group) = match describe(socket) {
        Some((owners, group, group_access)) => {
            (format!("is {owners}"), group_access.then_some(group))
        }
        None => {
            let dir = socket.parent().unwrap_or(Path::new("/"));
            match describe(dir) {
                Some((owners, group, group_access)) => (
                    format!(
                        "is in {} ({owners}), which this user may not enter",
                        dir.display()
                    ),
                    group_access.then_some(group),
                ),
                None => ("cannot be reached by this user".into(), None),
            }
        }
    };
    ClientError::PermissionDenied {
        socket: socket.display().to_string(),
        detail,
        hint: group
            .filter(|group| group != "root")
            .map(|group| format!(" or join group {group} (socket_group in the config)"))
            .unwrap_or_default(),
    }
}

/// Sends one request and waits for its reply.
pub fn request(socket: &Path, request: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    let mut connection = Connection::open(socket, timeout)?;
    connection.send(request)?;
    connection.reply()
}

/// A connection to the daemon, for a request whose rows follow it
/// ([`Request::ImportStream`]): writes are buffered, so a million rows take few
/// system calls. Dropped before [`Connection::end_rows`], it tells the daemon to change
/// nothing.
pub struct Connection {
    socket: String,
    writer: std::io::BufWriter<UnixStream>,
}

impl Connection {
    pub fn open(socket: &Path, timeout: Duration) -> Result<Connection, ClientError> {
        let shown = socket.display().to_string();
        let stream = UnixStream::connect(socket).map_err(|cause| {
            if cause.kind() == std::io::ErrorKind::PermissionDenied {
                permission_denied(socket)
            } else {
                ClientError::Connect {
                    socket: shown.clone(),
                    cause,
                }
            }
        })?;
        let connection = Connection {
            socket: shown,
            writer: std::io::BufWriter::with_capacity(1 << 16, stream),
        };
        let set_timeout = connection.writer.get_ref().set_read_timeout(Some(timeout));
        set_timeout.map_err(|cause| connection.io(cause))?;
        Ok(connection)
    }

    fn io(&self, cause: std::io::Error) -> ClientError {
        ClientError::Io {
            socket: self.socket.clone(),
            cause,
        }
    }

    /// Writes `value` as one JSON line: a request, or a row after [`Request::ImportStream`].
    pub fn send(&mut self, value: &impl Serialize) -> Result<(), ClientError> {
        let written = serde_json::to_writer(&mut self.writer, value)
            .map_err(std::io::Error::from)
            .and_then(|()| self.writer.write_all(b"\n"));
        written.map_err(|cause| self.io(cause))
    }

    /// Ends the rows of a [`Request::ImportStream`] (an empty line).
    pub fn end_rows(&mut self) -> Result<(), ClientError> {
        let written = self.writer.write_all(b"\n");
        written.map_err(|cause| self.io(cause))
    }

    /// Waits for the reply to what was sent.
    pub fn reply(&mut self) -> Result<Reply, ClientError> {
        // A daemon that refused a streamed row replies and stops reading: the flush then
        // fails (EPIPE), but its reply, which says why, is waiting to be read.
        let flushed = self.writer.flush();
        let mut reply = String::new();
        let read = BufReader::new(self.writer.get_ref()).read_line(&mut reply);
        match (flushed, read) {
            (_, Ok(read)) if read > 0 => {}
            (Err(cause), _) => return Err(self.io(cause)),
            (Ok(()), Err(cause)) => return Err(self.io(cause)),
            (Ok(()), Ok(_)) => {}
        }
        serde_json::from_str(&reply).map_err(|error| ClientError::BadReply {
            socket: self.socket.clone(),
            detail: format!("{error}: {:?}", reply.trim_end()),
        })
    }
}
