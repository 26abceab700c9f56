//! The daemon's durable state in `state_dir/state.json`: the entries it owns (added with
//! allowlistctl), the mode, and a pending `activate --confirm`.
//!
//! Written atomically before a change is reported done, so a crash at any point leaves
//! the old or the new state. A state file that cannot be read stops the daemon instead of
//! starting without the operator's list.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{allowlist::Entry, config::Mode, durable};

const FILE: &str = "state.json";
const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub mode: Mode,
    /// The config file's `mode` when `mode` was last decided. If the file's value differs
    /// at start or reload, the operator edited it since, and the file wins.
    pub config_mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_confirm: Option<PendingConfirm>,
    /// Entries added with allowlistctl (origin cli or csv import).
    pub entries: Vec<Entry>,
    /// When each network of the config file was first listed (shown by `list`).
    #[serde(default)]
    pub config_first_seen: BTreeMap<IpNet, u64>,
}

/// An `activate --confirm` that reverts unless confirmed by `deadline`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingConfirm {
    pub revert_to: Mode,
    /// Seconds since the Unix epoch.
    pub deadline: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading {path}: {cause}")]
    Read { path: String, cause: io::Error },
    #[error("{path} is not a valid allowlist state file ({detail}); fix it, or move it away to start from the config file alone")]
    Corrupt { path: String, detail: String },
    #[error("writing {path}: {cause}")]
    Write { path: String, cause: io::Error },
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

impl State {
    pub fn new(mode: Mode, config_mode: Mode, entries: Vec<Entry>) -> Self {
        State {
            version: VERSION,
            mode,
            config_mode,
            pending_confirm: None,
            entries,
            config_first_seen: BTreeMap::new(),
        }
    }

    /// The saved state, or `None` on a first start.
    pub fn load(state_dir: &Path) -> Result<Option<State>, StateError> {
        let path = path(state_dir);
        let shown = path.display().to_string();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(cause) => return Err(StateError::Read { path: shown, cause }),
        };
        let state: State = serde_json::from_slice(&bytes).map_err(|error| StateError::Corrupt {
            path: shown.clone(),
            detail: error.to_string(),
        })?;
        if state.version != VERSION {
            return Err(StateError::Corrupt {
                path: shown,
                detail: format!("version {} is not {VERSION}", state.version),
            });
        }
        Ok(Some(state))
    }

    pub fn store(&self, state_dir: &Path) -> Result<(), StateError> {
        let path = path(state_dir);
        let write_error = |cause| StateError::Write {
            path: path.display().to_string(),
            cause,
        };
        fs::create_dir_all(state_dir).map_err(write_error)?;
        let bytes =
            serde_json::to_vec(self).map_err(|error| write_error(io::Error::other(error)))?;
        durable::write_atomically(&path, &bytes).map_err(write_error)
    }
}
