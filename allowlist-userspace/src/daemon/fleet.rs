//! The fleet in the daemon: what a new revision of the followed sets may change. A
//! revision comes either whole (after a full read: `fleet_apply`) or as the changes of
//! one watch message (`fleet_apply_delta`, what keeps a 1% change of a large set cheap).
//! Both go through the path every change takes: compiled, lockout-checked, atomic in the
//! kernel, then saved with the revision. A change that would cut off a local session is
//! held on this host, reported, and tried again while it is the newest; a malformed key
//! is reported and left out. The watch itself, and everything that talks to etcd, runs
//! without the daemon's lock (`crate::fleet::follow`).

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

/// What became of a revision handed to the daemon, worst first when ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FleetOutcome {
    /// The kernel enforces every followed set as of the revision.
    Applied,
    /// Not applied until an operator acts or etcd changes: a set refused whole (too
    /// many entries), or shrinking by more than `max_shrink` (`feeds accept`).
    Waiting,
    /// Refused for another reason (the kernel's limits, a failed write): worth trying
    /// again later.
    Refused,
    /// Would cut off a local session: held, and tried again while it is the newest.
    Held,
}

/// The changes of one followed set in one watch message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetDelta {
    /// Each changed network's description in etcd now (`None`: its key was deleted).
    pub changes: BTreeMap<IpNet, Option<String>>,
    /// Every key of the set that is malformed now (reported, never applied).
    pub malformed: Vec<String>,
}

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
                // Once per cause: a host that lost etcd and then meets another problem
                // (a password etcd refuses after a restart) says so.
                let same = self
                    .fleet
                    .error
                    .as_ref()
                    .is_some_and(|(_, last)| *last == error);
                if self.fleet.connected || !same {
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
    /// Sets etcd does not hold are empty. Returns the worst outcome of any set.
    pub fn fleet_apply(
        &mut self,
        revision: i64,
        cluster: Option<u64>,
        desired: &BTreeMap<SetName, DesiredSet>,
    ) -> FleetOutcome {
        let empty = DesiredSet::default();
        let mut save = false;
        let mut outcome = FleetOutcome::Applied;
        for feed in self.fleet_sets() {
            let want = desired.get(&feed.name).unwrap_or(&empty);
            let label = feed.label();
            self.report_fleet_problems(&feed, revision, want.refused.as_ref(), &want.malformed);
            if want.refused.is_some() {
                outcome = outcome.max(FleetOutcome::Waiting);
                continue;
            }
            if self.fleet_entries(&feed.name) == want.networks
                && self.allowlist.feed_len(&feed.name).is_some()
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
            let before = self.allowlist.feed_len(&feed.name).unwrap_or(0);
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
                outcome = outcome.max(FleetOutcome::Waiting);
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
                    outcome = outcome.max(FleetOutcome::Held);
                    let message = format!("revision {revision} held (not applied): {why}");
                    if let Some(runtime) = self.feeds.get_mut(&feed.name) {
                        if runtime.fleet_held.as_ref().map(|(r, _)| *r) != Some(revision) {
                            warn!(set = %feed.name, revision, "{label}: {message}");
                        }
                        runtime.fleet_held = Some((revision, message));
                    }
                }
                Err(Refusal::Error(why)) => {
                    outcome = outcome.max(FleetOutcome::Refused);
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
        outcome
    }

    /// Reports (once, then in `feeds` and the host status) why a set is refused whole
    /// or which of its keys are left out.
    fn report_fleet_problems(
        &mut self,
        feed: &FeedConfig,
        revision: i64,
        refused: Option<&String>,
        malformed: &[String],
    ) {
        let problem = refused.cloned().or_else(|| {
            (!malformed.is_empty()).then(|| {
                format!(
                    "ignored {} malformed key{} (never applied): {}",
                    malformed.len(),
                    if malformed.len() == 1 { "" } else { "s" },
                    malformed
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
                    warn!(set = %feed.name, revision, "{}: {problem}", feed.label());
                }
                runtime.error = problem;
            }
        }
    }

    /// Applies the changes of one watch message, which take the followed sets from
    /// revision `since` to `revision`, without re-reading what did not change: the
    /// list with them compiled, lockout-checked, written to the kernel at once, then
    /// saved with `revision`. `None` when the kernel is not
    /// as of `since` (something held or refused before, another cluster) or the delta
    /// needs what only the whole set can tell (it empties or shrinks a set past
    /// `max_shrink`, or overfills it): the caller hands the sets whole instead.
    pub fn fleet_apply_delta(
        &mut self,
        since: i64,
        revision: i64,
        cluster: Option<u64>,
        deltas: &BTreeMap<SetName, SetDelta>,
    ) -> Option<FleetOutcome> {
        let sets = self.fleet_sets();
        let in_step = sets.iter().all(|feed| {
            self.allowlist.feed_len(&feed.name).is_some()
                && self.feeds.get(&feed.name).is_some_and(|runtime| {
                    runtime.saved.revision == Some(since)
                        && runtime.saved.cluster_id == cluster
                        && runtime.held.is_none()
                        && runtime.fleet_held.is_none()
                })
        });
        if !in_step {
            return None;
        }
        let at = now();
        let mut next = self.allowlist.clone();
        let mut changed = Vec::new();
        for feed in &sets {
            let Some(delta) = deltas.get(&feed.name) else {
                continue;
            };
            let before = self.allowlist.feed_len(&feed.name).unwrap_or(0);
            for (network, description) in &delta.changes {
                let differs = match description {
                    Some(description) => next.put_feed_entry(feed, *network, description, at),
                    None => next.remove_feed_entry(&feed.name, network),
                };
                if differs {
                    changed.push(*network);
                }
            }
            let after = next.feed_len(&feed.name).unwrap_or(0);
            if after > crate::fleet::MAX_SET_ENTRIES || shrinks_too_much(feed, before, after) {
                return None;
            }
        }
        for feed in &sets {
            let malformed = deltas
                .get(&feed.name)
                .map_or(&[][..], |delta| &delta.malformed);
            self.report_fleet_problems(feed, revision, None, malformed);
        }
        let names: Vec<&SetName> = sets.iter().map(|feed| &feed.name).collect();
        let touched: Vec<&SetName> = names
            .iter()
            .copied()
            .filter(|name| {
                deltas
                    .get(*name)
                    .is_some_and(|delta| !delta.changes.is_empty())
            })
            .collect();
        let record = |runtime: &mut super::feeds::FeedRuntime, changed: bool| {
            runtime.saved.revision = Some(revision);
            runtime.saved.cluster_id = cluster;
            runtime.saved.fetched_at = Some(at);
            if changed {
                runtime.saved.changed_at = Some(at);
            }
        };
        if changed.is_empty() {
            for name in &names {
                if let Some(runtime) = self.feeds.get_mut(*name) {
                    record(runtime, false);
                }
            }
            if let Err(error) = self.persist() {
                warn!("fleet: saving the applied revision {revision} failed: {error}");
                return Some(FleetOutcome::Refused);
            }
            return Some(FleetOutcome::Applied);
        }
        match self.check_fleet_delta(&next, revision) {
            Ok(compiled) => {
                let previous: BTreeMap<SetName, _> = names
                    .iter()
                    .filter_map(|name| Some(((*name).clone(), self.feeds.get(*name)?.clone())))
                    .collect();
                for name in &names {
                    if let Some(runtime) = self.feeds.get_mut(*name) {
                        record(runtime, touched.contains(name));
                    }
                }
                if let Err(error) =
                    self.commit_with(next, self.mode, self.pending_confirm, Some(compiled))
                {
                    for (name, runtime) in previous {
                        self.feeds.insert(name, runtime);
                    }
                    self.fleet_refused(&touched, revision, &error.to_string());
                    return Some(FleetOutcome::Refused);
                }
                info!(
                    revision,
                    changed = changed.len(),
                    kernel_took = ?self.kernel_took,
                    "fleet: applied revision {revision} as a delta of {} network{}",
                    changed.len(),
                    if changed.len() == 1 { "" } else { "s" }
                );
                Some(FleetOutcome::Applied)
            }
            Err(Refusal::Unsafe(why, _)) => {
                let message = format!("revision {revision} held (not applied): {why}");
                for name in &touched {
                    if let Some(runtime) = self.feeds.get_mut(*name) {
                        if runtime.fleet_held.as_ref().map(|(r, _)| *r) != Some(revision) {
                            warn!(set = %name, revision, "fleet {name}: {message}");
                        }
                        runtime.fleet_held = Some((revision, message.clone()));
                    }
                }
                Some(FleetOutcome::Held)
            }
            Err(Refusal::Error(why)) => {
                self.fleet_refused(&touched, revision, &why);
                Some(FleetOutcome::Refused)
            }
        }
    }

    /// The compiled list a delta makes, once it passed every check a change must. The
    /// list is compiled whole: one sort of the list costs little next to what the old
    /// path spent re-reading and re-describing every entry, and the kernel gets the
    /// revision in one atomic switch.
    fn check_fleet_delta(
        &self,
        next: &crate::allowlist::Allowlist,
        revision: i64,
    ) -> Result<crate::compile::CompiledList, Refusal> {
        let compiled = next
            .compile()
            .map_err(|error| Refusal::Error(error.to_string()))?;
        compiled.check_kernel_limits().map_err(Refusal::Error)?;
        self.refuse_empty_enforce(
            next,
            self.mode,
            &format!("applying fleet revision {revision}"),
        )?;
        self.check_lockout_against(&compiled, self.mode, &Safety::default())?;
        Ok(compiled)
    }

    /// Records why a revision was refused on each of `names` (logged once per message).
    fn fleet_refused(&mut self, names: &[&SetName], revision: i64, why: &str) {
        let message = format!("revision {revision} refused: {why}");
        for name in names {
            if let Some(runtime) = self.feeds.get_mut(*name) {
                if runtime.error.as_ref() != Some(&message) {
                    warn!(set = %name, revision, "fleet {name}: {message}");
                }
                runtime.error = Some(message.clone());
            }
        }
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
                .map(|feed| self.allowlist.feed_len(&feed.name).unwrap_or(0))
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
