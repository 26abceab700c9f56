//! What the daemon will enforce when it starts, decided from the config and the saved
//! state before anything touches the kernel. `allowlistd check` runs exactly this, so
//! it accepts what the daemon accepts and refuses what the daemon refuses.

use std::path::Path;

use crate::{
    allowlist::Allowlist,
    clock::now,
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
    /// A saved `--confirm` change whose deadline passed while no daemon ran: it is
    /// reverted (`mode` is its `revert_to`), as the kernel did if packets came.
    pub reverted_while_stopped: Option<PendingConfirm>,
    pub compiled: CompiledList,
    /// What was on disk, `None` on a first start.
    pub saved: Option<Saved>,
}

/// The saved state as found, without its entries (they are in the plan's allowlist):
/// enough to tell whether it must be written again.
#[derive(Clone, Debug)]
pub struct Saved {
    pub mode: Mode,
    pub config_mode: Mode,
    pub pending_confirm: Option<PendingConfirm>,
    pub config_first_seen: std::collections::BTreeMap<ipnet::IpNet, u64>,
    pub generation: u64,
    pub entries: usize,
    /// Entries an older version saved in a form the filter never matched (an
    /// IPv4-mapped IPv6 network), now listed as what they stand for.
    pub normalized: usize,
    pub replay: Replay,
    /// Each fetched feed's last good list.
    pub feeds: std::collections::BTreeMap<crate::allowlist::SetName, state::SavedFeed>,
    /// Names added with `allowlistctl add --host`.
    pub hosts: Vec<crate::feeds::dns::CliHost>,
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
    pub fn new(mut config: Config) -> Result<StartPlan, PlanError> {
        durable::check_creatable("state_dir", &config.state_dir)?;
        durable::check_creatable("socket directory", &durable::socket_dir(&config.socket))?;
        let (managed, saved) = match State::load(&config.state_dir)? {
            Some((mut state, replay)) => {
                let entries = std::mem::take(&mut state.entries);
                let saved = Saved {
                    mode: state.mode,
                    config_mode: state.config_mode,
                    pending_confirm: state.pending_confirm,
                    config_first_seen: state.config_first_seen,
                    generation: state.generation,
                    entries: entries.len(),
                    normalized: 0,
                    replay,
                    feeds: state.feeds,
                    hosts: state.hosts,
                };
                (entries, Some(saved))
            }
            None => (Vec::new(), None),
        };
        let (mut mode, mut pending_confirm) = match &saved {
            // An edited `mode =` in the file wins over the mode last set with the CLI.
            Some(saved) if saved.config_mode == config.mode => (saved.mode, saved.pending_confirm),
            Some(saved) => (config.mode, saved.pending_confirm),
            None => (config.mode, None),
        };
        let reverted_while_stopped = pending_confirm.filter(|pending| pending.deadline <= now());
        if let Some(pending) = reverted_while_stopped {
            (mode, pending_confirm) = (pending.revert_to, None);
        }
        let first_seen = saved
            .as_ref()
            .map(|saved| saved.config_first_seen.clone())
            .unwrap_or_default();
        if let Some(saved) = &saved {
            config.add_cli_hosts(&saved.hosts);
        }
        let (mut allowlist, normalized) = Allowlist::restore(&config, managed, &first_seen);
        if let Some(saved) = &saved {
            for feed in &config.feeds {
                if let (Some(saved), Some(key)) = (saved.feeds.get(&feed.name), feed.source.key()) {
                    // The last good list of the URL (or name) the file names: a feed
                    // pointed elsewhere starts empty and fetches.
                    if saved.url == key {
                        allowlist.restore_feed(feed, &saved.networks);
                        allowlist.describe_feed(&feed.name, &saved.descriptions);
                    }
                }
            }
        }
        let saved = saved.map(|saved| Saved {
            normalized,
            ..saved
        });
        allowlist
            .refuse_locking_everyone_out(
                mode,
                &format!(
                    "{}: starting with mode \"enforce\" (and no entries saved in {} either)",
                    config.path.display(),
                    state::path(&config.state_dir).display()
                ),
            )
            .map_err(PlanError::Refused)?;
        let compiled = allowlist
            .compile()
            .map_err(|error| PlanError::Refused(where_from(&config, &error)))?;
        compiled.check_kernel_limits().map_err(|problem| {
            PlanError::Refused(format!(
                "{}: {problem} (the entries come from this file and the saved list in {})",
                config.path.display(),
                state::path(&config.state_dir).display()
            ))
        })?;
        Ok(StartPlan {
            config_mode: config.mode,
            config,
            allowlist,
            mode,
            pending_confirm,
            reverted_while_stopped,
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
