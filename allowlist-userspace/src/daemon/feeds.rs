//! Feeds in the daemon: when each is fetched, and what a fetched body may change. A
//! failed fetch, a body that does not parse, or an empty list (unless `allow_empty`)
//! keeps the last good list and is reported; a refresh removing more than `max_shrink`
//! of a feed's entries is held until `allowlistctl feeds accept`; a refresh that would
//! cut off an established connection is refused by the lockout check like any change.
//! The fetch itself runs without the daemon's lock (`crate::server`); only applying what
//! it brought takes it.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use tracing::{info, warn};

use super::{Actor, Daemon, Kernel, Refusal};
use crate::{
    allowlist::SetName,
    clock::now,
    control::{FeedStatus, Reply, Safety},
    feeds::{
        self,
        fetch::{FetchError, Fetched, Validators},
        FeedConfig, FeedSource,
    },
    state::SavedFeed,
};

/// A feed's life in the daemon besides its entries (which are in the allowlist).
#[derive(Clone, Debug, Default)]
pub(crate) struct FeedRuntime {
    /// Validators, URL and times of the last good list (saved with it).
    pub(super) saved: SavedFeed,
    pub(super) attempted_at: Option<u64>,
    pub(super) next_at: u64,
    pub(super) error: Option<String>,
    pub(super) held: Option<Held>,
    /// A fleet set: the revision held because it would cut off a local session, and why.
    pub(super) fleet_held: Option<(i64, String)>,
}

/// A refresh that would remove too much, waiting for `feeds accept`.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    pub(super) networks: Vec<IpNet>,
    pub(super) validators: Validators,
    pub(super) removed: usize,
    pub(super) before: usize,
    /// A fleet set's: the revision held, its cluster id, and its descriptions.
    pub(super) fleet: Option<(i64, Option<u64>, BTreeMap<IpNet, String>)>,
}

/// One fetch to make, as handed out without the lock.
#[derive(Clone, Debug)]
pub struct FetchJob {
    pub name: SetName,
    /// A fetched feed's or a DNS name's (never a preset's).
    pub source: FeedSource,
    pub validators: Validators,
}

impl FetchJob {
    /// Fetches (or resolves); the outcome goes back to [`Daemon::feeds_fetched`].
    pub fn run(self) -> FetchOutcome {
        let attempted_at = now();
        let result = match &self.source {
            FeedSource::Fetch(source) => feeds::fetch::fetch(source, &self.validators),
            FeedSource::Dns(source) => feeds::dns::resolve(source)
                .map(Fetched::Resolved)
                .map_err(FetchError::from),
            FeedSource::Preset(preset) => Err(FetchError::Transport {
                url: format!("preset {}", preset.name),
                cause: "a preset has nothing to fetch".into(),
            }),
            FeedSource::Fleet => Err(FetchError::Transport {
                url: format!("fleet {}", self.name),
                cause: "a fleet set follows etcd; nothing to fetch".into(),
            }),
        };
        FetchOutcome {
            name: self.name,
            attempted_at,
            result,
        }
    }
}

pub struct FetchOutcome {
    pub name: SetName,
    pub attempted_at: u64,
    pub result: Result<Fetched, FetchError>,
}

/// The next refresh after `at`: the interval plus up to a tenth of it at random, so that
/// many hosts started together do not poll a provider in step.
fn next_refresh(at: u64, feed: &FeedConfig) -> u64 {
    let jitter = fastrand::u64(0..=feed.refresh_secs / 10);
    at.saturating_add(feed.refresh_secs).saturating_add(jitter)
}

impl<K: Kernel> Daemon<K> {
    fn feed_config(&self, name: &SetName) -> Option<&FeedConfig> {
        self.config.feeds.iter().find(|feed| feed.name == *name)
    }

    /// Brings the feeds' runtime in line with the config (start and reload): new feeds,
    /// and feeds whose URL changed, are fetched at once; removed ones are forgotten.
    pub(super) fn sync_feeds(&mut self, saved: &BTreeMap<SetName, SavedFeed>) {
        let now = now();
        let mut runtime = std::mem::take(&mut self.feeds);
        for feed in &self.config.feeds {
            let Some(key) = feed.source.key() else {
                continue;
            };
            let kept = runtime
                .remove(&feed.name)
                .or_else(|| {
                    saved.get(&feed.name).map(|saved| FeedRuntime {
                        saved: SavedFeed {
                            networks: BTreeMap::new(),
                            ..saved.clone()
                        },
                        next_at: saved.fetched_at.map_or(now, |at| {
                            next_refresh(at, feed).min(now.saturating_add(feed.refresh_secs))
                        }),
                        ..FeedRuntime::default()
                    })
                })
                .filter(|kept| kept.saved.url == key);
            let mut entry = kept.unwrap_or_else(|| FeedRuntime {
                saved: SavedFeed {
                    url: key.clone(),
                    ..SavedFeed::default()
                },
                next_at: now,
                ..FeedRuntime::default()
            });
            if let FeedSource::Fleet = feed.source {
                // Followed by the fleet's watch, never by the fetch timer.
                entry.next_at = u64::MAX;
            }
            self.feeds.insert(feed.name.clone(), entry);
        }
    }

    /// Each fetched feed as saved: its last good list and what the next fetch needs.
    pub(super) fn saved_feeds(&self) -> BTreeMap<SetName, SavedFeed> {
        self.feeds
            .iter()
            .filter_map(|(name, runtime)| {
                let networks = self.allowlist.feed(name)?;
                let descriptions = self
                    .feed_config(name)
                    .map(|feed| self.allowlist.feed_descriptions(name, &feed.description))
                    .unwrap_or_default();
                Some((
                    name.clone(),
                    SavedFeed {
                        networks,
                        descriptions,
                        ..runtime.saved.clone()
                    },
                ))
            })
            .collect()
    }

    /// The fetches `feeds refresh [NAME]` makes.
    pub fn feed_jobs(&self, name: Option<&SetName>) -> Result<Vec<FetchJob>, String> {
        if let Some(name) = name {
            let feed = self.feed_config(name).ok_or_else(|| {
                format!(
                    "no feed {name} in {}; `allowlistctl feeds` lists them",
                    self.config.path.display()
                )
            })?;
            if let FeedSource::Preset(preset) = &feed.source {
                return Err(format!(
                    "feed {name} is the preset {}: its addresses are built in, nothing to fetch",
                    preset.name
                ));
            }
            if let FeedSource::Fleet = &feed.source {
                return Err(format!(
                    "{name} is a [fleet] set: it follows etcd as it changes; `allowlistctl fleet status` shows how far each host is"
                ));
            }
        }
        Ok(self
            .config
            .feeds
            .iter()
            .filter(|feed| name.is_none_or(|name| feed.name == *name))
            .filter_map(|feed| self.job(feed))
            .collect())
    }

    fn job(&self, feed: &FeedConfig) -> Option<FetchJob> {
        if let FeedSource::Preset(_) | FeedSource::Fleet = &feed.source {
            return None;
        }
        Some(FetchJob {
            name: feed.name.clone(),
            source: feed.source.clone(),
            validators: self
                .feeds
                .get(&feed.name)
                .map(|runtime| runtime.saved.validators.clone())
                .unwrap_or_default(),
        })
    }

    /// The fetches due at `now`; each is scheduled for its next refresh at once, so the
    /// timer hands it out once.
    pub fn due_feed_jobs(&mut self, now: u64) -> Vec<FetchJob> {
        let due: Vec<FeedConfig> = self
            .config
            .feeds
            .iter()
            .filter(|feed| {
                self.feeds
                    .get(&feed.name)
                    .is_some_and(|runtime| runtime.next_at <= now)
            })
            .cloned()
            .collect();
        let mut jobs = Vec::new();
        for feed in &due {
            if let Some(runtime) = self.feeds.get_mut(&feed.name) {
                runtime.next_at = next_refresh(now, feed);
            }
            jobs.extend(self.job(feed));
        }
        jobs
    }

    /// When the next feed is due.
    pub fn next_feed_due(&self) -> Option<u64> {
        self.feeds.values().map(|runtime| runtime.next_at).min()
    }

    /// Applies what fetches brought, feed by feed; the reply says what happened to each.
    /// Nothing a provider sends can make the daemon lose a feed's last good list.
    pub fn feeds_fetched(
        &mut self,
        outcomes: Vec<FetchOutcome>,
        safety: &Safety,
        by: &Actor,
    ) -> Reply {
        let mut lines = Vec::new();
        let mut failed = false;
        for outcome in outcomes {
            let label = self
                .feed_config(&outcome.name)
                .map_or_else(|| format!("feed {}", outcome.name), FeedConfig::label);
            match self.feed_fetched(outcome, safety, by) {
                Ok(line) => lines.push(format!("{label}: {line}")),
                Err(line) => {
                    failed = true;
                    lines.push(format!("{label}: {line}"));
                }
            }
        }
        if lines.is_empty() {
            return Reply::done("no feed to fetch");
        }
        if failed {
            Reply::failed(lines.join("\n"))
        } else {
            Reply::done(lines.join("\n"))
        }
    }

    fn feed_fetched(
        &mut self,
        outcome: FetchOutcome,
        safety: &Safety,
        by: &Actor,
    ) -> Result<String, String> {
        let name = outcome.name;
        let Some(feed) = self.feed_config(&name).cloned() else {
            return Err("no longer in the config; ignored".into());
        };
        if let FeedSource::Preset(_) | FeedSource::Fleet = &feed.source {
            return Err("nothing to fetch; ignored".into());
        }
        let before = self
            .allowlist
            .feed(&name)
            .map_or(0, |networks| networks.len());
        if let Some(runtime) = self.feeds.get_mut(&name) {
            runtime.attempted_at = Some(outcome.attempted_at);
        }
        let result = match outcome.result {
            Err(error) => Err(error.to_string()),
            Ok(Fetched::NotModified) => {
                self.feed_good(&name, outcome.attempted_at, None);
                return Ok(format!("not modified; {before} entries"));
            }
            Ok(Fetched::Resolved(resolved)) => {
                let FeedSource::Dns(source) = &feed.source else {
                    return Err("answered a DNS lookup it did not ask; ignored".into());
                };
                let ttl = source.settings.clamp_ttl(resolved.ttl_secs);
                let result = self.offer_feed(
                    &feed,
                    resolved.networks,
                    Validators::default(),
                    outcome.attempted_at,
                    safety,
                    by,
                );
                if result.is_ok() {
                    // Asked again when the records' TTL (within the bounds) runs out.
                    if let Some(runtime) = self.feeds.get_mut(&name) {
                        runtime.next_at = outcome.attempted_at.saturating_add(ttl);
                    }
                }
                result.map(|message| {
                    format!(
                        "{message} (TTL {}s, asked again in {ttl}s)",
                        resolved.ttl_secs
                    )
                })
            }
            Ok(Fetched::Body { body, validators }) => {
                let FeedSource::Fetch(source) = &feed.source else {
                    return Err("answered a fetch it did not ask; ignored".into());
                };
                match feeds::parse(source.format, &body, &source.filters) {
                    Err(error) => Err(format!("the body is not a valid {} list: {error}", source.format)),
                    Ok(networks) if networks.is_empty() && !feed.allow_empty => Err(
                        "answered an empty list; refused (set allow_empty = true in the feed if an empty list is right)".to_string(),
                    ),
                    Ok(networks) => self.offer_feed(&feed, networks, validators, outcome.attempted_at, safety, by),
                }
            }
        };
        match result {
            Ok(message) => Ok(message),
            Err(error) => {
                let kept = format!("{error}; kept the last good list ({before} entries)");
                warn!(by = %by, feed = %name, "refused: {}: {kept}", feed.label());
                if let Some(runtime) = self.feeds.get_mut(&name) {
                    runtime.error = Some(kept.clone());
                }
                Err(kept)
            }
        }
    }

    /// Records a good answer: the validators of a new body (`None` for 304).
    fn feed_good(&mut self, name: &SetName, at: u64, validators: Option<Validators>) {
        if let Some(runtime) = self.feeds.get_mut(name) {
            runtime.saved.fetched_at = Some(at);
            runtime.error = None;
            if let Some(validators) = validators {
                runtime.saved.validators = validators;
            }
        }
    }

    /// A parsed list: applied, or held when it removes too much.
    fn offer_feed(
        &mut self,
        feed: &FeedConfig,
        networks: Vec<IpNet>,
        validators: Validators,
        at: u64,
        safety: &Safety,
        by: &Actor,
    ) -> Result<String, String> {
        let old: BTreeSet<IpNet> = self
            .allowlist
            .feed(&feed.name)
            .map(|networks| networks.into_keys().collect())
            .unwrap_or_default();
        let new: BTreeSet<IpNet> = networks.iter().copied().collect();
        let removed = old.difference(&new).count();
        let too_much = removed
            .checked_mul(100)
            .zip(old.len().checked_mul(usize::from(feed.max_shrink_percent)))
            .is_none_or(|(removed, allowed)| removed > allowed);
        if !old.is_empty() && too_much {
            let held = Held {
                networks,
                validators,
                removed,
                before: old.len(),
                fleet: None,
            };
            let message = format!(
                "held: this refresh would remove {removed} of its {} entries (more than max_shrink = {}%); `allowlistctl feeds accept {}` applies it",
                old.len(),
                feed.max_shrink_percent,
                feed.name
            );
            if let Some(runtime) = self.feeds.get_mut(&feed.name) {
                runtime.held = Some(held);
                runtime.saved.fetched_at = Some(at);
            }
            warn!(by = %by, feed = %feed.name, "{message}");
            return Err(message);
        }
        self.apply_feed(feed, networks, validators, at, safety, by)
    }

    fn apply_feed(
        &mut self,
        feed: &FeedConfig,
        networks: Vec<IpNet>,
        validators: Validators,
        at: u64,
        safety: &Safety,
        by: &Actor,
    ) -> Result<String, String> {
        let old = self.allowlist.feed(&feed.name).unwrap_or_default();
        let added = networks.iter().filter(|n| !old.contains_key(n)).count();
        let removed = old
            .len()
            .saturating_sub(networks.len().saturating_sub(added));
        if let Some(runtime) = self.feeds.get_mut(&feed.name) {
            runtime.held = None;
        }
        if added == 0 && removed == 0 && !old.is_empty() {
            self.feed_good(&feed.name, at, Some(validators));
            if let Err(error) = self.persist() {
                return Err(format!("unchanged, but saving it failed: {error}"));
            }
            return Ok(format!("unchanged; {} entries", networks.len()));
        }
        self.commit_feed(feed, &networks, None, at, safety, |runtime| {
            runtime.saved.fetched_at = Some(at);
            runtime.error = None;
            runtime.saved.validators = validators;
        })
        .map_err(|refusal| match refusal {
            Refusal::Error(message) | Refusal::Unsafe(message, _) => message,
        })?;
        let message = format!(
            "{} entries: {added} added, {removed} removed",
            networks.len()
        );
        info!(by = %by, kernel_took = ?self.kernel_took, feed = %feed.name, "{}: {message}", feed.label());
        Ok(message)
    }

    /// Makes `networks` (with their own `descriptions`, if given) the entries of `feed`
    /// through the path every change takes: compiled, checked against the kernel's
    /// limits and for lockout, then committed to the kernel and saved with what `record`
    /// writes into the feed's runtime. Refused, nothing changes (the runtime included).
    pub(super) fn commit_feed(
        &mut self,
        feed: &FeedConfig,
        networks: &[IpNet],
        descriptions: Option<&BTreeMap<IpNet, String>>,
        at: u64,
        safety: &Safety,
        record: impl FnOnce(&mut FeedRuntime),
    ) -> Result<(), Refusal> {
        let mut next = self.allowlist.clone();
        next.set_feed(feed, networks, at);
        if let Some(descriptions) = descriptions {
            next.describe_feed(&feed.name, descriptions);
        }
        self.refuse_empty_enforce(&next, self.mode, &format!("applying {}", feed.label()))?;
        let compiled = next
            .compile()
            .map_err(|error| Refusal::Error(error.to_string()))?;
        compiled.check_kernel_limits().map_err(Refusal::Error)?;
        self.check_lockout_against(&compiled, self.mode, safety)?;
        let previous = self.feeds.get(&feed.name).cloned();
        if let Some(runtime) = self.feeds.get_mut(&feed.name) {
            runtime.saved.changed_at = Some(at);
            record(runtime);
        }
        if let Err(error) = self.commit_with(next, self.mode, self.pending_confirm, Some(compiled))
        {
            if let (Some(runtime), Some(previous)) = (self.feeds.get_mut(&feed.name), previous) {
                *runtime = previous;
            }
            return Err(error.into());
        }
        Ok(())
    }

    /// `feeds accept NAME`: applies the refresh held for removing too much.
    pub(super) fn accept_feed(
        &mut self,
        name: &SetName,
        safety: &Safety,
        by: &Actor,
    ) -> Result<Reply, Refusal> {
        let feed = self
            .feed_config(name)
            .cloned()
            .ok_or_else(|| Refusal::Error(format!("no feed {name} in the config")))?;
        let held = self
            .feeds
            .get(name)
            .and_then(|runtime| runtime.held.clone())
            .ok_or_else(|| {
                Refusal::Error(format!(
                    "feed {name} has no refresh held: nothing to accept"
                ))
            })?;
        let at = now();
        if let Some((revision, cluster, descriptions)) = &held.fleet {
            return self
                .fleet_accept(&feed, &held, (*revision, *cluster), descriptions, at, safety)
                .map(|()| {
                    info!(by = %by, set = %name, revision, "fleet {name}: accepted revision {revision}");
                    Reply::done(format!(
                        "fleet set {name}: accepted revision {revision} ({} of {} entries removed)",
                        held.removed, held.before
                    ))
                });
        }
        match self.apply_feed(&feed, held.networks, held.validators, at, safety, by) {
            Ok(message) => Ok(Reply::done(format!(
                "feed {name}: accepted ({} of {} entries removed): {message}",
                held.removed, held.before
            ))),
            Err(message) => {
                if let Some(runtime) = self.feeds.get_mut(name) {
                    runtime.error = Some(message.clone());
                }
                Err(Refusal::Error(format!("feed {name}: {message}")))
            }
        }
    }

    /// `add --host NAME`: lists the name (or changes a listed one's description and
    /// ports); it is resolved right after (the server asks at once).
    pub(super) fn add_host(
        &mut self,
        host: &str,
        description: Option<String>,
        ports: Option<Vec<crate::ports::PortSpec>>,
    ) -> Result<Reply, Refusal> {
        let name = feeds::dns::check_host(host).map_err(Refusal::Error)?;
        let set = SetName::new(&name).map_err(Refusal::Error)?;
        if let Some(feed) = self.config.feeds.iter().find(|feed| feed.name == set) {
            if feed.as_cli_host().is_none() {
                return Err(Refusal::Error(format!(
                    "{name} is {} at line {} of {}; change it there",
                    feed.label(),
                    feed.line,
                    self.config.path.display()
                )));
            }
        }
        if set.is_config_file() || set == SetName::default() || self.allowlist.has_managed_set(&set)
        {
            return Err(Refusal::Error(format!(
                "set {name} is in use by entries added with allowlistctl; a name's addresses are a set of their own named after it"
            )));
        }
        if let Some(description) = &description {
            crate::allowlist::check_description(description).map_err(Refusal::Error)?;
        }
        if let Some(ports) = &ports {
            crate::ports::check_kernel_fit(ports).map_err(Refusal::Error)?;
        }
        let mut hosts = self.config.cli_hosts();
        let message = match hosts.iter_mut().find(|listed| listed.host == name) {
            Some(listed) => {
                if let Some(description) = description {
                    listed.description = description;
                }
                if let Some(ports) = ports {
                    listed.ports = ports;
                }
                format!("updated host {name}")
            }
            None => {
                let in_config = self
                    .config
                    .feeds
                    .iter()
                    .filter(|feed| matches!(feed.source, FeedSource::Dns(_)))
                    .count();
                if in_config >= feeds::dns::MAX_HOSTS {
                    return Err(Refusal::Error(format!(
                        "{in_config} names are listed already; at most {}",
                        feeds::dns::MAX_HOSTS
                    )));
                }
                hosts.push(feeds::dns::CliHost {
                    host: name.clone(),
                    description: description.unwrap_or_default(),
                    ports: ports.unwrap_or_default(),
                    line: 0,
                });
                format!("added host {name} (set {name}, origin dns {name})")
            }
        };
        self.apply_hosts(&hosts, &Safety::default(), &format!("adding host {name}"))?;
        Ok(Reply::done(message))
    }

    /// `remove --host NAME`: forgets a name added with `add --host` and the addresses it
    /// allowed, after the lockout check.
    pub(super) fn remove_host(
        &mut self,
        host: &str,
        if_present: bool,
        safety: &Safety,
    ) -> Result<Reply, Refusal> {
        let name = feeds::dns::check_host(host).map_err(Refusal::Error)?;
        let mut hosts = self.config.cli_hosts();
        let before = hosts.len();
        hosts.retain(|listed| listed.host != name);
        if hosts.len() == before {
            if let Some(feed) = self
                .config
                .feeds
                .iter()
                .find(|feed| feed.name.as_str() == name)
            {
                return Err(Refusal::Error(format!(
                    "{name} is {} at line {} of {}: remove it there, then `allowlistctl reload`",
                    feed.label(),
                    feed.line,
                    self.config.path.display()
                )));
            }
            if if_present {
                return Ok(Reply::done(format!(
                    "host {name} is not listed; nothing to remove"
                )));
            }
            return Err(Refusal::Error(format!(
                "host {name} is not listed (`allowlistctl feeds` lists the names)"
            )));
        }
        self.apply_hosts(&hosts, safety, &format!("removing host {name}"))?;
        Ok(Reply::done(format!("removed host {name}")))
    }

    /// Makes `hosts` the names added with `add --host`: the config's feeds with them,
    /// the list changed to match, checked like any change, and saved.
    fn apply_hosts(
        &mut self,
        hosts: &[feeds::dns::CliHost],
        safety: &Safety,
        what: &str,
    ) -> Result<(), Refusal> {
        let mut config = self.config.clone();
        config.feeds.retain(|feed| feed.as_cli_host().is_none());
        config.add_cli_hosts(hosts);
        let mut next = self.allowlist.clone();
        next.set_config(&config);
        self.refuse_empty_enforce(&next, self.mode, what)?;
        let compiled = next
            .compile()
            .map_err(|error| Refusal::Error(error.to_string()))?;
        compiled.check_kernel_limits().map_err(Refusal::Error)?;
        self.check_lockout_against(&compiled, self.mode, safety)?;
        let previous = std::mem::replace(&mut self.config, config);
        let previous_feeds = self.feeds.clone();
        self.sync_feeds(&BTreeMap::new());
        if let Err(error) = self.commit_with(next, self.mode, self.pending_confirm, Some(compiled))
        {
            self.config = previous;
            self.feeds = previous_feeds;
            return Err(error.into());
        }
        Ok(())
    }

    /// Each feed as `feeds` and `status` show it.
    pub fn feed_statuses(&self) -> Vec<FeedStatus> {
        self.config
            .feeds
            .iter()
            .map(|feed| {
                let runtime = self.feeds.get(&feed.name);
                let (source, format) = match &feed.source {
                    FeedSource::Preset(preset) => (format!("preset {}", preset.name), None),
                    FeedSource::Fetch(source) => {
                        (source.url.clone(), Some(source.format.to_string()))
                    }
                    FeedSource::Dns(source) => {
                        (format!("dns {}", source.host), Some("dns".to_string()))
                    }
                    FeedSource::Fleet => (
                        self.config.fleet.as_ref().map_or_else(String::new, |fleet| {
                            format!("etcd {}", crate::fleet::Layout::new(&fleet.prefix).set(&feed.name))
                        }),
                        Some("fleet".to_string()),
                    ),
                };
                FeedStatus {
                    name: feed.name.clone(),
                    source,
                    format,
                    entries: self.allowlist.feed(&feed.name).map_or(0, |n| n.len()),
                    refresh_secs: feed.refresh_secs,
                    last_fetch: runtime.and_then(|r| r.attempted_at),
                    last_good: runtime.and_then(|r| r.saved.fetched_at),
                    last_change: runtime.and_then(|r| r.saved.changed_at),
                    next_refresh: runtime.map(|r| r.next_at).filter(|at| *at != u64::MAX),
                    error: runtime
                        .and_then(|r| r.error.clone())
                        .or_else(|| self.fleet_disconnected(feed)),
                    held: runtime.and_then(|r| r.held.as_ref()).map(|held| {
                        format!(
                            "a refresh removing {} of {} entries waits for `allowlistctl feeds accept {}`",
                            held.removed, held.before, feed.name
                        )
                    }).or_else(|| runtime.and_then(|r| r.fleet_held.as_ref()).map(|(_, why)| why.clone())),
                    revision: runtime.and_then(|r| r.saved.revision),
                }
            })
            .collect()
    }
}
