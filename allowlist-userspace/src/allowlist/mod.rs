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

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

mod import;

pub use import::{check_import_rows, ImportPlan, ImportRow, RowScope};

use crate::{
    clock::now,
    compile::{CompiledList, Reach, TooManyPortRanges},
    config::{normalize, AllowEntry, Config, Mode},
    ports::PortSpec,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Config,
    Always,
    Cli,
    CsvImport,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Config => "config",
            Origin::Always => "always",
            Origin::Cli => "cli",
            Origin::CsvImport => "csv import",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub network: IpNet,
    #[serde(default)]
    pub description: String,
    pub origin: Origin,
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
    public_ports: Vec<PortSpec>,
}

/// The daemon-owned entries, with an index of their expiry times so that finding the
/// next one does not scan a list of millions after every change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Managed {
    entries: BTreeMap<IpNet, Entry>,
    expiring: BTreeSet<(u64, IpNet)>,
}

impl Managed {
    fn insert(&mut self, entry: Entry) -> Option<Entry> {
        if let Some(at) = entry.expires_at {
            self.expiring.insert((at, entry.network));
        }
        let old = self.entries.insert(entry.network, entry);
        self.unindex(old.as_ref());
        old
    }

    fn remove(&mut self, network: &IpNet) -> Option<Entry> {
        let old = self.entries.remove(network);
        self.unindex(old.as_ref());
        old
    }

    fn unindex(&mut self, old: Option<&Entry>) {
        if let Some(Entry {
            network,
            expires_at: Some(at),
            ..
        }) = old
        {
            if self.entries.get(network).and_then(|e| e.expires_at) != Some(*at) {
                self.expiring.remove(&(*at, *network));
            }
        }
    }

    fn next_expiry(&self) -> Option<u64> {
        self.expiring.first().map(|(at, _)| *at)
    }

    /// Networks whose time is up at `now`.
    fn expired(&self, now: u64) -> Vec<IpNet> {
        self.expiring
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, network)| *network)
            .collect()
    }
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
        for entry in normal {
            list.managed.insert(entry);
        }
        let normalized = mapped.len();
        for entry in mapped {
            let network = normalize(entry.network);
            if !list.managed.entries.contains_key(&network) {
                list.managed.insert(Entry { network, ..entry });
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
    }

    pub fn managed(&self) -> impl Iterator<Item = &Entry> {
        self.managed.entries.values()
    }

    /// Every entry, sorted by network then origin.
    pub fn entries(&self) -> Vec<&Entry> {
        let mut all: Vec<&Entry> = self
            .always
            .values()
            .chain(self.config.values())
            .chain(self.managed.entries.values())
            .collect();
        all.sort_by(|a, b| a.network.cmp(&b.network).then(a.origin.cmp(&b.origin)));
        all
    }

    /// "The list is empty" in the hosted-allowlist sense: no source of the operator's
    /// own. Always-allowed infrastructure does not count, so activating still needs a
    /// deliberate entry.
    pub fn has_operator_entries(&self) -> bool {
        !self.config.is_empty() || !self.managed.entries.is_empty()
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

    /// The prefixes the kernel should hold now.
    pub fn compile(&self) -> Result<CompiledList, TooManyPortRanges> {
        let entries = self
            .entries()
            .into_iter()
            .map(|entry| (entry.network, Reach::from_ports(&entry.ports)));
        Ok(CompiledList::compile_with_ports(entries, &self.public_ports)?.0)
    }

    /// Every entry inside `region` or containing it, as the compile step sees them: all
    /// that the compiled prefixes inside `region` depend on.
    pub fn entries_around(&self, region: IpNet) -> Vec<(IpNet, Reach)> {
        let region = region.trunc();
        let last = IpNet::new(region.broadcast(), region.max_prefix_len())
            .expect("a full-length prefix is valid");
        let mut around = Vec::new();
        for entries in [&self.always, &self.config, &self.managed.entries] {
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
        around
    }

    /// The managed entry for `network`, if any (to undo a change that failed later).
    pub fn managed_entry(&self, network: IpNet) -> Option<&Entry> {
        self.managed.entries.get(&network.trunc())
    }

    /// Puts a managed entry back as it was (or removes it, for `None`): the undo of a
    /// change the kernel or the disk did not take.
    pub fn restore_managed(&mut self, network: IpNet, entry: Option<Entry>) {
        let network = network.trunc();
        match entry {
            Some(entry) => self.managed.insert(entry),
            None => self.managed.remove(&network),
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

    /// Adds `network`, or updates the listed entry with what `update` sets. Returns
    /// whether it was new.
    pub fn add(&mut self, network: IpNet, update: EntryUpdate) -> Result<bool, ListError> {
        let network = normalize(network);
        if let Some(origin) = self.owner_in_config(&network) {
            return Err(ListError::OwnedByConfig { network, origin });
        }
        let listed = self.managed.entries.get(&network).cloned();
        let new = listed.is_none();
        let base = listed.unwrap_or(Entry {
            network,
            description: String::new(),
            origin: Origin::Cli,
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

    pub fn remove(&mut self, network: IpNet) -> Result<Entry, ListError> {
        let network = normalize(network);
        if let Some(entry) = self.managed.remove(&network) {
            return Ok(entry);
        }
        match self.owner_in_config(&network) {
            Some(origin) => Err(ListError::OwnedByConfig { network, origin }),
            None => Err(ListError::NotListed(network)),
        }
    }

    /// The entries listed here that `next` makes expire, or expire sooner: a change that
    /// will take them away when the timer comes, without asking again.
    pub fn expiring_sooner_in(&self, next: &Allowlist) -> Vec<IpNet> {
        next.managed
            .expiring
            .iter()
            .filter(|(at, network)| {
                self.managed
                    .entries
                    .get(network)
                    .is_some_and(|now| now.expires_at.is_none_or(|was| *at < was))
            })
            .map(|(_, network)| *network)
            .collect()
    }

    /// Removes entries whose time is up; returns them.
    pub fn expire(&mut self, now: u64) -> Vec<Entry> {
        self.managed
            .expired(now)
            .iter()
            .filter_map(|network| self.managed.remove(network))
            .collect()
    }

    pub fn next_expiry(&self) -> Option<u64> {
        self.managed.next_expiry()
    }

    /// The entry that decides a verdict for `addr`: the longest listed prefix containing
    /// it (always before config before cli at equal length, as listed). One lookup per
    /// prefix length and owner, so a `check` costs the same at a million entries.
    pub fn deciding_entry(&self, addr: IpAddr) -> Option<&Entry> {
        let longest = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        (0..=longest).rev().find_map(|len| {
            let network = IpNet::new(addr, len).ok()?.trunc();
            [&self.always, &self.config, &self.managed.entries]
                .into_iter()
                .find_map(|entries| entries.get(&network))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(Path::new("t.toml"), text).unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn row(line: u64, network: &str, description: &str) -> ImportRow {
        ImportRow {
            line,
            network: crate::config::parse_network(network).unwrap(),
            description: description.into(),
            scope: None,
        }
    }

    fn described(description: &str) -> EntryUpdate {
        EntryUpdate {
            description: Some(description.into()),
            ..EntryUpdate::default()
        }
    }

    fn expiring(at: Option<u64>) -> EntryUpdate {
        EntryUpdate {
            expires_at: Some(at),
            ..EntryUpdate::default()
        }
    }

    const CONFIG: &str = r#"
interfaces = ["lo"]
mode = "monitor"
[[allow]]
cidr = "192.0.2.0/24"
description = "from config"
[[always]]
cidr = "169.254.169.254"
description = "metadata"
"#;

    #[test]
    fn re_adding_changes_what_is_given_and_keeps_the_rest() {
        let mut list = Allowlist::new(&config(CONFIG), vec![], &BTreeMap::new());
        let ssh = crate::ports::parse_list("22/tcp").unwrap();
        let first = EntryUpdate {
            description: Some("office".into()),
            expires_at: Some(Some(u64::MAX - 1)),
            ports: Some(ssh.clone()),
        };
        assert!(list.add(net("203.0.113.0/24"), first).unwrap());
        assert!(!list
            .add(net("203.0.113.9/24"), described("new office"))
            .unwrap());
        let entry = list.managed().next().unwrap().clone();
        assert_eq!(
            (entry.description.as_str(), entry.expires_at, &entry.ports),
            ("new office", Some(u64::MAX - 1), &ssh),
            "only the description was given"
        );
        assert!(!list
            .add(net("203.0.113.0/24"), EntryUpdate::default())
            .unwrap());
        assert_eq!(list.managed().next().unwrap().description, "new office");
        list.add(net("203.0.113.0/24"), described("")).unwrap();
        assert_eq!(
            list.managed().next().unwrap().description,
            "",
            "-d \"\" clears"
        );
    }

    #[test]
    fn config_owned_entries_cannot_be_changed_from_the_cli() {
        let mut list = Allowlist::new(&config(CONFIG), vec![], &BTreeMap::new());
        assert!(matches!(
            list.remove(net("169.254.169.254/32")),
            Err(ListError::OwnedByConfig {
                origin: Origin::Always,
                ..
            })
        ));
        assert!(matches!(
            list.remove(net("192.0.2.0/24")),
            Err(ListError::OwnedByConfig {
                origin: Origin::Config,
                ..
            })
        ));
        assert!(matches!(
            list.add(net("192.0.2.0/24"), EntryUpdate::default()),
            Err(ListError::OwnedByConfig { .. })
        ));
        assert_eq!(
            list.remove(net("198.51.100.1/32")),
            Err(ListError::NotListed(net("198.51.100.1/32")))
        );
    }

    #[test]
    fn always_entries_do_not_make_the_list_non_empty() {
        let only_always =
            config("interfaces = [\"lo\"]\nmode = \"off\"\n[[always]]\ncidr = \"10.0.0.1\"\n");
        let mut list = Allowlist::new(&only_always, vec![], &BTreeMap::new());
        assert!(!list.has_operator_entries());
        list.add(net("10.9.9.9/32"), EntryUpdate::default())
            .unwrap();
        assert!(list.has_operator_entries());
        assert_eq!(list.compile().unwrap().v4.len(), 2);
    }

    #[test]
    fn import_adds_updates_and_replace_removes_the_rest() {
        let mut list = Allowlist::new(&config(CONFIG), vec![], &BTreeMap::new());
        list.add(net("10.0.0.1/32"), described("keep")).unwrap();
        list.add(net("10.0.0.2/32"), described("old")).unwrap();
        list.add(net("10.0.0.3/32"), EntryUpdate::default())
            .unwrap();
        let rows = [
            row(2, "10.0.0.1", "keep"),
            row(3, "10.0.0.2", "first"),
            row(4, "10.0.0.2", "last wins"),
            row(5, "2001:db8::/48", "v6"),
            row(6, "192.0.2.0/24", "config owns this"),
        ];
        let plan = list.plan_import(&rows, true);
        assert_eq!(plan.added, [net("2001:db8::/48")]);
        assert_eq!(plan.updated, [net("10.0.0.2/32")]);
        assert_eq!(plan.removed, [net("10.0.0.3/32")]);
        assert_eq!(plan.unchanged_config, [net("192.0.2.0/24")]);
        assert_eq!(list.import(&rows, true), plan);
        let descriptions: Vec<_> = list
            .managed()
            .map(|e| (e.network.to_string(), e.description.clone()))
            .collect();
        assert_eq!(
            descriptions,
            [
                ("10.0.0.1/32".to_string(), "keep".to_string()),
                ("10.0.0.2/32".to_string(), "last wins".to_string()),
                ("2001:db8::/48".to_string(), "v6".to_string())
            ]
        );
    }

    #[test]
    fn expired_entries_leave_and_the_next_expiry_is_known() {
        let mut list = Allowlist::new(&config(CONFIG), vec![], &BTreeMap::new());
        list.add(net("10.0.0.1/32"), expiring(Some(100))).unwrap();
        list.add(net("10.0.0.2/32"), expiring(Some(200))).unwrap();
        assert_eq!(list.next_expiry(), Some(100));
        assert_eq!(list.expire(150).len(), 1);
        assert_eq!(list.next_expiry(), Some(200));
        // Updating an entry moves or clears its expiry.
        list.add(net("10.0.0.2/32"), expiring(Some(300))).unwrap();
        assert_eq!(list.next_expiry(), Some(300));
        list.add(net("10.0.0.2/32"), expiring(None)).unwrap();
        assert_eq!(list.next_expiry(), None);
        assert!(list.expire(u64::MAX).is_empty());
    }

    #[test]
    fn the_longest_prefix_decides() {
        let mut list = Allowlist::new(&config(CONFIG), vec![], &BTreeMap::new());
        list.add(net("192.0.2.128/25"), described("narrow"))
            .unwrap();
        let entry = list.deciding_entry("192.0.2.200".parse().unwrap()).unwrap();
        assert_eq!(entry.description, "narrow");
        let entry = list.deciding_entry("192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!(entry.origin, Origin::Config);
        assert!(list
            .deciding_entry("198.51.100.1".parse().unwrap())
            .is_none());
    }
}
