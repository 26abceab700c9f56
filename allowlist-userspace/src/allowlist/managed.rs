//! The entries allowlistctl manages, set by set (a network may be in several of the
//! operator's sets), kept compact: a million entries are the daemon's largest structure.
//!
//! - Each set's entries are one B-tree keyed by network alone (the set is the map they
//!   are in), holding a [`Kept`] of 56 bytes: times as integers, the description and the
//!   ports as shared, immutable slices (none for an empty one), so rows of one import
//!   that say the same thing share one allocation ([`Interner`]).
//! - Each set is behind an `Arc`: cloning the whole list (to change it and keep the old
//!   one for a rollback) copies no entry, and a change copies only the set it changes
//!   (`import --replace` builds the new set whole instead of copying the old one).
//! - Each set keeps an index of its expiry times, so that finding the next one does not
//!   scan a list of millions after every change.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    num::NonZeroU64,
    ops::RangeInclusive,
    sync::Arc,
};

use ipnet::IpNet;

use super::{Entry, Origin, SetName};
use crate::ports::PortSpec;

/// A managed entry as kept: its network is the key and its set the map it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Kept {
    /// Seconds since the Unix epoch.
    pub(super) added_at: u64,
    /// Seconds since the Unix epoch. An expiry at the epoch itself (long past either
    /// way) is kept as 1 s after it.
    pub(super) expires_at: Option<NonZeroU64>,
    /// `None`: no description.
    pub(super) description: Option<Arc<str>>,
    /// `None`: all ports.
    pub(super) ports: Option<Arc<[PortSpec]>>,
    pub(super) origin: Origin,
}

impl Kept {
    pub(super) fn new(entry: &Entry, interner: &mut Interner) -> Kept {
        Kept {
            added_at: entry.added_at,
            expires_at: entry.expires_at.map(expiry),
            description: interner.description(&entry.description),
            ports: interner.ports(&entry.ports),
            origin: entry.origin,
        }
    }

    pub(super) fn expires_at(&self) -> Option<u64> {
        self.expires_at.map(NonZeroU64::get)
    }

    pub(super) fn ports(&self) -> &[PortSpec] {
        self.ports.as_deref().unwrap_or_default()
    }

    pub(super) fn entry(&self, network: IpNet, set: &SetName) -> Entry {
        Entry {
            network,
            description: self.description.as_deref().unwrap_or_default().to_owned(),
            origin: self.origin,
            set: set.clone(),
            added_at: self.added_at,
            expires_at: self.expires_at(),
            ports: self.ports().to_vec(),
        }
    }
}

pub(super) fn expiry(at: u64) -> NonZeroU64 {
    NonZeroU64::new(at).unwrap_or(NonZeroU64::MIN)
}

/// Shares one allocation among equal descriptions (and port lists) of one batch of
/// entries: an import, a state file read back. Bounded, so a file of a million
/// different descriptions costs one allocation each and no table of them.
#[derive(Default)]
pub(super) struct Interner {
    descriptions: HashSet<Arc<str>>,
    ports: HashSet<Arc<[PortSpec]>>,
}

impl Interner {
    /// Distinct values remembered per kind; later ones are allocated unshared.
    const MAX_REMEMBERED: usize = 4096;

    pub(super) fn description(&mut self, description: &str) -> Option<Arc<str>> {
        if description.is_empty() {
            return None;
        }
        Some(intern(&mut self.descriptions, description))
    }

    pub(super) fn ports(&mut self, ports: &[PortSpec]) -> Option<Arc<[PortSpec]>> {
        if ports.is_empty() {
            return None;
        }
        Some(intern(&mut self.ports, ports))
    }
}

fn intern<T: ?Sized + Eq + std::hash::Hash>(seen: &mut HashSet<Arc<T>>, value: &T) -> Arc<T>
where
    Arc<T>: for<'a> From<&'a T>,
{
    if let Some(shared) = seen.get(value) {
        return Arc::clone(shared);
    }
    let new = Arc::from(value);
    if seen.len() < Interner::MAX_REMEMBERED {
        seen.insert(Arc::clone(&new));
    }
    new
}

/// One set's entries, with the index of their expiry times.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct SetEntries {
    entries: BTreeMap<IpNet, Kept>,
    expiring: BTreeSet<(u64, IpNet)>,
}

impl SetEntries {
    /// A set of `entries` sorted by network, each once (built in one pass, with full
    /// B-tree nodes).
    pub(super) fn from_sorted(entries: impl Iterator<Item = (IpNet, Kept)>) -> SetEntries {
        let entries: BTreeMap<IpNet, Kept> = entries.collect();
        let expiring = entries
            .iter()
            .filter_map(|(network, kept)| Some((kept.expires_at()?, *network)))
            .collect();
        SetEntries { entries, expiring }
    }

    pub(super) fn get(&self, network: &IpNet) -> Option<&Kept> {
        self.entries.get(network)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&IpNet, &Kept)> {
        self.entries.iter()
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    fn insert(&mut self, network: IpNet, kept: Kept) -> Option<Kept> {
        if let Some(at) = kept.expires_at() {
            self.expiring.insert((at, network));
        }
        let at = kept.expires_at();
        let old = self.entries.insert(network, kept);
        if let Some(was) = old.as_ref().and_then(Kept::expires_at) {
            if Some(was) != at {
                self.expiring.remove(&(was, network));
            }
        }
        old
    }

    fn remove(&mut self, network: &IpNet) -> Option<Kept> {
        let old = self.entries.remove(network)?;
        if let Some(at) = old.expires_at() {
            self.expiring.remove(&(at, *network));
        }
        Some(old)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Managed {
    /// No set is empty: one whose last entry goes is dropped.
    sets: BTreeMap<SetName, Arc<SetEntries>>,
}

impl Managed {
    pub(super) fn insert(&mut self, entry: Entry) -> Option<Entry> {
        let kept = Kept::new(&entry, &mut Interner::default());
        self.insert_kept(&entry.set, entry.network, kept)
            .map(|old| old.entry(entry.network, &entry.set))
    }

    /// As [`Managed::insert`], sharing equal descriptions and ports through `interner`
    /// (a state file read back).
    pub(super) fn insert_interned(&mut self, entry: Entry, interner: &mut Interner) {
        let kept = Kept::new(&entry, interner);
        self.insert_kept(&entry.set, entry.network, kept);
    }

    pub(super) fn insert_kept(
        &mut self,
        set: &SetName,
        network: IpNet,
        kept: Kept,
    ) -> Option<Kept> {
        let entries = self.sets.entry(set.clone()).or_default();
        Arc::make_mut(entries).insert(network, kept)
    }

    pub(super) fn remove(&mut self, network: &IpNet, set: &SetName) -> Option<Entry> {
        let entries = self.sets.get_mut(set)?;
        entries.get(network)?;
        let entries_now = Arc::make_mut(entries);
        let old = entries_now.remove(network)?;
        if entries_now.len() == 0 {
            self.sets.remove(set);
        }
        Some(old.entry(*network, set))
    }

    pub(super) fn get(&self, network: &IpNet, set: &SetName) -> Option<Entry> {
        self.get_kept(network, set)
            .map(|kept| kept.entry(*network, set))
    }

    pub(super) fn get_kept(&self, network: &IpNet, set: &SetName) -> Option<&Kept> {
        self.sets.get(set)?.get(network)
    }

    /// The set's entries (empty when it has none).
    pub(super) fn set(&self, set: &SetName) -> Arc<SetEntries> {
        self.sets.get(set).cloned().unwrap_or_default()
    }

    /// Makes `entries` the whole of `set`.
    pub(super) fn replace_set(&mut self, set: &SetName, entries: SetEntries) {
        if entries.len() == 0 {
            self.sets.remove(set);
        } else {
            self.sets.insert(set.clone(), Arc::new(entries));
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Every entry, set by set, each set in network order.
    pub(super) fn values(&self) -> impl Iterator<Item = Entry> + '_ {
        self.sets.iter().flat_map(|(set, entries)| {
            entries
                .iter()
                .map(move |(network, kept)| kept.entry(*network, set))
        })
    }

    /// Every entry's network and ports: what the compile step reads, without
    /// assembling entries.
    pub(super) fn networks(&self) -> impl Iterator<Item = (IpNet, &[PortSpec])> + '_ {
        self.sets.values().flat_map(|entries| {
            entries
                .iter()
                .map(|(network, kept)| (*network, kept.ports()))
        })
    }

    /// Whether any entry is in `set`.
    pub(super) fn has_set(&self, set: &SetName) -> bool {
        self.sets.contains_key(set)
    }

    /// Every set's entry for exactly `network`, in set order.
    pub(super) fn of_network(
        &self,
        network: IpNet,
    ) -> impl Iterator<Item = (&SetName, &Kept)> + '_ {
        self.sets
            .iter()
            .filter_map(move |(set, entries)| Some((set, entries.get(&network)?)))
    }

    /// Every set's entries with networks in `range`, as (network, ports).
    pub(super) fn in_range(
        &self,
        range: RangeInclusive<IpNet>,
    ) -> impl Iterator<Item = (IpNet, &[PortSpec])> + '_ {
        self.sets.values().flat_map(move |entries| {
            entries
                .entries
                .range(range.clone())
                .map(|(network, kept)| (*network, kept.ports()))
        })
    }

    pub(super) fn next_expiry(&self) -> Option<u64> {
        self.sets
            .values()
            .filter_map(|entries| entries.expiring.first().map(|(at, _)| *at))
            .min()
    }

    /// Entries whose time is up at `now`, as (network, set).
    pub(super) fn expired(&self, now: u64) -> Vec<(IpNet, SetName)> {
        // Each set's expiring entries are in time order: only the due ones are looked at.
        self.sets
            .iter()
            .flat_map(|(set, entries)| {
                entries
                    .expiring
                    .iter()
                    .take_while(move |(at, _)| *at <= now)
                    .map(move |(_, network)| (*network, set.clone()))
            })
            .collect()
    }

    /// Entries with an expiry, as (expires_at, network, set), set by set.
    pub(super) fn expiring(&self) -> impl Iterator<Item = (u64, IpNet, &SetName)> + '_ {
        self.sets.iter().flat_map(|(set, entries)| {
            entries
                .expiring
                .iter()
                .map(move |(at, network)| (*at, *network, set))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(network: &str, description: &str, expires_at: Option<u64>) -> Entry {
        Entry {
            network: network.parse().unwrap(),
            description: description.into(),
            origin: Origin::CsvImport,
            set: SetName::default(),
            added_at: 1_700_000_000,
            expires_at,
            ports: Vec::new(),
        }
    }

    #[test]
    fn an_entry_kept_compactly_reads_back_as_it_was_added() {
        let mut managed = Managed::default();
        let scoped = Entry {
            ports: vec!["22/tcp".parse().unwrap(), "443/tcp".parse().unwrap()],
            ..entry("192.0.2.0/24", "office", Some(1_800_000_000))
        };
        for added in [entry("2001:db8::/48", "", None), scoped] {
            assert_eq!(managed.insert(added.clone()), None);
            assert_eq!(managed.get(&added.network, &added.set), Some(added));
        }
        assert_eq!(managed.next_expiry(), Some(1_800_000_000));
    }

    #[test]
    fn kept_entries_stay_small_and_share_equal_descriptions() {
        assert!(
            std::mem::size_of::<Kept>() <= 56,
            "{}",
            std::mem::size_of::<Kept>()
        );
        let mut interner = Interner::default();
        let a = Kept::new(&entry("10.0.0.1/32", "build runners", None), &mut interner);
        let b = Kept::new(&entry("10.0.0.2/32", "build runners", None), &mut interner);
        let (a, b) = (a.description.unwrap(), b.description.unwrap());
        assert!(Arc::ptr_eq(&a, &b));
        let empty = Kept::new(&entry("10.0.0.3/32", "", None), &mut interner);
        assert_eq!(empty.description, None);
        assert_eq!(empty.ports, None);
    }

    #[test]
    fn a_clone_shares_the_sets_until_one_of_them_changes() {
        let mut managed = Managed::default();
        managed.insert(entry("10.0.0.1/32", "a", None));
        let before = managed.clone();
        managed.insert(entry("10.0.0.2/32", "b", Some(5)));
        assert_eq!(before.values().count(), 1);
        assert_eq!(managed.values().count(), 2);
        assert_eq!(before.next_expiry(), None);
        assert_eq!(
            managed.expired(5),
            vec![("10.0.0.2/32".parse().unwrap(), SetName::default())]
        );
        managed.remove(&"10.0.0.1/32".parse().unwrap(), &SetName::default());
        managed.remove(&"10.0.0.2/32".parse().unwrap(), &SetName::default());
        assert!(managed.is_empty());
        assert!(!before.is_empty());
    }
}
