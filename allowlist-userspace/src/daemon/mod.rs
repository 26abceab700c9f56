//! `allowlistd`'s state and how it changes: start, reload, and the transitions every
//! request goes through (apply to the kernel, make durable, or roll back). The requests
//! themselves are in `requests.rs`, the rules that guard them in `guards.rs`, the socket
//! in `crate::server`.
//!
//! Start-up order matters for an operator's safety: config and state are validated
//! completely before the kernel is touched; the list and mode are in the maps before the
//! program is attached anywhere; the socket only answers once every interface is
//! protected. Every change is applied to the kernel, then made durable, then reported.
//!
//! Over 500 lines because start-up, reload and the apply-or-roll-back transition share
//! the daemon's fields and their ordering rules; split apart, each would need the others'
//! invariants restated.

mod actor;
mod durability;
mod feeds;
mod fleet;
mod guards;
mod kernel;
mod requests;
#[cfg(test)]
mod tests;

pub use actor::Actor;
pub use feeds::{FetchJob, FetchOutcome};
pub use fleet::{DesiredSet, FleetOutcome, SetDelta};
pub use kernel::Kernel;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use tracing::{debug, error, info, warn};

use crate::{
    access::{Access, SharedAccess},
    allowlist::{Allowlist, Entry, ListError},
    attachments,
    clock::now,
    compile::CompiledList,
    config::{Config, ConfigError, EncapsulatedIp, Mode},
    durable,
    filter::{self, ApplyReport, Filter, FilterError, Pins},
    instance::{self, InstanceLock, LockError},
    metrics,
    startup::{self, PlanError, StartPlan},
    state::{self, Change, PendingConfirm, StateError},
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Refused(String),
    #[error("control socket {path}: {message}")]
    Socket { path: String, message: String },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Directory(#[from] durable::UnsafeDirectory),
}

impl From<PlanError> for DaemonError {
    fn from(error: PlanError) -> Self {
        match error {
            PlanError::State(error) => DaemonError::State(error),
            PlanError::Directory(error) => DaemonError::Directory(error),
            PlanError::Refused(message) => DaemonError::Refused(message),
        }
    }
}

/// Why a request was not carried out. Nothing changed.
enum Refusal {
    Error(String),
    Unsafe(String, Vec<crate::safety::AtRisk>),
}

impl From<DaemonError> for Refusal {
    fn from(error: DaemonError) -> Self {
        Refusal::Error(error.to_string())
    }
}

impl From<ListError> for Refusal {
    fn from(error: ListError) -> Self {
        Refusal::Error(error.to_string())
    }
}

/// The daemon's state: the config, the allowlist and mode it enforces, and the kernel
/// (the real [`Filter`], or a fake in unit tests).
pub struct Daemon<K: Kernel = Filter> {
    config: Config,
    allowlist: Allowlist,
    mode: Mode,
    /// The config file's `mode` when `mode` was last decided (see State::config_mode).
    config_mode: Mode,
    pending_confirm: Option<PendingConfirm>,
    filter: K,
    /// `allowlist` compiled, as the kernel judges by it; kept so that requests and
    /// lockout checks read it instead of compiling the whole list again.
    compiled: CompiledList,
    /// Changes in the journal since the state file was last written whole.
    journaled: usize,
    /// Generation of the state file on disk, which journal lines name.
    generation: u64,
    /// Who may use the control socket; reload changes it for every connection.
    access: SharedAccess,
    /// Time the kernel took for the change being made, for its log line.
    kernel_took: Duration,
    /// What the daemon counts of its own work, for Prometheus.
    events: metrics::Events,
    /// Each fetched feed's schedule, validators and last error.
    feeds: std::collections::BTreeMap<crate::allowlist::SetName, feeds::FeedRuntime>,
    /// Whether the fleet's watch reaches etcd.
    fleet: fleet::FleetRuntime,
    /// Held for the daemon's life: no second daemon on this pin path or state dir.
    _instance: Option<InstanceLock>,
}

impl Daemon<Filter> {
    /// Restores the saved state on top of `config` and applies it to the kernel: loads
    /// (or takes over) the filter, fills the list, sets the mode, attaches everywhere.
    pub fn start(config: Config, ebpf_debug_log: bool) -> Result<Daemon, DaemonError> {
        for warning in &config.warnings {
            warn!("{warning}");
        }
        // Nothing is changed before the locks are held, and the state is read under its
        // lock; nothing is created on bpffs for a config (or saved state) that is refused.
        durable::create_private_dir("state_dir", &config.state_dir)?;
        let state_lock = instance::lock_dir("state_dir", &config.state_dir)?;
        let plan = StartPlan::new(config)?;
        let pins = Pins::new(&plan.config.pin_path);
        filter::prepare_pin_root(&pins)?;
        let pins_lock = instance::lock_dir("pin_path", &plan.config.pin_path)?;
        let instance = InstanceLock::new(vec![state_lock, pins_lock]);
        if durable::prepare_private_dir("state_dir", &plan.config.state_dir)? {
            info!(state_dir = %plan.config.state_dir.display(), "made the state directory private (0700, files 0600)");
        }
        durable::prepare_socket_dir(&plan.config.socket)?;
        if let Some(saved) = &plan.saved {
            info!(entries = saved.entries, journaled = saved.replay.changes, mode = %saved.mode, "restored the saved allowlist");
            if saved.replay.stale > 0 {
                info!(lines = saved.replay.stale, "left out journal lines a crash left behind after the state file was written whole (they are in it)");
            }
            if saved.normalized > 0 {
                warn!(entries = saved.normalized, "saved entries listed IPv4-mapped IPv6 networks, which the filter never matched; they are listed as the IPv4 networks they stand for");
            }
            if let Some(tail) = &saved.replay.torn_tail {
                warn!(
                    journal = %state::journal_path(&plan.config.state_dir).display(),
                    line = tail.line,
                    bytes = tail.bytes,
                    "the journal ended in a partial line, a change cut short by a crash while it was written (so never acknowledged); it was left out"
                );
                state::cut_torn_tail(&plan.config.state_dir, tail)?;
            }
        }

        let taking_over = Filter::is_pinned(&pins)?;
        let mut filter = Filter::open_with(pins, ebpf_debug_log, plan.config.dropped_sources)?;
        let mut plan = plan;
        if taking_over {
            if !filter.switching_layouts() {
                let (ipv4, ipv6) = filter.entry_counts();
                info!(mode = %filter.mode(), ipv4, ipv6, "found a pinned filter still enforcing; taking it over");
            }
            if let (Some(pending), Some(_)) = (plan.pending_confirm, filter.reverted_in_kernel()?) {
                // The kernel's clock decided, whatever the wall clock says now.
                (plan.mode, plan.pending_confirm) = (pending.revert_to, None);
                plan.reverted_while_stopped = Some(pending);
            }
        }
        if let Some(pending) = plan.reverted_while_stopped {
            warn!(by = %Actor::ConfirmDeadline, "a change made with --confirm was not confirmed by its deadline ({}) while the daemon was not running; it is reverted: mode {}", crate::clock::format_time(pending.deadline), pending.revert_to);
        }
        Daemon::assemble(plan, filter, Some(instance))
    }
}

impl<K: Kernel> Daemon<K> {
    /// Brings `kernel` in line with `plan`: the list and mode first, then the interfaces,
    /// then the program pinned and the state written.
    fn assemble(
        plan: StartPlan,
        kernel: K,
        instance: Option<InstanceLock>,
    ) -> Result<Daemon<K>, DaemonError> {
        let StartPlan {
            config,
            allowlist,
            mode,
            config_mode,
            pending_confirm,
            reverted_while_stopped: _,
            compiled,
            saved,
        } = plan;
        let access = SharedAccess::new(Access::from_config(
            config.socket_group.as_deref(),
            config.socket_readable_by_all,
        ));
        let mut daemon = Daemon {
            config,
            allowlist,
            mode,
            config_mode,
            pending_confirm,
            filter: kernel,
            compiled: CompiledList::default(),
            journaled: 0,
            generation: saved.as_ref().map_or(0, |saved| saved.generation),
            access,
            kernel_took: Duration::ZERO,
            events: metrics::Events::default(),
            feeds: Default::default(),
            fleet: Default::default(),
            _instance: instance,
        };
        daemon.sync_feeds(
            &saved
                .as_ref()
                .map(|saved| saved.feeds.clone())
                .unwrap_or_default(),
        );
        daemon.apply_compiled(compiled)?;
        daemon.attach_interfaces()?;
        daemon.filter.pin_program()?;
        daemon.filter.complete_layout()?;
        daemon.persist_at_start(saved)?;
        Ok(daemon)
    }

    /// Re-reads the config file; on any error the running state is kept.
    pub fn reload(&mut self) -> Result<String, DaemonError> {
        let mut config = Config::load(&self.config.path)?;
        config.add_cli_hosts(&self.config.cli_hosts());
        for (what, old, new) in [
            ("socket", &self.config.socket, &config.socket),
            ("pin_path", &self.config.pin_path, &config.pin_path),
            ("state_dir", &self.config.state_dir, &config.state_dir),
        ] {
            if old != new {
                warn!(
                    "{what} changed from {} to {}; it takes effect at the next start",
                    old.display(),
                    new.display()
                );
            }
        }
        for (what, old, new) in [
            (
                "dropped_sources",
                self.config.dropped_sources.to_string(),
                config.dropped_sources.to_string(),
            ),
            (
                "metrics_listen",
                self.config
                    .metrics_listen
                    .map_or("none".into(), |at| at.to_string()),
                config
                    .metrics_listen
                    .map_or("none".into(), |at| at.to_string()),
            ),
        ] {
            if old != new {
                warn!("{what} changed from {old} to {new}; it takes effect at the next start");
            }
        }
        for warning in &config.warnings {
            warn!("{warning}");
        }
        let config = Config {
            socket: self.config.socket.clone(),
            pin_path: self.config.pin_path.clone(),
            state_dir: self.config.state_dir.clone(),
            dropped_sources: self.config.dropped_sources,
            metrics_listen: self.config.metrics_listen,
            ..config
        };
        let mut allowlist = self.allowlist.clone();
        allowlist.set_config(&config);
        let mode = if config.mode != self.config_mode {
            config.mode
        } else {
            self.mode
        };
        allowlist
            .refuse_locking_everyone_out(
                mode,
                &format!("{}: reloading with mode enforce", config.path.display()),
            )
            .map_err(DaemonError::Refused)?;
        let previous = std::mem::replace(&mut self.config, config);
        // Access first, and on its own: taking it away must not wait for (or depend on)
        // the list change, which can fail on a full disk.
        if let Err(error) = self.apply_access() {
            self.config = previous;
            return Err(error);
        }
        let previous_config_mode = std::mem::replace(&mut self.config_mode, self.config.mode);
        let previous_feeds = self.feeds.clone();
        self.sync_feeds(&Default::default());
        let result = self
            .commit(allowlist, mode, self.pending_confirm)
            .and_then(|()| self.attach_interfaces());
        if let Err(error) = result {
            self.config = previous;
            self.config_mode = previous_config_mode;
            self.feeds = previous_feeds;
            return Err(error);
        }
        let (ipv4, ipv6) = self.filter.entry_counts();
        Ok(format!(
            "reloaded {}: mode {}, {ipv4} IPv4 and {ipv6} IPv6 prefixes",
            self.config.path.display(),
            self.mode,
        ))
    }

    fn attach_interfaces(&mut self) -> Result<(), DaemonError> {
        let recorded = attachments::load(&self.config.state_dir);
        let return_traffic = self.config.return_traffic;
        let mut attach = || -> Result<(), DaemonError> {
            for interface in &self.config.interfaces {
                // The flow tracker first, so that the host's replies pass from the first
                // packet the filter judges.
                if let Err(error) = self.filter.attach_egress(interface) {
                    if return_traffic {
                        return Err(DaemonError::Refused(format!(
                            "{interface}: return_traffic = true, but the flow tracker cannot be attached on this kernel ({error}); without it the host's own connections lose their replies while enforcing. Set return_traffic = false to go on without it"
                        )));
                    }
                    warn!(interface, %error, "the egress flow tracker cannot be attached; return_traffic is off, so nothing is lost");
                }
                let recorded = recorded.get(interface).copied();
                self.filter
                    .attach(interface, self.config.xdp_mode, recorded)?;
            }
            Ok(self.filter.detach_others(&self.config.interfaces)?)
        };
        let attached = attach();
        // Also after a failure: what did get attached is recorded.
        attachments::store(&self.config.state_dir, self.filter.attached());
        attached?;
        let seeded = self.filter.seed_flows(&crate::sockets::outbound_flows())?;
        let mechanisms: Vec<String> = self
            .config
            .interfaces
            .iter()
            .map(|interface| {
                let xdp = self.filter.attached().get(interface);
                let egress = self.filter.egress().get(interface);
                format!("{interface}: XDP {xdp:?}, flow tracker {egress:?}")
            })
            .collect();
        let verdicts = match self.mode {
            Mode::Enforce => "dropping unlisted sources",
            Mode::Monitor => "passing everything, counting what enforce would drop",
            Mode::Off => "passing everything (mode off)",
        };
        info!(mode = %self.mode, kernel = %kernel_release(), attached = ?mechanisms, return_traffic = self.config.return_traffic, encapsulated_ip = ?self.config.encapsulated_ip, seeded_flows = seeded, "attached; {verdicts}");
        Ok(())
    }

    /// Makes the kernel judge by the current allowlist and mode: list first, so a
    /// stricter mode never meets a stale list.
    fn apply_to_kernel(&mut self) -> Result<(), DaemonError> {
        let list = self.compile_checked()?;
        self.apply_compiled(list)
    }

    /// The current allowlist compiled, refused if it would not fit the kernel's maps.
    fn compile_checked(&self) -> Result<CompiledList, DaemonError> {
        let list = self
            .allowlist
            .compile()
            .map_err(|error| DaemonError::Refused(startup::where_from(&self.config, &error)))?;
        list.check_kernel_limits().map_err(DaemonError::Refused)?;
        Ok(list)
    }

    /// As [`Daemon::apply_to_kernel`], with the allowlist compiled already.
    fn apply_compiled(&mut self, list: CompiledList) -> Result<(), DaemonError> {
        let started = Instant::now();
        let applied = self.filter.apply(&list)?;
        self.applied_whole(list, applied, started.elapsed())
    }

    /// What follows the kernel taking a whole list (which took `kernel_took`): its
    /// features and mode, and the bookkeeping of what it now holds.
    fn applied_whole(
        &mut self,
        list: CompiledList,
        applied: ApplyReport,
        kernel_took: Duration,
    ) -> Result<(), DaemonError> {
        let started = Instant::now();
        self.events.applied_whole(applied.took);
        debug!(
            ipv4 = list.v4.len(),
            ipv6 = list.v6.len(),
            added = applied.added,
            removed = applied.removed,
            took = ?applied.took,
            "the kernel judges by the new list"
        );
        self.compiled = list;
        self.filter.set_features(self.features())?;
        self.filter.set_mode(self.mode, self.pending_confirm)?;
        self.kernel_took = self
            .kernel_took
            .saturating_add(kernel_took)
            .saturating_add(started.elapsed());
        Ok(())
    }

    fn features(&self) -> u32 {
        let mut features = 0;
        if self.config.return_traffic {
            features |= allowlist_common::FEATURE_RETURN_TRAFFIC;
        }
        if self.config.dhcp_client {
            features |= allowlist_common::FEATURE_DHCP_CLIENT;
        }
        if self.config.encapsulated_ip == EncapsulatedIp::Pass {
            features |= allowlist_common::FEATURE_PASS_ENCAPSULATED;
        }
        if self.config.dropped_sources > 0 {
            features |= allowlist_common::FEATURE_RECORD_DROPS;
        }
        features
    }

    /// Applies a new allowlist and mode to the kernel, then makes it durable. If either
    /// step fails, the kernel and memory go back to the previous state.
    fn commit(
        &mut self,
        allowlist: Allowlist,
        mode: Mode,
        pending: Option<PendingConfirm>,
    ) -> Result<(), DaemonError> {
        self.commit_with(allowlist, mode, pending, None)
    }

    /// As [`Daemon::commit`], with `allowlist` compiled already when `compiled` is given.
    fn commit_with(
        &mut self,
        allowlist: Allowlist,
        mode: Mode,
        pending: Option<PendingConfirm>,
        compiled: Option<CompiledList>,
    ) -> Result<(), DaemonError> {
        let previous = (
            std::mem::replace(&mut self.allowlist, allowlist),
            self.mode,
            self.pending_confirm,
        );
        self.mode = mode;
        self.pending_confirm = pending;
        if let Err(error) = self.apply_and_persist(compiled) {
            self.events.rollbacks = self.events.rollbacks.saturating_add(1);
            error!(%error, by = "rollback", "the change failed; restoring the previous list and mode");
            (self.allowlist, self.mode, self.pending_confirm) = previous;
            if let Err(restore) = self.apply_to_kernel() {
                error!(error = %restore, "restoring the previous list failed too; the kernel keeps whichever list it last applied whole");
            }
            return_freed_memory();
            return Err(error);
        }
        // The list before the change goes first: it is most of what there is to return.
        drop(previous);
        return_freed_memory();
        self.events.changed();
        Ok(())
    }

    /// Applies a change to one network, already made to `self.allowlist`: recompiles
    /// that network's region, writes it into the kernel in place and journals it. If a
    /// step fails, the network's entry goes back to `previous`, in memory and in the
    /// kernel.
    fn commit_change(
        &mut self,
        (network, set): (ipnet::IpNet, &crate::allowlist::SetName),
        previous: Option<Entry>,
        change: Change,
    ) -> Result<(), DaemonError> {
        let around = self.allowlist.entries_around(network);
        if let Err(error) = self.compiled.recompile_region(network, around) {
            self.allowlist.restore_managed(network, set, previous);
            return Err(DaemonError::Refused(error.to_string()));
        }
        let result = self
            .filter
            .apply_region(&self.compiled, network)
            .map_err(DaemonError::from)
            .and_then(|applied| {
                debug!(%network, added = applied.added, removed = applied.removed, took = ?applied.took, "the kernel judges by the changed entry");
                self.kernel_took += applied.took;
                self.events.applied_region(applied.took);
                self.journal(&change)
            });
        if let Err(error) = result {
            self.events.rollbacks = self.events.rollbacks.saturating_add(1);
            error!(%error, %network, by = "rollback", "the change failed; restoring the previous entry");
            self.allowlist.restore_managed(network, set, previous);
            let around = self.allowlist.entries_around(network);
            let restored = self
                .compiled
                .recompile_region(network, around)
                .map_err(|error| DaemonError::Refused(error.to_string()))
                .and_then(|()| Ok(self.filter.apply_region(&self.compiled, network)?));
            if let Err(restore) = restored {
                error!(error = %restore, "restoring the previous entry failed too; the kernel keeps whichever list it last applied");
            }
            return Err(error);
        }
        Ok(())
    }

    pub fn socket(&self) -> &Path {
        &self.config.socket
    }

    /// The socket's access policy, shared with every connection.
    pub fn access(&self) -> SharedAccess {
        self.access.clone()
    }

    /// Applies the config's socket access (owner, group, mode, and what each peer may
    /// do) if it differs from the one in force, and logs the change.
    fn apply_access(&mut self) -> Result<(), DaemonError> {
        let wanted = Access::from_config(
            self.config.socket_group.as_deref(),
            self.config.socket_readable_by_all,
        );
        let before = self.access.get();
        if wanted == before {
            return Ok(());
        }
        wanted
            .apply_to_socket(&self.config.socket)
            .map_err(|error| DaemonError::Socket {
                path: self.config.socket.display().to_string(),
                message: format!("setting owner and permissions: {error}"),
            })?;
        self.access.set(wanted);
        warn!(before = %before, after = %wanted, "control socket access changed");
        Ok(())
    }

    /// Expires entries and reverts an unconfirmed activation whose time is up. Returns
    /// false if that could not be applied (the timer retries).
    pub(crate) fn tick(&mut self) -> bool {
        let now = now();
        self.kernel_took = Duration::ZERO;
        let mut allowlist = self.allowlist.clone();
        let expired = allowlist.expire(now);
        let (mut mode, pending) = match self.pending_confirm {
            Some(pending) if pending.deadline <= now => (pending.revert_to, None),
            other => (self.mode, other),
        };
        let reverting = pending != self.pending_confirm;
        if allowlist.locks_everyone_out(mode) {
            // Expiry is on a timer, not an operator's command, so it must not lock
            // everyone out: monitor keeps counting what enforce would drop.
            error!(by = %Actor::Expiry, "the last entry of the allowlist expired while enforcing; switching to monitor so the host stays reachable. Add entries and `allowlistctl activate` to enforce again");
            mode = Mode::Monitor;
        }
        if expired.is_empty() && !reverting {
            return true;
        }
        let previous = self.mode;
        if let Err(error) = self.commit(allowlist, mode, pending) {
            error!(%error, "applying expiry failed; will retry");
            return false;
        }
        self.events.expired = self.events.expired.saturating_add(expired.len() as u64);
        for entry in &expired {
            info!(by = %Actor::Expiry, kernel_took = ?self.kernel_took, description = ?entry.description, "expired: removed {}", entry.network);
        }
        if reverting {
            warn!(by = %Actor::ConfirmDeadline, kernel_took = ?self.kernel_took, "not confirmed in time: mode {mode} (was {previous})");
        }
        true
    }

    /// Drops the remotes of ended flows from the filter in front of the flow table, so
    /// their packets stop paying a flow lookup; with return traffic off there are none.
    pub(crate) fn rebuild_remote_filter(&mut self) {
        if !self.config.return_traffic {
            return;
        }
        match self.filter.rebuild_remote_filter() {
            Ok(rebuilt) => debug!(
                live_flows = rebuilt.live_flows,
                idle_flows = rebuilt.idle_flows,
                "rebuilt the remote filter"
            ),
            // Harmless: the filter in use keeps every bit it had.
            Err(error) => warn!(%error, "rebuilding the remote filter failed; will retry"),
        }
    }

    /// What a Prometheus scrape shows, read now.
    pub fn metrics_snapshot(&self) -> Result<metrics::Snapshot, DaemonError> {
        let mut entries = std::collections::BTreeMap::new();
        for entry in self.allowlist.entries() {
            let family = if entry.network.addr().is_ipv4() {
                "ipv4"
            } else {
                "ipv6"
            };
            *entries
                .entry((family, entry.origin.to_string()))
                .or_insert(0usize) += 1;
        }
        Ok(metrics::Snapshot {
            counters: self.filter.counters()?,
            interface_counters: self.filter.interface_counters()?,
            mode: self.filter.mode(),
            entries: entries.into_iter().collect(),
            prefixes: self.filter.entry_counts(),
            interfaces: self
                .filter
                .attached()
                .iter()
                .map(|(name, mode)| {
                    let mode = match mode {
                        filter::AttachedMode::Native => "native",
                        filter::AttachedMode::Generic => "generic",
                    };
                    (name.clone(), mode.to_string())
                })
                .collect(),
            events: self.events.clone(),
        })
    }

    /// Where Prometheus metrics are served, if anywhere.
    pub fn metrics_listen(&self) -> Option<std::net::SocketAddr> {
        self.config.metrics_listen
    }

    /// When `tick` next has something to do.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        [
            self.allowlist.next_expiry(),
            self.pending_confirm.map(|pending| pending.deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// The running kernel's release (`uname -r`), for the log and `status`.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|name| name.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Hands memory freed by a whole-list change back to the system: the old list, its
/// compiled form and the request that carried the new one can be hundreds of MiB at a
/// million entries, and the allocator would otherwise keep them as the daemon's RSS.
pub(crate) fn return_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator's own heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Keeps the allocator to few arenas: each tokio worker would otherwise get one, and
/// memory freed in one arena is not reused by another, so RSS grows with every large
/// request a different thread happened to serve.
pub fn limit_allocator_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
