//! Requests of the control protocol, one method each: what they check, what they change,
//! what they answer. Changes go through the state transitions in `mod.rs`.

use ipnet::IpNet;
use tracing::{info, warn};

use std::{collections::BTreeMap, time::Duration};

use super::{Actor, Daemon, DaemonError, Kernel, Refusal};
use crate::{
    allowlist::{check_description, check_import_rows, EntryUpdate, ImportRow, ListError, SetName},
    clock::{self, format_time, now},
    compile::Reach,
    config::{self, Mode},
    control::{
        CheckResult, CounterValue, DroppedRow, EntryCounts, InterfaceStatus, Reply, Request,
        Safety, Stats, Status,
    },
    filter::{Counters, DroppedSource},
    ports::{self, PortSpec},
    startup,
    state::{Change, PendingConfirm},
    verdict::{self, Destination},
};

impl<K: Kernel> Daemon<K> {
    pub fn status(&self) -> Status {
        let (ipv4, ipv6) = self.filter.entry_counts();
        Status {
            mode: self.filter.mode(),
            confirm_deadline: self.pending_confirm.map(|pending| pending.deadline),
            interfaces: self
                .filter
                .attached()
                .iter()
                .map(|(name, mode)| InterfaceStatus {
                    name: name.clone(),
                    xdp_mode: *mode,
                    egress: self.filter.egress().get(name).copied(),
                })
                .collect(),
            entries: EntryCounts { ipv4, ipv6 },
            pin_path: self.config.pin_path.display().to_string(),
            config: self.config.path.display().to_string(),
            kernel: super::kernel_release(),
            feeds: self.feed_statuses(),
        }
    }

    pub fn stats(&self) -> Result<Stats, DaemonError> {
        let by_reason = |counters: Counters| -> BTreeMap<String, CounterValue> {
            counters
                .into_iter()
                .map(|(name, counter)| {
                    (
                        name.to_string(),
                        CounterValue {
                            packets: counter.packets,
                            bytes: counter.bytes,
                        },
                    )
                })
                .collect()
        };
        Ok(Stats {
            counters: by_reason(self.filter.counters()?),
            interfaces: self
                .filter
                .interface_counters()?
                .into_iter()
                .map(|(interface, counters)| (interface, by_reason(counters)))
                .collect(),
        })
    }

    fn check(
        &self,
        address: std::net::IpAddr,
        port: Option<PortSpec>,
    ) -> Result<CheckResult, Refusal> {
        // An IPv4 client reaches the host as IPv4 whatever it is written as.
        let address = crate::sockets::unmap(address);
        let list = &self.compiled;
        let destination = port.map(|port| Destination {
            protocol: port.protocol,
            port: port.first,
        });
        let reason = verdict::reason(list, self.mode, address, destination);
        Ok(CheckResult {
            address,
            port,
            mode: self.mode,
            verdict: if reason.drops() { "drop" } else { "pass" }.into(),
            reason: reason.name().into(),
            allowed_ports: match list.access_of(address) {
                Some(Reach::Ports(ranges)) => Some(ranges.clone()),
                _ => None,
            },
            entry: self.allowlist.deciding_entry(address),
            recent_drops: self
                .dropped_rows()
                .map_err(Refusal::from)?
                .into_iter()
                .filter(|row| row.source == address)
                .collect(),
        })
    }

    /// `list`: every entry, and what each one the kernel counts for admitted.
    fn list_with_hits(&self) -> Result<Reply, DaemonError> {
        let hits = self.filter.prefix_hits()?;
        let entries = self.allowlist.entries();
        let rows = entries
            .iter()
            .filter_map(|entry| {
                let counted = hits.get(&entry.network)?;
                Some(crate::control::EntryHitsRow {
                    network: entry.network,
                    packets: counted.packets,
                    bytes: counted.bytes,
                    last_hit: counted.last_hit,
                })
            })
            .collect();
        Ok(Reply {
            hits: Some(rows),
            ..Reply::with_entries(entries)
        })
    }

    /// The kernel's table of dropped sources, with interface names.
    fn dropped_rows(&self) -> Result<Vec<DroppedRow>, DaemonError> {
        let sources = self.filter.dropped_sources()?;
        Ok(sources.into_iter().map(dropped_row).collect())
    }

    /// `top`: dropped sources (or, `would_drop`, those monitor passed), most packets
    /// first, seen in the last `since_secs`, at most `limit`.
    pub(super) fn top(
        &self,
        would_drop: bool,
        since_secs: Option<u64>,
        limit: Option<usize>,
    ) -> Result<Vec<DroppedRow>, DaemonError> {
        let oldest = since_secs.map_or(0, |since| now().saturating_sub(since));
        let mut rows: Vec<DroppedRow> = self
            .dropped_rows()?
            .into_iter()
            .filter(|row| row.dropped != would_drop && row.last_seen >= oldest)
            .collect();
        rows.sort_by(|a, b| {
            b.packets
                .cmp(&a.packets)
                .then(b.last_seen.cmp(&a.last_seen))
                .then(a.source.cmp(&b.source))
                .then(a.interface.cmp(&b.interface))
        });
        if let Some(limit) = limit {
            rows.truncate(limit);
        }
        Ok(rows)
    }

    /// Answers `request`, made `by` a client (or the daemon itself); every change and
    /// every refusal is logged with who asked and how long the kernel took.
    pub(crate) fn handle(&mut self, request: Request, by: &Actor) -> Reply {
        self.kernel_took = Duration::ZERO;
        let changes = !request.is_read_only();
        let result = match request {
            Request::Status => Ok(Reply::with_status(self.status())),
            Request::Stats => self.stats().map(Reply::with_stats).map_err(Refusal::from),
            Request::List => self.list_with_hits().map_err(Refusal::from),
            Request::Export => Ok(Reply::with_entries(self.allowlist.entries())),
            Request::Check { address, port } => self.check(address, port).map(Reply::with_check),
            Request::Reload => self.reload().map(Reply::done).map_err(Refusal::from),
            Request::Add {
                network,
                description,
                expires_in_secs,
                never_expires,
                ports,
                set,
                safety,
            } => self.add(
                (network, &set),
                description,
                (expires_in_secs, never_expires),
                ports,
                &safety,
            ),
            Request::Remove {
                network,
                if_present,
                set,
                safety,
            } => self.remove(network, &set, if_present, &safety),
            Request::Import {
                rows,
                set,
                replace,
                dry_run,
                safety,
            } => {
                let imported = self.import(&rows, &set, replace, dry_run, &safety);
                // The rows of a whole list are hundreds of bytes each, freed only now.
                drop(rows);
                super::return_freed_memory();
                imported
            }
            Request::ImportStream { .. } => Err(Refusal::Error(
                "import_stream: its rows follow on the control socket, which reads them and asks as `import`".into(),
            )),
            Request::SetMode {
                mode,
                confirm_secs,
                safety,
            } => self.set_mode(mode, confirm_secs, &safety),
            Request::Confirm => self.confirm(),
            Request::Top {
                would_drop,
                since_secs,
                limit,
            } => self
                .top(would_drop, since_secs, limit)
                .map(Reply::with_top)
                .map_err(Refusal::from),
            Request::Feeds => Ok(Reply::with_feeds(self.feed_statuses())),
            Request::FeedsRefresh { name, safety } => {
                // The server fetches without the lock; this path (the daemon's own
                // tests) fetches under it.
                match self.feed_jobs(name.as_ref()) {
                    Ok(jobs) => {
                        let outcomes = jobs.into_iter().map(super::FetchJob::run).collect();
                        return self.feeds_fetched(outcomes, &safety, by);
                    }
                    Err(message) => Err(Refusal::Error(message)),
                }
            }
            Request::FeedsAccept { name, safety } => self.accept_feed(&name, &safety, by),
            Request::AddHost {
                host,
                description,
                ports,
            } => self.add_host(&host, description, ports),
            Request::RemoveHost {
                host,
                if_present,
                safety,
            } => self.remove_host(&host, if_present, &safety),
        };
        match result {
            Ok(reply) => {
                if let (true, Some(message)) = (changes, &reply.message) {
                    info!(by = %by, kernel_took = ?self.kernel_took, "{message}");
                }
                reply
            }
            Err(Refusal::Error(message)) => {
                warn!(by = %by, "refused: {message}");
                Reply::failed(message)
            }
            Err(Refusal::Unsafe(message, at_risk)) => {
                warn!(by = %by, "refused: {message}");
                Reply::unsafe_change(message, at_risk)
            }
        }
    }

    fn add(
        &mut self,
        (network, set): (IpNet, &SetName),
        description: Option<String>,
        (expires_in_secs, never_expires): (Option<u64>, bool),
        ports: Option<Vec<PortSpec>>,
        safety: &Safety,
    ) -> Result<Reply, Refusal> {
        let network = config::normalize(network);
        refuse_everyone_unless_forced(network, safety.force)?;
        if let Some(description) = &description {
            check_description(description).map_err(Refusal::Error)?;
        }
        if let Some(ports) = &ports {
            ports::check_kernel_fit(ports).map_err(Refusal::Error)?;
        }
        let expires_at = match (expires_in_secs, never_expires) {
            (Some(_), true) => {
                return Err(Refusal::Error(
                    "an entry cannot both expire and never expire".into(),
                ))
            }
            (Some(secs), false) => Some(Some(
                clock::deadline_after("--expires", now(), secs, clock::MAX_EXPIRY)
                    .map_err(|error| Refusal::Error(error.to_string()))?,
            )),
            (None, true) => Some(None),
            (None, false) => None,
        };
        let previous = self.allowlist.managed_entry(network, set);
        let update = EntryUpdate {
            description,
            expires_at,
            ports,
        };
        let new = self.allowlist.add(network, set, update)?;
        let added = self.allowlist.managed_entry(network, set);
        let added = added.ok_or_else(|| Refusal::Error(format!("{network} vanished")))?;
        if let Some(before) = &previous {
            if let Err(refusal) = self.check_narrowing(before, &added, safety) {
                self.allowlist.restore_managed(network, set, previous);
                return Err(refusal);
            }
        }
        self.commit_change((network, set), previous, Change::Add(added.clone()))?;
        let ports = match added.ports.as_slice() {
            [] => "all ports".to_string(),
            ports => ports
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        };
        let expiry = match added.expires_at {
            Some(at) => format!("until {}", format_time(at)),
            None => "permanent".into(),
        };
        Ok(Reply::done(format!(
            "{} {network}{} ({ports}, {expiry})",
            if new { "added" } else { "updated" },
            in_set(set)
        )))
    }

    fn remove(
        &mut self,
        network: IpNet,
        set: &SetName,
        if_present: bool,
        safety: &Safety,
    ) -> Result<Reply, Refusal> {
        let network = config::normalize(network);
        let removed = match self.allowlist.remove(network, set) {
            Err(ListError::NotListed(_) | ListError::InOtherSets { .. }) if if_present => {
                return Ok(Reply::done(format!(
                    "{network} is not in set {set}; nothing to remove"
                )))
            }
            removed => removed?,
        };
        let checked = self
            .refuse_empty_enforce(&self.allowlist, self.mode, &format!("removing {network}"))
            .and_then(|()| {
                self.check_lockout_with(
                    || {
                        let mut next = self.compiled.clone();
                        next.recompile_region(network, self.allowlist.entries_around(network))
                            .map_err(|error| Refusal::Error(error.to_string()))?;
                        Ok(next)
                    },
                    self.mode,
                    safety,
                )
            });
        if let Err(refusal) = checked {
            self.allowlist.restore_managed(network, set, Some(removed));
            return Err(refusal);
        }
        self.commit_change((network, set), Some(removed), Change::remove(network, set))?;
        Ok(Reply::done(format!("removed {network}{}", in_set(set))))
    }

    fn import(
        &mut self,
        rows: &[ImportRow],
        set: &SetName,
        replace: bool,
        dry_run: bool,
        safety: &Safety,
    ) -> Result<Reply, Refusal> {
        check_import_rows(rows, now(), safety.force).map_err(|mut bad| {
            const SHOWN: usize = 50;
            let more = bad.len().saturating_sub(SHOWN);
            bad.truncate(SHOWN);
            if more > 0 {
                bad.push(format!("… and {more} more"));
            }
            Refusal::Error(format!(
                "import refused, nothing changed:\n  {}",
                bad.join("\n  ")
            ))
        })?;
        let mut next = self.allowlist.clone();
        let plan = next.import(rows, set, replace)?;
        let summary = format!(
            "{} {} rows{}: {} added, {} updated, {} removed, {} left to the config file",
            if dry_run { "would import" } else { "imported" },
            rows.len(),
            in_set(set),
            plan.added.len(),
            plan.updated.len(),
            plan.removed.len(),
            plan.unchanged_config.len()
        );
        if dry_run {
            return Ok(Reply::with_import(summary, plan));
        }
        if replace {
            self.refuse_empty_enforce(&next, self.mode, "import --replace")?;
        }
        let compiled = next
            .compile()
            .map_err(|error| Refusal::Error(startup::where_from(&self.config, &error)))?;
        compiled.check_kernel_limits().map_err(Refusal::Error)?;
        // Rows can narrow ports (at once) or set an earlier expiry (when it comes) of
        // listed entries, and --replace removes: whoever would be cut off, now or then.
        let expiring_sooner = self.allowlist.expiring_sooner_in(&next);
        if expiring_sooner.is_empty() {
            self.check_lockout_against(&compiled, self.mode, safety)?;
        } else {
            self.check_lockout_with(
                || {
                    let mut then = next.clone();
                    for (network, set) in &expiring_sooner {
                        let _ = then.remove(*network, set);
                    }
                    then.compile()
                        .map_err(|error| Refusal::Error(error.to_string()))
                },
                self.mode,
                safety,
            )?;
        }
        self.commit_with(next, self.mode, self.pending_confirm, Some(compiled))?;
        Ok(Reply::with_import(summary, plan))
    }

    fn set_mode(
        &mut self,
        mode: Mode,
        confirm_secs: Option<u64>,
        safety: &Safety,
    ) -> Result<Reply, Refusal> {
        self.refuse_empty_enforce(&self.allowlist, mode, "activation")?;
        if mode == Mode::Enforce && self.mode != Mode::Enforce {
            self.check_lockout(&self.allowlist, mode, safety)?;
        }
        let deadline = confirm_secs
            .map(|secs| clock::deadline_after("--confirm", now(), secs, clock::MAX_CONFIRM))
            .transpose()
            .map_err(|error| Refusal::Error(error.to_string()))?;
        let pending = deadline.map(|deadline| PendingConfirm {
            revert_to: self
                .pending_confirm
                .map_or(self.mode, |pending| pending.revert_to),
            deadline,
        });
        let previous = self.mode;
        self.commit(self.allowlist.clone(), mode, pending)?;
        Ok(Reply::done(match pending {
            Some(pending) => format!(
                "mode {mode} (was {previous}); reverts to {} at {} unless `allowlistctl confirm` arrives",
                pending.revert_to,
                format_time(pending.deadline)
            ),
            None => format!("mode {mode} (was {previous})"),
        }))
    }

    fn confirm(&mut self) -> Result<Reply, Refusal> {
        let Some(pending) = self.pending_confirm else {
            return Err(Refusal::Error(
                "nothing to confirm: no `activate --confirm` is pending".into(),
            ));
        };
        let too_late = || {
            Refusal::Error(format!(
                "too late: the deadline ({}) passed and mode {} is back; activate again to enforce",
                format_time(pending.deadline),
                pending.revert_to
            ))
        };
        if pending.deadline <= now() {
            // The timer is about to revert (the kernel may have already).
            self.tick();
            return Err(too_late());
        }
        self.commit(self.allowlist.clone(), self.mode, None)?;
        if self.filter.mode() != self.mode {
            // The program reverted on its deadline while this confirmation was being
            // written: the kernel's revert stands, and the daemon follows it.
            warn!(by = %Actor::ConfirmDeadline, "the kernel reverted to mode {} on the deadline as the confirmation arrived", pending.revert_to);
            self.commit(self.allowlist.clone(), pending.revert_to, None)?;
            return Err(too_late());
        }
        Ok(Reply::done(format!("confirmed: mode {} stays", self.mode)))
    }
}

/// " in set NAME" for a set other than `default`, whose name is left out of messages as
/// it was before sets existed.
fn in_set(set: &SetName) -> String {
    if *set == SetName::default() {
        String::new()
    } else {
        format!(" in set {set}")
    }
}

/// Listing 0.0.0.0/0 or ::/0 switches the allowlist off for that family: only on purpose.
fn refuse_everyone_unless_forced(network: IpNet, force: bool) -> Result<(), Refusal> {
    if config::allows_everyone(network) && !force {
        return Err(Refusal::Error(format!(
            "{network} allows every source, which turns the allowlist off for that address family; repeat with --force if that is what you want"
        )));
    }
    Ok(())
}

fn dropped_row(source: DroppedSource) -> DroppedRow {
    let interface = nix::net::if_::if_indextoname(source.ifindex)
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| format!("ifindex {}", source.ifindex));
    DroppedRow {
        source: source.source,
        interface,
        reason: source.reason.name().into(),
        dropped: source.reason.drops(),
        packets: source.packets,
        bytes: source.bytes,
        last_seen: source.last_seen,
    }
}
