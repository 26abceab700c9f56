//! The fleet in the daemon: what a new revision of the followed sets may change. Each
//! set goes through the path every change takes (`commit_feed`: compiled, lockout-
//! checked, atomic in the kernel, saved with its revision). A change that would cut off
//! a local session is held on this host, reported, and tried again while it is the
//! newest; a malformed key is reported and left out. The watch itself, and everything
//! that talks to etcd, runs without the daemon's lock (`crate::fleet::follow`).

use std::collections::BTreeMap;

use ipnet::IpNet;
use tracing::{info, warn};

use super::{feeds::Held, Daemon, Kernel, Refusal};
use crate::{
    allowlist::SetName,
    clock::now,
    control::Safety,
    feeds::{fetch::Validators, FeedConfig, FeedSource},
    fleet::{FleetConfig, HostStatus},
};

/// The connection to etcd, as the watch last found it.
#[derive(Clone, Debug, Default)]
pub(crate) struct FleetRuntime {
    connected: bool,
    /// Why the last attempt failed, and since when.
    error: Option<(u64, String)>,
}

/// What [`Daemon::fleet_baseline`] returns: revision, cluster id, sets.
pub type FleetBaseline = (
    Option<i64>,
    Option<u64>,
    BTreeMap<SetName, BTreeMap<IpNet, String>>,
);

/// One followed set as etcd holds it at a revision, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredSet {
    pub networks: BTreeMap<IpNet, String>,
    /// Keys left out, and why.
    pub malformed: Vec<String>,
    /// Why the set cannot be taken at all (too many entries).
    pub refused: Option<String>,
}

impl<K: Kernel> Daemon<K> {
    pub fn fleet_config(&self) -> Option<FleetConfig> {
        self.config.fleet.clone()
    }

    fn fleet_sets(&self) -> Vec<FeedConfig> {
        self.config
            .feeds
            .iter()
            .filter(|feed| matches!(feed.source, FeedSource::Fleet))
            .cloned()
            .collect()
    }

    /// The followed sets as last applied (network → description), the revision they
    /// are all as of (`None` when one was never applied: read everything) and the etcd
    /// cluster it is of (`None` if not saved).
    pub fn fleet_baseline(&self) -> FleetBaseline {
        let mut revision: Option<i64> = Some(i64::MAX);
        let mut cluster = None;
        let mut sets = BTreeMap::new();
        for feed in self.fleet_sets() {
            let saved = self.feeds.get(&feed.name).map(|runtime| &runtime.saved);
            revision = revision
                .zip(saved.and_then(|saved| saved.revision))
                .map(|(a, b)| a.min(b));
            cluster = cluster.or(saved.and_then(|saved| saved.cluster_id));
            sets.insert(feed.name.clone(), self.fleet_entries(&feed.name));
        }
        (revision.filter(|r| *r != i64::MAX), cluster, sets)
    }

    fn fleet_entries(&self, name: &SetName) -> BTreeMap<IpNet, String> {
        self.allowlist
            .feed_entries()
            .filter(|entry| entry.set == *name)
            .map(|entry| (entry.network, entry.description.clone()))
            .collect()
    }

    /// Records whether the watch reaches etcd; the list enforced does not change.
    pub fn fleet_connection(&mut self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                if !self.fleet.connected {
                    info!("fleet: connected to etcd");
                }
                self.fleet = FleetRuntime {
                    connected: true,
                    error: None,
                };
            }
            Err(error) => {
                if self.fleet.connected || self.fleet.error.is_none() {
                    warn!(
                        "fleet: etcd unreachable, still enforcing the last applied list: {error}"
                    );
                }
                let since = self.fleet.error.as_ref().map_or_else(now, |(at, _)| *at);
                self.fleet = FleetRuntime {
                    connected: false,
                    error: Some((since, error)),
                };
            }
        }
    }

    /// What `feeds` shows for a fleet set while etcd is out of reach.
    pub(super) fn fleet_disconnected(&self, feed: &FeedConfig) -> Option<String> {
        if !matches!(feed.source, FeedSource::Fleet) || self.fleet.connected {
            return None;
        }
        let (since, error) = self.fleet.error.as_ref()?;
        Some(format!(
            "disconnected from etcd since {}: {error}; enforcing the last applied list",
            crate::clock::format_time(*since)
        ))
    }

    /// Applies the followed sets as of `revision`: each that differs from what the
    /// kernel enforces is committed, or held when it would cut off a local session.
    /// Sets etcd does not hold are empty. Returns whether anything is held.
    pub fn fleet_apply(
        &mut self,
        revision: i64,
        cluster: Option<u64>,
        desired: &BTreeMap<SetName, DesiredSet>,
    ) -> bool {
        let empty = DesiredSet::default();
        let mut save = false;
        let mut held = false;
        for feed in self.fleet_sets() {
            let want = desired.get(&feed.name).unwrap_or(&empty);
            let label = feed.label();
            let problem = want.refused.clone().or_else(|| {
                (!want.malformed.is_empty()).then(|| {
                    format!(
                        "ignored {} malformed key{} (never applied): {}",
                        want.malformed.len(),
                        if want.malformed.len() == 1 { "" } else { "s" },
                        want.malformed
                            .iter()
                            .take(3)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                })
            });
            if let Some(runtime) = self.feeds.get_mut(&feed.name) {
                if runtime.error != problem {
                    if let Some(problem) = &problem {
                        warn!(set = %feed.name, revision, "{label}: {problem}");
                    }
                    runtime.error = problem;
                }
            }
            if want.refused.is_some() {
                continue;
            }
            if self.fleet_entries(&feed.name) == want.networks
                && self.allowlist.feed(&feed.name).is_some()
            {
                if let Some(runtime) = self.feeds.get_mut(&feed.name) {
                    if runtime.saved.revision != Some(revision)
                        || runtime.saved.cluster_id != cluster
                        || runtime.fleet_held.is_some()
                        || runtime.held.is_some()
                    {
                        runtime.saved.revision = Some(revision);
                        runtime.saved.cluster_id = cluster;
                        runtime.fleet_held = None;
                        runtime.held = None;
                        save = true;
                    }
                }
                continue;
            }
            let networks: Vec<IpNet> = want.networks.keys().copied().collect();
            let before = self.allowlist.feed(&feed.name).map_or(0, |n| n.len());
            if shrinks_too_much(&feed, before, networks.len()) {
                let old = self.fleet_entries(&feed.name);
                let removed = old
                    .keys()
                    .filter(|n| !want.networks.contains_key(n))
                    .count();
                let message = format!(
                    "revision {revision} held (not applied): it would leave {} of the set's {before} entries (more than max_shrink = {}% gone); `allowlistctl feeds accept {}` applies it",
                    networks.len(),
                    feed.max_shrink_percent,
                    feed.name
                );
                if let Some(runtime) = self.feeds.get_mut(&feed.name) {
                    if runtime.fleet_held.as_ref().map(|(r, _)| *r) != Some(revision) {
                        warn!(set = %feed.name, revision, "{label}: {message}");
                    }
                    runtime.held = Some(Held {
                        networks,
                        validators: Validators::default(),
                        removed,
                        before,
                        fleet: Some((revision, cluster, want.networks.clone())),
                    });
                    runtime.fleet_held = Some((revision, message));
                }
                continue;
            }
            let at = now();
            let result = self.commit_feed(
                &feed,
                &networks,
                Some(&want.networks),
                at,
                &Safety::default(),
                applied(revision, cluster, at),
            );
            match result {
                Ok(()) => info!(
                    set = %feed.name,
                    revision,
                    kernel_took = ?self.kernel_took,
                    "{label}: applied revision {revision}: {} entries (were {before})",
                    networks.len()
                ),
                Err(Refusal::Unsafe(why, _)) => {
                    held = true;
                    let message = format!("revision {revision} held (not applied): {why}");
                    if let Some(runtime) = self.feeds.get_mut(&feed.name) {
                        if runtime.fleet_held.as_ref().map(|(r, _)| *r) != Some(revision) {
                            warn!(set = %feed.name, revision, "{label}: {message}");
                        }
                        runtime.fleet_held = Some((revision, message));
                    }
                }
                Err(Refusal::Error(why)) => {
                    let message = format!("revision {revision} refused: {why}");
                    if let Some(runtime) = self.feeds.get_mut(&feed.name) {
                        if runtime.error.as_ref() != Some(&message) {
                            warn!(set = %feed.name, revision, "{label}: {message}");
                        }
                        runtime.error = Some(message);
                    }
                }
            }
        }
        if save {
            if let Err(error) = self.persist() {
                warn!("fleet: saving the applied revision failed: {error}");
            }
        }
        held
    }

    /// `feeds accept NAME` of a fleet set: applies the revision held for shrinking it.
    pub(super) fn fleet_accept(
        &mut self,
        feed: &FeedConfig,
        held: &Held,
        (revision, cluster): (i64, Option<u64>),
        descriptions: &BTreeMap<IpNet, String>,
        at: u64,
        safety: &Safety,
    ) -> Result<(), Refusal> {
        self.commit_feed(
            feed,
            &held.networks,
            Some(descriptions),
            at,
            safety,
            applied(revision, cluster, at),
        )
    }

    /// What this host publishes under `P/hosts/HOST`.
    pub fn fleet_host_status(&self) -> Option<HostStatus> {
        let fleet = self.config.fleet.as_ref()?;
        let sets = self.fleet_sets();
        let runtimes = sets.iter().filter_map(|feed| self.feeds.get(&feed.name));
        let applied_revision = runtimes
            .clone()
            .map(|runtime| runtime.saved.revision.unwrap_or(0))
            .min()
            .unwrap_or(0);
        let held = sets
            .iter()
            .filter_map(|feed| {
                let (_, why) = self.feeds.get(&feed.name)?.fleet_held.as_ref()?;
                Some(format!("set {}: {why}", feed.name))
            })
            .collect();
        let error = sets.iter().find_map(|feed| {
            let error = self.feeds.get(&feed.name)?.error.as_ref()?;
            Some(format!("set {}: {error}", feed.name))
        });
        Some(HostStatus {
            host: fleet.host.clone(),
            applied_revision,
            mode: self.mode.to_string(),
            entries: sets
                .iter()
                .map(|feed| self.allowlist.feed(&feed.name).map_or(0, |n| n.len()))
                .sum(),
            error,
            held,
            updated_at: now(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
    }
}

/// Whether going from `before` to `after` entries empties a set (not `allow_empty`) or
/// shrinks it by more than `max_shrink`. Counted by size, not by entries removed: an
/// operator replacing a set by another as big is applied; a read of etcd that lost most
/// of the set (or all of it) is held.
fn shrinks_too_much(feed: &FeedConfig, before: usize, after: usize) -> bool {
    if before == 0 {
        return false;
    }
    if after == 0 && !feed.allow_empty {
        return true;
    }
    let gone = before.saturating_sub(after);
    gone.saturating_mul(100) > before.saturating_mul(usize::from(feed.max_shrink_percent))
}

/// What a fleet set's runtime records once a revision reached the kernel: the revision
/// and cluster it came from, and that nothing of it is held any more.
fn applied(
    revision: i64,
    cluster: Option<u64>,
    at: u64,
) -> impl FnOnce(&mut super::feeds::FeedRuntime) {
    move |runtime| {
        runtime.saved.revision = Some(revision);
        runtime.saved.cluster_id = cluster;
        runtime.saved.fetched_at = Some(at);
        runtime.fleet_held = None;
        runtime.held = None;
    }
}
