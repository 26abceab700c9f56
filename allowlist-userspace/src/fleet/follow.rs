//! A host following its fleet: reads the followed sets once (or resumes after the
//! revision it last applied), watches the prefix, hands each watch message's changes to
//! the daemon as a delta (`Daemon::fleet_apply_delta`; the sets whole, `fleet_apply`,
//! after a full read or when the kernel is not as of the previous revision), and
//! publishes its status under a lease. Runs on a thread of
//! its own and takes the daemon's lock only to apply and to read its status, so a slow
//! or lost etcd delays no request. Losing etcd changes nothing the kernel enforces.

use ipnet::IpNet;
use std::{
    collections::BTreeMap,
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::{
    etcd::{Etcd, EtcdError, Event, Op, WatchMessage},
    parse_entry, parse_set, EntryValue, FleetConfig, HostStatus, Layout, RawSet,
};
use crate::{
    allowlist::SetName,
    daemon::{Daemon, DesiredSet, FleetOutcome, SetDelta},
};

/// Lease of a host's status key: it vanishes this long after the host stops renewing.
pub const STATUS_TTL_SECS: i64 = 15;
/// How often the lease is renewed (and the config looked at again).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);
/// Status is written when it changed, and at least this often (it is "last seen").
const PUBLISH_EVERY: Duration = Duration::from_secs(10);
/// A held change is tried again this often (the session it protects may have ended).
const RETRY_HELD_EVERY: Duration = Duration::from_secs(5);
/// A revision refused for another reason (a failed write, the kernel's limits) is tried
/// again after this, then twice as long each time up to [`RETRY_REFUSED_AT_MOST`].
const RETRY_REFUSED_FIRST: Duration = Duration::from_secs(5);
const RETRY_REFUSED_AT_MOST: Duration = Duration::from_secs(300);
/// How often a host checks that its watch still delivers (see `Follower::check_watch`).
const WATCH_CHECK_EVERY: Duration = Duration::from_secs(10);
/// The longest extra silence asked of a watch after others were found silent.
const MAX_STALL_GRACE: Duration = Duration::from_secs(600);
/// Longest wait between attempts to reach etcd.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A status write etcd refuses is tried again after this, then twice as long each time
/// up to [`MAX_PUBLISH_BACKOFF`].
const FIRST_PUBLISH_BACKOFF: Duration = Duration::from_secs(5);
const MAX_PUBLISH_BACKOFF: Duration = Duration::from_secs(60);

fn lock(daemon: &Mutex<Daemon>) -> std::sync::MutexGuard<'_, Daemon> {
    daemon
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Follows the `[fleet]` of the daemon's config for the daemon's life; a reload that
/// changes the section starts over with the new one.
/// A follower that panics is started again (after [`MAX_BACKOFF`]): the host keeps its
/// list meanwhile and says it is disconnected.
pub fn follow(daemon: Arc<Mutex<Daemon>>) {
    loop {
        // Bound first: a guard in a match scrutinee would be held for the whole match.
        let config = lock(&daemon).fleet_config();
        let Some(config) = config else {
            std::thread::sleep(KEEPALIVE_EVERY);
            continue;
        };
        let follower = Arc::clone(&daemon);
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            Follower::new(follower, config).run();
        }));
        if let Err(panic) = run {
            let why = panic
                .downcast_ref::<&str>()
                .map(ToString::to_string)
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!("fleet: the follower stopped ({why}); starting it again");
            lock(&daemon).fleet_connection(Err(format!(
                "the fleet follower stopped ({why}); starting it again"
            )));
            std::thread::sleep(MAX_BACKOFF);
        }
    }
}

type WatchFeed = Receiver<Result<WatchMessage, EtcdError>>;

struct Follower {
    daemon: Arc<Mutex<Daemon>>,
    config: FleetConfig,
    layout: Layout,
    /// Each followed set's keys as of `revision`.
    desired: BTreeMap<SetName, RawSet>,
    /// Each key's last value that parsed (network, description): a bad value written
    /// over a good entry keeps that entry as it was instead of dropping it.
    last_good: BTreeMap<String, (IpNet, String)>,
    /// Each followed set's malformed keys now, with why (reported with every revision).
    malformed: BTreeMap<SetName, BTreeMap<String, String>>,
    /// The revision applied (0: none yet).
    revision: i64,
    /// Read everything before watching (nothing applied yet, or etcd compacted past it).
    resync: bool,
    /// The etcd cluster `revision` is of.
    cluster: Option<u64>,
    /// etcd is not the history `revision` is of: the full read may be behind it.
    new_history: bool,
    watch: Option<WatchFeed>,
    /// When the watch last delivered a message.
    heard: Instant,
    /// When the watch was last checked, and since when etcd's change marker has been
    /// newer than `revision` (see `check_watch`).
    checked: Instant,
    behind_since: Option<Instant>,
    /// How much longer than two checks a watch must be silent to be opened again:
    /// doubles with each watch found silent since the last change delivered, so a path
    /// that makes every watch look silent (a proxy buffering the stream) does not open
    /// one every 20 s, each leaving a reader blocked until its read times out.
    stall_grace: Duration,
    lease: Option<i64>,
    published: Option<(HostStatus, Instant)>,
    renewed: Instant,
    /// What became of the last revision handed to the daemon: only after `Applied` is
    /// the kernel as of `revision`, so that the next message applies as a delta.
    outcome: FleetOutcome,
    retried: Instant,
    retry_refused_after: Duration,
    backoff: Duration,
    /// A status write etcd refused: when to try again, and the wait after that.
    publish_after: Option<Instant>,
    publish_backoff: Duration,
}

impl Follower {
    fn new(daemon: Arc<Mutex<Daemon>>, config: FleetConfig) -> Follower {
        let layout = Layout::new(&config.prefix);
        let (revision, cluster, sets) = lock(&daemon).fleet_baseline();
        let last_good = sets
            .iter()
            .flat_map(|(name, networks)| {
                networks.iter().map(|(network, description)| {
                    (layout.entry(name, network), (*network, description.clone()))
                })
            })
            .collect();
        // Resuming after the applied revision needs that revision's keys: rebuilt from
        // the applied list, as `allowlistctl fleet` writes them.
        let desired = sets
            .into_iter()
            .map(|(name, networks)| {
                let raw = networks
                    .into_iter()
                    .map(|(network, description)| {
                        let value =
                            serde_json::to_vec(&EntryValue { description }).unwrap_or_default();
                        (layout.entry(&name, &network), value)
                    })
                    .collect();
                (name, raw)
            })
            .collect();
        Follower {
            daemon,
            layout,
            desired,
            last_good,
            malformed: BTreeMap::new(),
            revision: revision.unwrap_or(0),
            resync: revision.is_none(),
            cluster,
            new_history: false,
            config,
            watch: None,
            heard: Instant::now(),
            checked: Instant::now(),
            behind_since: None,
            stall_grace: Duration::ZERO,
            lease: None,
            published: None,
            renewed: Instant::now(),
            // The daemon checks that every set is as of `revision` before it takes a
            // delta, and asks for the sets whole if not.
            outcome: FleetOutcome::Applied,
            retried: Instant::now(),
            retry_refused_after: RETRY_REFUSED_FIRST,
            backoff: Duration::from_millis(200),
            publish_after: None,
            publish_backoff: FIRST_PUBLISH_BACKOFF,
        }
    }

    fn run(mut self) {
        let etcd = match Etcd::new(&self.config) {
            Ok(etcd) => Arc::new(etcd),
            Err(error) => {
                lock(&self.daemon).fleet_connection(Err(error.to_string()));
                std::thread::sleep(MAX_BACKOFF);
                return;
            }
        };
        info!(
            endpoints = %self.config.endpoints.join(","),
            prefix = %self.config.prefix,
            host = %self.config.host,
            resume_after = self.revision,
            "fleet: following sets {}",
            self.config.sets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        );
        loop {
            if lock(&self.daemon).fleet_config().as_ref() != Some(&self.config) {
                info!("fleet: [fleet] changed; starting over");
                return;
            }
            if self.watch.is_none() {
                if let Err(error) = self.connect(&etcd) {
                    self.disconnected(error);
                    continue;
                }
            }
            let message = match &self.watch {
                Some(watch) => watch.recv_timeout(Duration::from_secs(1)),
                None => continue,
            };
            if message.is_ok() {
                self.heard = Instant::now();
            }
            match message {
                Ok(Ok(WatchMessage::Created)) => {
                    lock(&self.daemon).fleet_connection(Ok(()));
                    self.backoff = Duration::from_millis(200);
                }
                Ok(Ok(WatchMessage::Events { revision, events })) => {
                    self.stall_grace = Duration::ZERO;
                    let since = self.revision;
                    match self.take(revision, events) {
                        Ok(deltas) => self.apply(since, &deltas),
                        Err(error) => self.disconnected(error),
                    }
                }
                Ok(Ok(WatchMessage::Compacted { compact_revision })) => {
                    info!(
                        after = self.revision,
                        compact_revision,
                        "fleet: etcd compacted past this host's revision; reading everything again"
                    );
                    self.resync = true;
                    self.watch = None;
                }
                Ok(Ok(WatchMessage::Canceled(why))) => {
                    self.disconnected(EtcdError::Protocol(format!("watch canceled: {why}")))
                }
                Ok(Err(error)) => self.disconnected(error),
                Err(RecvTimeoutError::Disconnected) => {
                    self.disconnected(EtcdError::Protocol("the watch ended".into()))
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self.watch.is_some() {
                self.housekeeping(&etcd);
            }
        }
    }

    fn disconnected(&mut self, error: EtcdError) {
        lock(&self.daemon).fleet_connection(Err(error.to_string()));
        self.watch = None;
        self.behind_since = None;
        self.lease = None;
        self.published = None;
        // Jittered, so hosts that lost etcd together do not all come back at once.
        std::thread::sleep(jittered(self.backoff));
        self.backoff = self.backoff.saturating_mul(2).min(MAX_BACKOFF);
    }

    /// Reads everything when there is no revision to resume after, then opens the watch.
    fn connect(&mut self, etcd: &Arc<Etcd>) -> Result<(), EtcdError> {
        // The applied revision is a place in one cluster's history. Another cluster (a
        // rebuilt etcd, other endpoints), or one whose history ends before it (restored
        // from a backup), has no delta after it to send: read it all, guarded as any
        // full read (a list that shrinks too much is held).
        let (cluster, current) = etcd.header(&self.layout.sets())?;
        let elsewhere = self.cluster.is_some_and(|known| known != cluster);
        let rewound = !self.resync && current < self.revision;
        if elsewhere || rewound {
            warn!(
                cluster = format!("{cluster:x}"),
                was = self.cluster.map(|known| format!("{known:x}")),
                current,
                applied = self.revision,
                "fleet: etcd is not the history this host applied ({}); reading everything again",
                if elsewhere {
                    "another cluster"
                } else {
                    "its revision is behind the applied one"
                }
            );
            self.resync = true;
            self.new_history = true;
        }
        self.cluster = Some(cluster);
        if self.resync {
            let (revision, kvs) = etcd.range_prefix(&self.layout.sets())?;
            // Within the same history, a read behind what this host applied (a lagging
            // member) would take back changes: keep the last list until it catches up.
            if revision < self.revision && !self.new_history {
                return Err(EtcdError::Protocol(format!(
                    "etcd answered a full read as of revision {revision}, older than revision {} this host applied; keeping the last applied list",
                    self.revision
                )));
            }
            let mut desired: BTreeMap<SetName, RawSet> = self
                .config
                .sets
                .iter()
                .map(|set| (set.clone(), RawSet::new()))
                .collect();
            for kv in kvs {
                if let Some(set) = self.followed(&kv.key) {
                    desired.entry(set).or_default().insert(kv.key, kv.value);
                }
            }
            self.desired = desired;
            self.revision = revision;
            self.resync = false;
            self.new_history = false;
            info!(revision, "fleet: read the followed sets whole");
            self.offer();
        }
        let (sender, receiver) = mpsc::channel();
        let mut watch = etcd.watch(&self.layout.sets(), self.revision.saturating_add(1))?;
        std::thread::Builder::new()
            .name("fleet-watch".into())
            .spawn(move || loop {
                let message = watch.next_message();
                let end = message.is_err();
                // The follower dropped this watch for a new one: stop reading.
                if sender.send(message).is_err() || end {
                    return;
                }
            })
            .map_err(|error| EtcdError::Setup(format!("starting the watch thread: {error}")))?;
        self.watch = Some(receiver);
        Ok(())
    }

    fn followed(&self, key: &str) -> Option<SetName> {
        let (set, _) = self.layout.split_entry(key)?;
        self.config
            .sets
            .iter()
            .find(|name| name.as_str() == set)
            .cloned()
    }

    /// Takes one watch message's events into `desired` and returns what they change in
    /// each followed set; refuses the whole message (the watch starts again after the
    /// last applied revision) when it is not consistent. A malformed value changes
    /// nothing (its key keeps its last good value, if any) and is reported.
    fn take(
        &mut self,
        header: i64,
        events: Vec<Event>,
    ) -> Result<BTreeMap<SetName, SetDelta>, EtcdError> {
        let through = applied_revision(header, &events).map_err(EtcdError::Protocol)?;
        let mut deltas: BTreeMap<SetName, SetDelta> = self
            .config
            .sets
            .iter()
            .map(|set| (set.clone(), SetDelta::default()))
            .collect();
        for event in events {
            let (key, value) = match event {
                Event::Put(kv) => (kv.key, Some(kv.value)),
                Event::Delete { key, .. } => (key, None),
            };
            let Some(set) = self.followed(&key) else {
                continue;
            };
            let Some((_, network)) = self.layout.split_entry(&key) else {
                continue;
            };
            let changes = &mut deltas.entry(set.clone()).or_default().changes;
            let malformed = self.malformed.entry(set.clone()).or_default();
            let raw = self.desired.entry(set).or_default();
            match value {
                None => {
                    raw.remove(&key);
                    malformed.remove(&key);
                    if let Some((network, _)) = self.last_good.remove(&key) {
                        changes.insert(network, None);
                    }
                }
                Some(value) => {
                    match parse_entry(&key, network, &value) {
                        Ok((network, description)) => {
                            malformed.remove(&key);
                            self.last_good
                                .insert(key.clone(), (network, description.clone()));
                            changes.insert(network, Some(description));
                        }
                        Err(problem) => {
                            malformed.insert(key.clone(), problem.to_string());
                        }
                    }
                    raw.insert(key, value);
                }
            }
        }
        for (set, delta) in &mut deltas {
            delta.malformed = self
                .malformed
                .get(set)
                .into_iter()
                .flat_map(BTreeMap::values)
                .cloned()
                .collect();
        }
        self.revision = self.revision.max(through);
        Ok(deltas)
    }

    /// Hands one message's changes to the daemon as a delta when the kernel is as of
    /// `since` (the revision before them), or the followed sets whole.
    fn apply(&mut self, since: i64, deltas: &BTreeMap<SetName, SetDelta>) {
        if self.outcome == FleetOutcome::Applied {
            let outcome =
                lock(&self.daemon).fleet_apply_delta(since, self.revision, self.cluster, deltas);
            if let Some(outcome) = outcome {
                self.settle(outcome);
                return;
            }
        }
        self.offer();
    }

    fn settle(&mut self, outcome: FleetOutcome) {
        self.outcome = outcome;
        self.retried = Instant::now();
        if outcome != FleetOutcome::Refused {
            self.retry_refused_after = RETRY_REFUSED_FIRST;
        }
    }

    /// Hands the followed sets as of `revision` to the daemon; parsed before its lock.
    fn offer(&mut self) {
        let sets = self.config.sets.clone();
        // Keys gone from etcd have no last good value any more.
        self.last_good
            .retain(|key, _| self.desired.values().any(|raw| raw.contains_key(key)));
        let desired: BTreeMap<SetName, DesiredSet> = sets
            .iter()
            .map(|set| {
                let raw = self.desired.get(set).cloned().unwrap_or_default();
                let parsed = match parse_set(&self.layout, &raw) {
                    Ok((mut networks, malformed)) => {
                        for key in raw.keys() {
                            if let Some((network, description)) = self.last_good.get(key) {
                                // A key that parses gives its own network: only a
                                // malformed one falls back to its last good value.
                                networks
                                    .entry(*network)
                                    .or_insert_with(|| description.clone());
                            }
                        }
                        for (network, description) in &networks {
                            self.last_good.insert(
                                self.layout.entry(set, network),
                                (*network, description.clone()),
                            );
                        }
                        self.malformed.insert(
                            set.clone(),
                            malformed
                                .iter()
                                .map(|bad| (bad.key.clone(), bad.to_string()))
                                .collect(),
                        );
                        DesiredSet {
                            networks,
                            malformed: malformed.iter().map(ToString::to_string).collect(),
                            refused: None,
                        }
                    }
                    Err(why) => DesiredSet {
                        refused: Some(why),
                        ..DesiredSet::default()
                    },
                };
                (set.clone(), parsed)
            })
            .collect();
        let outcome = lock(&self.daemon).fleet_apply(self.revision, self.cluster, &desired);
        self.settle(outcome);
    }

    /// Renews the status lease, publishes the status when it changed (or to say the
    /// host is still there), and tries a held or refused revision again.
    fn housekeeping(&mut self, etcd: &Etcd) {
        let retry_after = match self.outcome {
            FleetOutcome::Held => Some(RETRY_HELD_EVERY),
            FleetOutcome::Refused => Some(self.retry_refused_after),
            FleetOutcome::Applied | FleetOutcome::Waiting => None,
        };
        if retry_after.is_some_and(|after| self.retried.elapsed() >= after) {
            if self.outcome == FleetOutcome::Refused {
                self.retry_refused_after = self
                    .retry_refused_after
                    .saturating_mul(2)
                    .min(RETRY_REFUSED_AT_MOST);
            }
            self.offer();
        }
        match self.check_watch(etcd) {
            Ok(()) => {}
            // etcd answered (say, no right to read the marker, or a password it no
            // longer takes, which publishing reports): the watch may still deliver.
            Err(EtcdError::Status { .. } | EtcdError::Login { .. }) => {}
            // etcd itself answers: only the watch is opened again, from the revision.
            Err(error @ EtcdError::Stalled(_)) => {
                warn!("fleet: {error}");
                self.watch = None;
                self.behind_since = None;
                self.stall_grace = (self.stall_grace * 2)
                    .max(WATCH_CHECK_EVERY)
                    .min(MAX_STALL_GRACE);
                return;
            }
            Err(error) => {
                warn!("fleet: {error}");
                self.disconnected(error);
                return;
            }
        }
        if self
            .publish_after
            .is_some_and(|after| Instant::now() < after)
        {
            return;
        }
        match self.publish(etcd) {
            Ok(()) => {
                self.publish_after = None;
                self.publish_backoff = FIRST_PUBLISH_BACKOFF;
            }
            // etcd answered (no right to write the status key, a lease it refuses, a
            // login it refuses once the token expired): the watch still delivers, so
            // only publishing backs off, instead of dropping the watch and reconnecting
            // (and reading) again every few seconds.
            Err(error @ (EtcdError::Status { .. } | EtcdError::Login { .. })) => {
                if self.publish_after.is_none() {
                    warn!("fleet: publishing this host's status failed: {error}");
                }
                self.publish_after = Some(Instant::now() + jittered(self.publish_backoff));
                self.publish_backoff = self
                    .publish_backoff
                    .saturating_mul(2)
                    .min(MAX_PUBLISH_BACKOFF);
            }
            Err(error) => self.disconnected(error),
        }
    }

    /// Whether the watch still delivers. Every `allowlistctl fleet` write also writes
    /// the change marker, under the watched prefix: a marker newer than the revision
    /// the watch brought this host to, seen so at two checks with no watch message in
    /// between, means the watch connection died without closing (a NAT or firewall that
    /// forgot it, a member cut off without a reset) while other connections work. The
    /// watch is then dropped and opened again after the applied revision. (A watch that
    /// hears nothing at all ends on its own after [`super::etcd::WATCH_READ_TIMEOUT`].)
    fn check_watch(&mut self, etcd: &Etcd) -> Result<(), EtcdError> {
        if self.checked.elapsed() < WATCH_CHECK_EVERY {
            return Ok(());
        }
        self.checked = Instant::now();
        let (_, marker) = etcd.get_serializable(&self.layout.changed())?;
        let written = marker.map_or(0, |kv| kv.mod_revision);
        if written <= self.revision {
            self.behind_since = None;
            return Ok(());
        }
        match self.behind_since {
            Some(since) if self.heard < since && since.elapsed() >= self.stall_grace => Err(EtcdError::Stalled(format!(
                "etcd's sets are at revision {written} (their change marker), this host at {}, and the watch delivered nothing for {} s; opening it again",
                self.revision,
                since.elapsed().as_secs()
            ))),
            // Behind but hearing (catching up), or behind since just now.
            _ => {
                self.behind_since = Some(Instant::now());
                Ok(())
            }
        }
    }

    fn publish(&mut self, etcd: &Etcd) -> Result<(), EtcdError> {
        if self.lease.is_some() && self.renewed.elapsed() >= KEEPALIVE_EVERY {
            let alive = self
                .lease
                .map_or(Ok(false), |lease| etcd.keep_alive(lease))?;
            self.renewed = Instant::now();
            if !alive {
                self.lease = None;
                self.published = None;
            }
        }
        let Some(mut status) = lock(&self.daemon).fleet_host_status() else {
            return Ok(());
        };
        if let Some((last, at)) = &self.published {
            let same = HostStatus {
                updated_at: last.updated_at,
                ..status.clone()
            } == *last;
            if same && at.elapsed() < PUBLISH_EVERY {
                return Ok(());
            }
        }
        let lease = match self.lease {
            Some(lease) => lease,
            None => {
                let lease = etcd.grant(STATUS_TTL_SECS)?;
                self.lease = Some(lease);
                self.renewed = Instant::now();
                lease
            }
        };
        status.updated_at = crate::clock::now();
        let value =
            serde_json::to_vec(&status).map_err(|error| EtcdError::Protocol(error.to_string()))?;
        etcd.txn(&[Op::Put {
            key: self.layout.host(&self.config.host),
            value,
            lease: Some(lease),
        }])?;
        if self.published.is_none() {
            info!(key = %self.layout.host(&self.config.host), "fleet: publishing this host's status");
        }
        self.published = Some((status, Instant::now()));
        Ok(())
    }
}

/// Between half of `wait` and all of it.
fn jittered(wait: Duration) -> Duration {
    wait.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// The revision a host has applied once it took a watch message: the newest event's.
/// The header holds etcd's current revision, not this message's: catching up, etcd
/// sends at most 1000 revisions of events per message, each with the current revision in
/// its header, so taking the header would skip what is still to come. Only a message
/// without events (a progress notification) vouches for the header's revision. An event
/// newer than the header, or without a revision, makes no sense: refused.
pub fn applied_revision(header: i64, events: &[Event]) -> Result<i64, String> {
    let mut newest = None;
    for event in events {
        let revision = event.mod_revision();
        if revision <= 0 || revision > header {
            return Err(format!(
                "watch: an event of revision {revision} in a message of revision {header}"
            ));
        }
        newest = newest.max(Some(revision));
    }
    Ok(newest.unwrap_or(header))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::etcd::Kv;

    fn put(mod_revision: i64) -> Event {
        Event::Put(Kv {
            key: "/allowlist/sets/office/10.0.0.1/32".into(),
            value: b"{}".to_vec(),
            mod_revision,
        })
    }

    #[test]
    fn the_applied_revision_is_the_newest_event_not_the_header() {
        assert_eq!(applied_revision(5000, &[put(3), put(1002)]), Ok(1002));
        assert_eq!(applied_revision(5000, &[]), Ok(5000));
        assert!(applied_revision(10, &[put(11)]).is_err());
        assert!(applied_revision(10, &[put(0)]).is_err());
    }
}
