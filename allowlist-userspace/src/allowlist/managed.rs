//! The entries allowlistctl manages, by network and set (a network may be in several of
//! the operator's sets), with an index of their expiry times so that finding the next
//! one does not scan a list of millions after every change.

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::Bound,
};

use ipnet::IpNet;

use super::{Entry, SetName};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Managed {
    entries: BTreeMap<(IpNet, SetName), Entry>,
    expiring: BTreeSet<(u64, IpNet, SetName)>,
}

impl Managed {
    pub(super) fn insert(&mut self, entry: Entry) -> Option<Entry> {
        let key = (entry.network, entry.set.clone());
        if let Some(at) = entry.expires_at {
            self.expiring.insert((at, key.0, key.1.clone()));
        }
        let old = self.entries.insert(key, entry);
        self.unindex(old.as_ref());
        old
    }

    pub(super) fn remove(&mut self, network: &IpNet, set: &SetName) -> Option<Entry> {
        let old = self.entries.remove(&(*network, set.clone()));
        self.unindex(old.as_ref());
        old
    }

    fn unindex(&mut self, old: Option<&Entry>) {
        if let Some(Entry {
            network,
            set,
            expires_at: Some(at),
            ..
        }) = old
        {
            let now = self
                .entries
                .get(&(*network, set.clone()))
                .and_then(|e| e.expires_at);
            if now != Some(*at) {
                self.expiring.remove(&(*at, *network, set.clone()));
            }
        }
    }

    pub(super) fn get(&self, network: &IpNet, set: &SetName) -> Option<&Entry> {
        self.entries.get(&(*network, set.clone()))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Every set's entry for exactly `network`.
    pub(super) fn of_network(&self, network: IpNet) -> impl Iterator<Item = &Entry> {
        self.starting_at(network)
            .take_while(move |entry| entry.network == network)
    }

    /// Entries from `network` on, in (network, set) order.
    pub(super) fn starting_at(&self, network: IpNet) -> impl Iterator<Item = &Entry> {
        self.entries
            .range((Bound::Included((network, SetName::min())), Bound::Unbounded))
            .map(|(_, entry)| entry)
    }

    pub(super) fn next_expiry(&self) -> Option<u64> {
        self.expiring.first().map(|(at, _, _)| *at)
    }

    /// Entries whose time is up at `now`, as (network, set).
    pub(super) fn expired(&self, now: u64) -> Vec<(IpNet, SetName)> {
        self.expiring
            .iter()
            .take_while(|(at, _, _)| *at <= now)
            .map(|(_, network, set)| (*network, set.clone()))
            .collect()
    }

    /// Entries with an expiry, as (expires_at, network, set).
    pub(super) fn expiring(&self) -> impl Iterator<Item = &(u64, IpNet, SetName)> {
        self.expiring.iter()
    }
}
