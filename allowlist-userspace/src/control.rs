//! The control protocol between `allowlistctl` and `allowlistd`: one JSON request per
//! line on a Unix socket, one JSON reply per line.
//!
//! ```text
//! → {"command":"status"}
//! ← {"ok":true,"status":{"mode":"enforce",...}}
//! → {"command":"reload"}
//! ← {"ok":false,"error":"/etc/allowlist.toml:7: invalid cidr ..."}
//! ```

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{config::Mode, filter::AttachedMode};

/// Longest request line the daemon reads; anything longer is refused unread.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    Stats,
    /// Re-read the config file; the reply comes once the kernel judges by it.
    Reload,
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
    fn empty(ok: bool) -> Self {
        Self {
            ok,
            error: None,
            status: None,
            stats: None,
            message: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub mode: Mode,
    pub interfaces: Vec<InterfaceStatus>,
    pub entries: EntryCounts,
    pub pin_path: String,
    pub config: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub xdp_mode: AttachedMode,
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
    /// By reason name (allowlist_common::Reason::name), summed over CPUs.
    pub counters: BTreeMap<String, CounterValue>,
}

/// Why a request could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach allowlistd at {socket}: {source} (is the daemon running? is --socket right?)"
    )]
    Connect {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to allowlistd at {socket}: {source}")]
    Io {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("allowlistd at {socket} sent a reply that is not valid: {detail}")]
    BadReply { socket: String, detail: String },
}

/// Sends one request and waits for its reply.
pub fn request(socket: &Path, request: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    let shown = socket.display().to_string();
    let io = |source| ClientError::Io {
        socket: shown.clone(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        socket: shown.clone(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(request).map_err(|error| ClientError::BadReply {
        socket: shown.clone(),
        detail: error.to_string(),
    })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).map_err(io)?;
    serde_json::from_str(&reply).map_err(|error| ClientError::BadReply {
        socket: shown.clone(),
        detail: format!("{error}: {:?}", reply.trim_end()),
    })
}
