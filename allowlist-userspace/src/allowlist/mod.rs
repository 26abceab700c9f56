//! The allowlist as operators manage it: entries with descriptions, origins and expiry,
//! and the hosted-allowlist rules for changing them.
//!
//! Entries come from three owners:
//! - `config`: `[[allow]]` in the config file. The file owns them: hand edits + reload.
//! - `always`: `[[always]]` in the config file; enforced whatever the list, never
//!   removable from the CLI, and not counted when asking "is the list empty?".
//! - `cli` / `csv import`: added with `allowlistctl`; the daemon owns them and keeps them
//!   durable in `state_dir/state.json`.
//!
//! Imports are in `import.rs`. Past 500 lines only with its unit tests (the second part).

use std::{collections::BTreeMap, fmt, net::IpAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

mod import;
mod managed;
mod sets;

pub use import::{check_import_rows, ImportPlan, ImportRow, RowScope};
pub use sets::{check_set_name, SetName, ALWAYS_SET, CONFIG_SET, DEFAULT_SET, MAX_SET_NAME_BYTES};

use managed::{Interner, Managed};

use crate::{
    clock::now,
    compile::{CompiledList, Reach, TooManyPortRanges},
    config::{normalize, AllowEntry, Config, Mode},
    feeds::{FeedConfig, FeedSource},
    ports::PortSpec,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Config,
    Always,
    Cli,
    CsvImport,
    Feed,
    /// `[[allow]] host = "NAME"`: an address the name resolves to (its set is the name).
    Dns,
    /// A `[fleet]` set's entry, from etcd.
    Fleet,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Config => "config",
            Origin::Always => "always",
            Origin::Cli => "cli",
            Origin::CsvImport => "csv import",
            Origin::Feed => "feed",
            Origin::Dns => "dns",
            Origin::Fleet => "fleet",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub network: IpNet,
    #[serde(default)]
    pub description: String,
    pub origin: Origin,
    /// The set the entry belongs to. State files written before sets existed have none:
    /// their entries are the `default` set's.
    #[serde(default)]
    pub set: SetName,
    /// Seconds since the Unix epoch.
    pub added_at: u64,
    /// Seconds since the Unix epoch; the entry leaves the kernel then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Destination ports the network may reach; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
}

/// Longest description, in bytes: enough for a paragraph, bounded so that no file or
/// request can make one entry large.
pub const MAX_DESCRIPTION_BYTES: usize = 4096;

/// Refuses a description longer than [`MAX_DESCRIPTION_BYTES`].
pub fn check_description(description: &str) -> Result<(), String> {
    if description.len() > MAX_DESCRIPTION_BYTES {
        return Err(format!(
            "the description is {} bytes long; at most {MAX_DESCRIPTION_BYTES} are kept",
            description.len()
        ));
    }
    Ok(())
}

/// Why a change to the list was refused. Nothing changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListError {
    #[error("{network} is listed by the config file ({origin}); change or remove it there, then `allowlistctl reload`")]
    OwnedByConfig { network: IpNet, origin: Origin },
    #[error("{0} is not on the allowlist")]
    NotListed(IpNet),
    #[error("set {set} is read-only: its entries come from {owner}; change them there (then `allowlistctl reload`), or name another set with --set")]
    ReadOnlySet { set: SetName, owner: &'static str },
    #[error("{network} is not in set {set}; it is listed in set{} {}: name it with --set", if sets.len() > 1 { "s" } else { "" }, sets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    InOtherSets {
        network: IpNet,
        set: SetName,
        sets: Vec<SetName>,
    },
}

/// What `add` changes of an entry. `None` keeps what a listed entry has (a new one gets
/// no description, all ports, no expiry), so re-adding a network never silently clears
/// what was set before.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryUpdate {
    pub description: Option<String>,
    /// `Some(None)`: make permanent.
    pub expires_at: Option<Option<u64>>,
    /// `Some(vec![])`: all ports.
    pub ports: Option<Vec<PortSpec>>,
}

/// The whole list: config-owned entries plus the daemon-owned ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    config: BTreeMap<IpNet, Entry>,
    always: BTreeMap<IpNet, Entry>,
    managed: Managed,
    /// Each feed's entries (its last good list), by feed name.
    feeds: BTreeMap<SetName, BTreeMap<IpNet, Entry>>,
    /// The config file's feeds and fleet sets: sets the CLI may not change, with what
    /// owns each.
    feed_names: BTreeMap<SetName, &'static str>,
    public_ports: Vec<PortSpec>,
}

impl Allowlist {
    /// `first_seen`: when each config-owned network was first listed (from the state
    /// file), so a restart does not re-date them.
    pub fn new(config: &Config, managed: Vec<Entry>, first_seen: &BTreeMap<IpNet, u64>) -> Self {
        Self::restore(config, managed, first_seen).0
    }

    /// As [`Allowlist::new`], for entries read back from disk, which older versions may
    /// have saved as IPv4-mapped IPv6 networks the filter never matched: those are
    /// listed as the IPv4 networks they stand for (unless that one is listed already).
    /// Returns how many were.
    pub fn restore(
        config: &Config,
        managed: Vec<Entry>,
        first_seen: &BTreeMap<IpNet, u64>,
    ) -> (Self, usize) {
        let mut list = Allowlist {
            ..Allowlist::default()
        };
        let (normal, mapped): (Vec<Entry>, Vec<Entry>) = managed
            .into_iter()
            .partition(|entry| normalize(entry.network) == entry.network);
        let mut interner = Interner::default();
        // Set by set, sorted, so each set's tree is built in one pass with full nodes.
        let mut by_set: BTreeMap<SetName, Vec<(IpNet, managed::Kept)>> = BTreeMap::new();
        for entry in normal {
            let kept = managed::Kept::new(&entry, &mut interner);
            by_set
                .entry(entry.set)
                .or_default()
                .push((entry.network, kept));
        }
        for (set, mut entries) in by_set {
            // A later entry for the same network wins, as inserting one by one did.
            entries.reverse();
            entries.sort_by_key(|(network, _)| *network);
            entries.dedup_by_key(|(network, _)| *network);
            list.managed
                .replace_set(&set, managed::SetEntries::from_sorted(entries.into_iter()));
        }
        let normalized = mapped.len();
        for entry in mapped {
            let network = normalize(entry.network);
            if list.managed.get_kept(&network, &entry.set).is_none() {
                list.managed
                    .insert_interned(Entry { network, ..entry }, &mut interner);
            }
        }
        list.set_config(config);
        for entry in list.config.values_mut().chain(list.always.values_mut()) {
            if let Some(at) = first_seen.get(&entry.network) {
                entry.added_at = *at;
            }
        }
        (list, normalized)
    }

    /// When each config-owned network was first listed, for the state file.
    pub fn config_first_seen(&self) -> BTreeMap<IpNet, u64> {
        self.config
            .values()
            .chain(self.always.values())
            .map(|entry| (entry.network, entry.added_at))
            .collect()
    }

    /// Replaces the config-owned entries (start and reload). Entries keep the time they
    /// were first seen so `list` does not show every reload as a new addition.
    pub fn set_config(&mut self, config: &Config) {
        let now = now();
        let carry = |old: &BTreeMap<IpNet, Entry>, entry: &AllowEntry, origin| {
            let merged = Entry {
                network: entry.network,
                description: entry.description.clone(),
                set: match origin {
                    Origin::Always => SetName::always(),
                    _ => SetName::config(),
                },
                origin,
                added_at: old.get(&entry.network).map_or(now, |old| old.added_at),
                expires_at: None,
                ports: entry.ports.clone(),
            };
            (entry.network, merged)
        };
        self.config = config
            .allow
            .iter()
            .map(|entry| carry(&self.config, entry, Origin::Config))
            .collect();
        self.always = config
            .always
            .iter()
            .map(|entry| carry(&self.always, entry, Origin::Always))
            .collect();
        self.public_ports.clone_from(&config.public_ports);
        self.feed_names = config
            .feeds
            .iter()
            .map(|feed| {
                let owner = match feed.source {
                    FeedSource::Fleet => "etcd: it is a [fleet] set; change it with `allowlistctl fleet … --set NAME`",
                    _ => "a [[feed]] of the config file",
                };
                (feed.name.clone(), owner)
            })
            .collect();
        self.feeds
            .retain(|name, _| config.feeds.iter().any(|feed| feed.name == *name));
        for feed in &config.feeds {
            match &feed.source {
                FeedSource::Preset(preset) => {
                    let networks: Vec<IpNet> = preset
                        .networks
                        .iter()
                        .filter_map(|network| crate::config::parse_network(network).ok())
                        .collect();
                    self.set_feed(feed, &networks, now);
                }
                FeedSource::Fetch(_) | FeedSource::Dns(_) | FeedSource::Fleet => {
                    // The last good list stays; its entries take the feed's ports and
                    // description as the file now says.
                    let networks: Vec<IpNet> = self
                        .feeds
                        .get(&feed.name)
                        .map(|entries| entries.keys().copied().collect())
                        .unwrap_or_default();
                    if self.feeds.contains_key(&feed.name) {
                        self.set_feed(feed, &networks, now);
                    }
                }
            }
        }
    }

    /// Makes `networks` the entries of `feed` (its set), with the feed's ports and
    /// description. Networks listed before keep the time they were first listed.
    pub fn set_feed(&mut self, feed: &FeedConfig, networks: &[IpNet], now: u64) {
        let old = self.feeds.remove(&feed.name).unwrap_or_default();
        let entries = networks
            .iter()
            .map(|network| {
                let entry = Entry {
                    network: *network,
                    description: feed.description.clone(),
                    origin: match feed.source {
                        FeedSource::Dns(_) => Origin::Dns,
                        FeedSource::Fleet => Origin::Fleet,
                        _ => Origin::Feed,
                    },
                    set: feed.name.clone(),
                    added_at: old.get(network).map_or(now, |old| old.added_at),
                    expires_at: None,
                    ports: feed.ports.clone(),
                };
                (*network, entry)
            })
            .collect();
        self.feeds.insert(feed.name.clone(), entries);
    }

    /// Restores a fetched feed's last good list as saved, with when each network was
    /// first listed.
    pub fn restore_feed(&mut self, feed: &FeedConfig, saved: &BTreeMap<IpNet, u64>) {
        let networks: Vec<IpNet> = saved.keys().copied().collect();
        self.set_feed(feed, &networks, now());
        if let Some(entries) = self.feeds.get_mut(&feed.name) {
            for (network, entry) in entries.iter_mut() {
                if let Some(at) = saved.get(network) {
                    entry.added_at = *at;
                }
            }
        }
    }

    /// Gives entries of feed `name` descriptions of their own (a fleet set's, from etcd).
    pub fn describe_feed(&mut self, name: &SetName, descriptions: &BTreeMap<IpNet, String>) {
        if let Some(entries) = self.feeds.get_mut(name) {
            for (network, description) in descriptions {
                if let Some(entry) = entries.get_mut(network) {
                    entry.description.clone_from(description);
                }
            }
        }
    }

    /// How many entries feed `name` holds (`None`: never fetched), without copying them.
    pub fn feed_len(&self, name: &SetName) -> Option<usize> {
        self.feeds.get(name).map(BTreeMap::len)
    }

    /// Lists `network` in `feed` with its own `description` (a fleet set's entry as
    /// etcd changed it), keeping when it was first listed. Whether anything changed.
    pub fn put_feed_entry(
        &mut self,
        feed: &FeedConfig,
        network: IpNet,
        description: &str,
        now: u64,
    ) -> bool {
        let entries = self.feeds.entry(feed.name.clone()).or_default();
        if let Some(listed) = entries.get_mut(&network) {
            if listed.description == description {
                return false;
            }
            description.clone_into(&mut listed.description);
            return true;
        }
        let entry = Entry {
            network,
            description: description.to_string(),
            origin: match feed.source {
                FeedSource::Dns(_) => Origin::Dns,
                FeedSource::Fleet => Origin::Fleet,
                _ => Origin::Feed,
            },
            set: feed.name.clone(),
            added_at: now,
            expires_at: None,
            ports: feed.ports.clone(),
        };
        entries.insert(network, entry);
        true
    }

    /// Unlists `network` from feed `name`; whether it was listed.
    pub fn remove_feed_entry(&mut self, name: &SetName, network: &IpNet) -> bool {
        self.feeds
            .get_mut(name)
            .is_some_and(|entries| entries.remove(network).is_some())
    }

    /// The entries of feed `name` whose description is not `default`.
    pub fn feed_descriptions(&self, name: &SetName, default: &str) -> BTreeMap<IpNet, String> {
        self.feeds
            .get(name)
            .into_iter()
            .flat_map(BTreeMap::values)
            .filter(|entry| entry.description != default)
            .map(|entry| (entry.network, entry.description.clone()))
            .collect()
    }

    /// A feed's networks, with when each was first listed (`None`: never fetched).
    pub fn feed(&self, name: &SetName) -> Option<BTreeMap<IpNet, u64>> {
        self.feeds.get(name).map(|entries| {
            entries
                .iter()
                .map(|(network, entry)| (*network, entry.added_at))
                .collect()
        })
    }

    /// The operator's entries, set by set (assembled from their compact form).
    pub fn managed(&self) -> impl Iterator<Item = Entry> + '_ {
        self.managed.values()
    }

    /// Whether the operator's set `set` has entries.
    pub fn has_managed_set(&self, set: &SetName) -> bool {
        self.managed.has_set(set)
    }

    /// The feeds' entries, feed by feed.
    pub fn feed_entries(&self) -> impl Iterator<Item = &Entry> {
        self.feeds.values().flat_map(BTreeMap::values)
    }

    /// Every entry, sorted by network then origin then set.
    pub fn entries(&self) -> Vec<Entry> {
        let mut all: Vec<Entry> = self
            .always
            .values()
            .chain(self.config.values())
            .chain(self.feed_entries())
            .cloned()
            .chain(self.managed.values())
            .collect();
        all.sort_by(|a, b| {
            a.network
                .cmp(&b.network)
                .then(a.origin.cmp(&b.origin))
                .then(a.set.cmp(&b.set))
        });
        all
    }

    /// "The list is empty" in the hosted-allowlist sense: no source of the operator's
    /// own. Always-allowed infrastructure does not count, so activating still needs a
    /// deliberate entry; a feed's entries do (the operator configured the feed).
    pub fn has_operator_entries(&self) -> bool {
        !self.config.is_empty()
            || !self.managed.is_empty()
            || self.feeds.values().any(|feed| !feed.is_empty())
    }

    /// Whether enforcing this list in `mode` would drop all IP traffic to the host.
    pub fn locks_everyone_out(&self, mode: Mode) -> bool {
        mode == Mode::Enforce && !self.has_operator_entries()
    }

    /// The one rule every path that can enforce (start, reload, activate, remove,
    /// import --replace) checks: enforcing needs an entry of the operator's own. `what`
    /// names the refused step for the message.
    pub fn refuse_locking_everyone_out(&self, mode: Mode, what: &str) -> Result<(), String> {
        if !self.locks_everyone_out(mode) {
            return Ok(());
        }
        Err(format!(
            "{what} refused: enforcing an empty allowlist would drop all IP traffic to this host ([[always]] entries do not count). Add an entry of your own first (`allowlistctl add ADDRESS`, or [[allow]] in the config file), or use mode \"monitor\""
        ))
    }

    /// The prefixes the kernel should hold now: the union of every set.
    pub fn compile(&self) -> Result<CompiledList, TooManyPortRanges> {
        let owned = self
            .always
            .values()
            .chain(self.config.values())
            .chain(self.feed_entries())
            .map(|entry| (entry.network, entry.ports.as_slice()));
        let entries = owned
            .chain(self.managed.networks())
            .map(|(network, ports)| (network, Reach::from_ports(ports)));
        Ok(CompiledList::compile_with_ports(entries, &self.public_ports)?.0)
    }

    /// Every entry inside `region` or containing it, as the compile step sees them: all
    /// that the compiled prefixes inside `region` depend on.
    pub fn entries_around(&self, region: IpNet) -> Vec<(IpNet, Reach)> {
        let region = region.trunc();
        let last = IpNet::new(region.broadcast(), region.max_prefix_len())
            .expect("a full-length prefix is valid");
        let mut around = Vec::new();
        let by_network = [&self.always, &self.config]
            .into_iter()
            .chain(self.feeds.values());
        for entries in by_network {
            for (network, entry) in entries.range(region..=last) {
                if region.contains(network) {
                    around.push((*network, Reach::from_ports(&entry.ports)));
                }
            }
            for len in 0..region.prefix_len() {
                let wider = IpNet::new(region.network(), len)
                    .expect("shorter than a valid prefix")
                    .trunc();
                if let Some(entry) = entries.get(&wider) {
                    around.push((wider, Reach::from_ports(&entry.ports)));
                }
            }
        }
        for (network, ports) in self.managed.in_range(region..=last) {
            if region.contains(&network) {
                around.push((network, Reach::from_ports(ports)));
            }
        }
        for len in 0..region.prefix_len() {
            let wider = IpNet::new(region.network(), len)
                .expect("shorter than a valid prefix")
                .trunc();
            for (_, kept) in self.managed.of_network(wider) {
                around.push((wider, Reach::from_ports(kept.ports())));
            }
        }
        around
    }

    /// The managed entry for `network` in `set`, if any (to undo a change that failed
    /// later).
    pub fn managed_entry(&self, network: IpNet, set: &SetName) -> Option<Entry> {
        self.managed.get(&network.trunc(), set)
    }

    /// Puts a managed entry back as it was (or removes it, for `None`): the undo of a
    /// change the kernel or the disk did not take.
    pub fn restore_managed(&mut self, network: IpNet, set: &SetName, entry: Option<Entry>) {
        let network = network.trunc();
        match entry {
            Some(entry) => self.managed.insert(entry),
            None => self.managed.remove(&network, set),
        };
    }

    pub(crate) fn owner_in_config(&self, network: &IpNet) -> Option<Origin> {
        if self.always.contains_key(network) {
            Some(Origin::Always)
        } else if self.config.contains_key(network) {
            Some(Origin::Config)
        } else {
            None
        }
    }

    /// Refuses a set the CLI may not change: the config file's (`config`, `always`) and
    /// each feed's.
    pub fn check_writable_set(&self, set: &SetName) -> Result<(), ListError> {
        if set.is_config_file() {
            return Err(ListError::ReadOnlySet {
                set: set.clone(),
                owner: "the config file",
            });
        }
        if let Some(owner) = self.feed_names.get(set) {
            return Err(ListError::ReadOnlySet {
                set: set.clone(),
                owner,
            });
        }
        Ok(())
    }

    /// Adds `network` to `set`, or updates that set's entry with what `update` sets.
    /// Returns whether it was new.
    pub fn add(
        &mut self,
        network: IpNet,
        set: &SetName,
        update: EntryUpdate,
    ) -> Result<bool, ListError> {
        let network = normalize(network);
        self.check_writable_set(set)?;
        if let Some(origin) = self.owner_in_config(&network) {
            return Err(ListError::OwnedByConfig { network, origin });
        }
        let listed = self.managed.get(&network, set);
        let new = listed.is_none();
        let base = listed.unwrap_or(Entry {
            network,
            description: String::new(),
            origin: Origin::Cli,
            set: set.clone(),
            added_at: now(),
            expires_at: None,
            ports: Vec::new(),
        });
        let entry = Entry {
            description: update.description.unwrap_or(base.description),
            expires_at: update.expires_at.unwrap_or(base.expires_at),
            ports: update.ports.unwrap_or(base.ports),
            ..base
        };
        self.managed.insert(entry);
        Ok(new)
    }

    /// Removes `network` from `set`.
    pub fn remove(&mut self, network: IpNet, set: &SetName) -> Result<Entry, ListError> {
        let network = normalize(network);
        self.check_writable_set(set)?;
        if let Some(entry) = self.managed.remove(&network, set) {
            return Ok(entry);
        }
        if let Some(origin) = self.owner_in_config(&network) {
            return Err(ListError::OwnedByConfig { network, origin });
        }
        let elsewhere: Vec<SetName> = self
            .managed
            .of_network(network)
            .map(|(set, _)| set.clone())
            .collect();
        if elsewhere.is_empty() {
            Err(ListError::NotListed(network))
        } else {
            Err(ListError::InOtherSets {
                network,
                set: set.clone(),
                sets: elsewhere,
            })
        }
    }

    /// The entries listed here that `next` makes expire, or expire sooner: a change that
    /// will take them away when the timer comes, without asking again.
    pub fn expiring_sooner_in(&self, next: &Allowlist) -> Vec<(IpNet, SetName)> {
        next.managed
            .expiring()
            .filter(|(at, network, set)| {
                self.managed
                    .get_kept(network, set)
                    .is_some_and(|now| now.expires_at().is_none_or(|was| *at < was))
            })
            .map(|(_, network, set)| (network, set.clone()))
            .collect()
    }

    /// Removes entries whose time is up; returns them.
    pub fn expire(&mut self, now: u64) -> Vec<Entry> {
        self.managed
            .expired(now)
            .iter()
            .filter_map(|(network, set)| self.managed.remove(network, set))
            .collect()
    }

    pub fn next_expiry(&self) -> Option<u64> {
        self.managed.next_expiry()
    }

    /// The entry that decides a verdict for `addr`: the longest listed prefix containing
    /// it (always before config before feeds before the operator's sets at equal
    /// length). One lookup per prefix length and owner, so a `check` costs the same at a
    /// million entries.
    pub fn deciding_entry(&self, addr: IpAddr) -> Option<Entry> {
        let longest = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        (0..=longest).rev().find_map(|len| {
            let network = IpNet::new(addr, len).ok()?.trunc();
            [&self.always, &self.config]
                .into_iter()
                .chain(self.feeds.values())
                .find_map(|entries| entries.get(&network).cloned())
                .or_else(|| {
                    let (set, kept) = self.managed.of_network(network).next()?;
                    Some(kept.entry(network, set))
                })
        })
    }
}

#[cfg(test)]
mod tests;
