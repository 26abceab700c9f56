//! What the daemon will enforce when it starts, decided from the config and the saved
//! state before anything touches the kernel. `allowlistd check` runs exactly this, so
//! it accepts what the daemon accepts and refuses what the daemon refuses.

use std::path::Path;

use crate::{
    allowlist::Allowlist,
    compile::{CompiledList, TooManyPortRanges},
    config::{Config, Mode},
    durable,
    state::{self, PendingConfirm, Replay, State, StateError},
};

/// The list and mode a start would enforce, already compiled.
pub struct StartPlan {
    pub config: Config,
    pub allowlist: Allowlist,
    pub mode: Mode,
    /// The config file's `mode` (see [`State::config_mode`]).
    pub config_mode: Mode,
    pub pending_confirm: Option<PendingConfirm>,
    pub compiled: CompiledList,
    /// The state file and journal as found, `None` on a first start.
    pub saved: Option<(State, Replay)>,
}

/// Why the daemon would not start. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Directory(#[from] durable::UnsafeDirectory),
    #[error("{0}")]
    Refused(String),
}

impl StartPlan {
    /// Reads the saved state in `config.state_dir` (if the directory exists; it is not
    /// created) and works out what a start would enforce.
    pub fn new(config: Config) -> Result<StartPlan, PlanError> {
        if config.state_dir.exists() {
            durable::check_directory("state_dir", &config.state_dir)?;
        }
        let socket_dir = durable::socket_dir(&config.socket);
        if socket_dir.exists() {
            durable::check_directory("socket directory", &socket_dir)?;
        }
        let saved = State::load(&config.state_dir)?;
        let (mode, pending_confirm, managed, first_seen) = match &saved {
            Some((state, _)) => (
                // An edited `mode =` in the file wins over the mode last set with the CLI.
                if state.config_mode == config.mode {
                    state.mode
                } else {
                    config.mode
                },
                state.pending_confirm,
                state.entries.clone(),
                state.config_first_seen.clone(),
            ),
            None => (config.mode, None, Vec::new(), Default::default()),
        };
        let allowlist = Allowlist::new(&config, managed, &first_seen);
        if mode == Mode::Enforce && !allowlist.has_operator_entries() {
            return Err(PlanError::Refused(format!(
                "{}: mode = \"enforce\" with an empty allowlist would drop all IP traffic to this host; add [[allow]] entries or use mode = \"monitor\" (the saved state in {} has no entries either)",
                config.path.display(),
                state::path(&config.state_dir).display()
            )));
        }
        let compiled = allowlist
            .compile()
            .map_err(|error| PlanError::Refused(where_from(&config, &error)))?;
        Ok(StartPlan {
            config_mode: config.mode,
            config,
            allowlist,
            mode,
            pending_confirm,
            compiled,
            saved,
        })
    }
}

/// A compile error located in the config file (`FILE:LINE: …`) when an entry there
/// lists the network it names, else in the saved state.
pub fn where_from(config: &Config, error: &TooManyPortRanges) -> String {
    let line = config
        .allow
        .iter()
        .chain(&config.always)
        .find(|entry| entry.network.to_string() == error.network)
        .map(|entry| entry.line);
    match line {
        Some(line) => format!("{}:{line}: {error}", config.path.display()),
        None => format!(
            "{error} (the entries come from {} and the saved list in {})",
            config.path.display(),
            state::path(Path::new(&config.state_dir)).display()
        ),
    }
}
