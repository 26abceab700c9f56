//! `allowlistd`: brings the kernel in line with the allowlist, then serves the control
//! socket.
//!
//! Start-up order matters for an operator's safety: config and state are validated
//! completely before the kernel is touched; the list and mode are in the maps before the
//! program is attached anywhere; the socket only answers once every interface is
//! protected. Every change is applied to the kernel, then made durable, then reported.

use std::{
    io,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
    sync::Notify,
};
use tracing::{error, info, warn};

use crate::{
    access::{Access, Peer},
    allowlist::{now, Allowlist, Entry, ListError},
    compile::{CompiledList, Reach},
    config::{Config, ConfigError, EncapsulatedIp, Mode},
    control::{
        self, CheckResult, CounterValue, EntryCounts, InterfaceStatus, Reply, Request, Safety,
        Stats, Status,
    },
    filter::{Filter, FilterError, Pins},
    ports::PortSpec,
    safety::{cut_off, people_at_risk, Verdicts},
    state::{self, Change, PendingConfirm, State, StateError},
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

/// The daemon's state: the config, the allowlist and mode it enforces, and the kernel.
pub struct Daemon {
    config: Config,
    allowlist: Allowlist,
    mode: Mode,
    /// The config file's `mode` when `mode` was last decided (see State::config_mode).
    config_mode: Mode,
    pending_confirm: Option<PendingConfirm>,
    filter: Filter,
    /// `allowlist` compiled, as the kernel judges by it; kept so that requests and
    /// lockout checks read it instead of compiling the whole list again.
    compiled: CompiledList,
    /// Changes in the journal since the state file was last written whole.
    journaled: usize,
}

/// Journaled changes after which the state file is written whole again (so a restart
/// never replays more than this).
const JOURNAL_COMPACT_AT: usize = 4_096;

impl Daemon {
    /// Restores the saved state on top of `config` and applies it to the kernel: loads
    /// (or takes over) the filter, fills the list, sets the mode, attaches everywhere.
    pub fn start(config: Config, ebpf_debug_log: bool) -> Result<Daemon, DaemonError> {
        for warning in &config.warnings {
            warn!("{warning}");
        }
        let saved = State::load(&config.state_dir)?;
        let (mode, config_mode, pending_confirm, managed, first_seen) = match saved {
            Some(state) => {
                info!(entries = state.entries.len(), mode = %state.mode, "restored the saved allowlist");
                let mode = if state.config_mode == config.mode {
                    state.mode
                } else {
                    config.mode
                };
                (
                    mode,
                    config.mode,
                    state.pending_confirm,
                    state.entries,
                    state.config_first_seen,
                )
            }
            None => (
                config.mode,
                config.mode,
                None,
                Vec::new(),
                Default::default(),
            ),
        };
        let allowlist = Allowlist::new(&config, managed, &first_seen);
        if mode == Mode::Enforce && !allowlist.has_operator_entries() {
            return Err(DaemonError::Refused(format!(
                "{}: mode = \"enforce\" with an empty allowlist would drop all IP traffic to this host; add [[allow]] entries or use mode = \"monitor\" (the saved state in {} has no entries either)",
                config.path.display(),
                crate::state::path(&config.state_dir).display()
            )));
        }

        let pins = Pins::new(&config.pin_path);
        let taking_over = Filter::is_pinned(&pins)?;
        let filter = Filter::open(pins, ebpf_debug_log)?;
        if taking_over {
            let (ipv4, ipv6) = filter.entry_counts();
            info!(mode = %filter.mode(), ipv4, ipv6, "found a pinned filter still enforcing; taking it over");
        }
        let mut daemon = Daemon {
            config,
            allowlist,
            mode,
            config_mode,
            pending_confirm,
            filter,
            compiled: CompiledList::default(),
            journaled: 0,
        };
        daemon.apply_to_kernel()?;
        daemon.attach_interfaces()?;
        daemon.filter.pin_program()?;
        daemon.persist()?;
        Ok(daemon)
    }

    /// Re-reads the config file; on any error the running state is kept.
    pub fn reload(&mut self) -> Result<String, DaemonError> {
        let config = Config::load(&self.config.path)?;
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
        for warning in &config.warnings {
            warn!("{warning}");
        }
        let config = Config {
            socket: self.config.socket.clone(),
            pin_path: self.config.pin_path.clone(),
            state_dir: self.config.state_dir.clone(),
            ..config
        };
        let mut allowlist = self.allowlist.clone();
        allowlist.set_config(&config);
        let mode = if config.mode != self.config_mode {
            config.mode
        } else {
            self.mode
        };
        if mode == Mode::Enforce && !allowlist.has_operator_entries() {
            return Err(DaemonError::Refused(format!(
                "{}: enforcing an empty allowlist would drop all IP traffic to this host; add entries or set mode = \"monitor\"",
                config.path.display()
            )));
        }
        let previous = std::mem::replace(&mut self.config, config);
        let result = self
            .commit(allowlist, mode, self.pending_confirm)
            .and_then(|()| self.attach_interfaces());
        if let Err(error) = result {
            self.config = previous;
            return Err(error);
        }
        self.config_mode = self.config.mode;
        self.persist()?;
        let (ipv4, ipv6) = self.filter.entry_counts();
        Ok(format!(
            "reloaded {}: mode {}, {ipv4} IPv4 and {ipv6} IPv6 prefixes",
            self.config.path.display(),
            self.mode,
        ))
    }

    fn attach_interfaces(&mut self) -> Result<(), DaemonError> {
        for interface in &self.config.interfaces {
            self.filter
                .attach(interface, self.config.xdp_mode, &self.config.state_dir)?;
        }
        self.filter
            .detach_others(&self.config.interfaces, &self.config.state_dir)?;
        let seeded = self.filter.seed_flows(&crate::flows::outbound())?;
        info!(mode = %self.mode, interfaces = ?self.config.interfaces, return_traffic = self.config.return_traffic, encapsulated_ip = ?self.config.encapsulated_ip, seeded_flows = seeded, "enforcing");
        Ok(())
    }

    /// Makes the kernel judge by the current allowlist and mode: list first, so a
    /// stricter mode never meets a stale list.
    fn apply_to_kernel(&mut self) -> Result<(), DaemonError> {
        let list = self
            .allowlist
            .compile()
            .map_err(|error| DaemonError::Refused(error.to_string()))?;
        let applied = self.filter.apply(&list)?;
        info!(
            ipv4 = list.v4.len(),
            ipv6 = list.v6.len(),
            added = applied.added,
            removed = applied.removed,
            took = ?applied.took,
            "the kernel judges by the new list"
        );
        self.compiled = list;
        self.filter.set_features(self.features())?;
        self.filter.set_mode(self.mode)?;
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
        let previous = (
            std::mem::replace(&mut self.allowlist, allowlist),
            self.mode,
            self.pending_confirm,
        );
        self.mode = mode;
        self.pending_confirm = pending;
        let result = self.apply_to_kernel().and_then(|()| self.persist());
        return_freed_memory();
        if let Err(error) = result {
            error!(%error, "the change failed; restoring the previous list and mode");
            (self.allowlist, self.mode, self.pending_confirm) = previous;
            if let Err(restore) = self.apply_to_kernel() {
                error!(error = %restore, "restoring the previous list failed too; the kernel keeps whichever list it last applied whole");
            }
            return Err(error);
        }
        Ok(())
    }

    fn persist(&mut self) -> Result<(), DaemonError> {
        let mut state = State::new(
            self.mode,
            self.config_mode,
            self.allowlist.managed().cloned().collect(),
        );
        state.pending_confirm = self.pending_confirm;
        state.config_first_seen = self.allowlist.config_first_seen();
        state.store(&self.config.state_dir)?;
        self.journaled = 0;
        Ok(())
    }

    /// Applies a change to one network, already made to `self.allowlist`: recompiles
    /// that network's region, writes it into the kernel in place and journals it. If a
    /// step fails, the network's entry goes back to `previous`, in memory and in the
    /// kernel.
    fn commit_change(
        &mut self,
        network: ipnet::IpNet,
        previous: Option<Entry>,
        change: Change,
    ) -> Result<(), DaemonError> {
        let around = self.allowlist.entries_around(network);
        if let Err(error) = self.compiled.recompile_region(network, around) {
            self.allowlist.restore_managed(network, previous);
            return Err(DaemonError::Refused(error.to_string()));
        }
        let result = self
            .filter
            .apply_region(&self.compiled, network)
            .map_err(DaemonError::from)
            .and_then(|applied| {
                info!(%network, added = applied.added, removed = applied.removed, took = ?applied.took, "the kernel judges by the changed entry");
                self.journal(&change)
            });
        if let Err(error) = result {
            error!(%error, %network, "the change failed; restoring the previous entry");
            self.allowlist.restore_managed(network, previous);
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

    fn journal(&mut self, change: &Change) -> Result<(), DaemonError> {
        if self.journaled >= JOURNAL_COMPACT_AT {
            return self.persist();
        }
        state::journal(&self.config.state_dir, change)?;
        self.journaled += 1;
        Ok(())
    }

    /// Refuses a change that would drop someone whose traffic passes now.
    fn check_lockout(
        &self,
        next: &Allowlist,
        next_mode: Mode,
        safety: &Safety,
    ) -> Result<(), Refusal> {
        self.check_lockout_with(
            || {
                next.compile()
                    .map_err(|error| Refusal::Error(error.to_string()))
            },
            next_mode,
            safety,
        )
    }

    /// As `check_lockout`, with the next list built only if someone could be cut off.
    fn check_lockout_with(
        &self,
        next_list: impl FnOnce() -> Result<CompiledList, Refusal>,
        next_mode: Mode,
        safety: &Safety,
    ) -> Result<(), Refusal> {
        if safety.force {
            return Ok(());
        }
        let loopback_protected = self.config.interfaces.iter().any(|name| name == "lo");
        let people = people_at_risk(safety.caller, loopback_protected);
        if people.is_empty() {
            return Ok(());
        }
        let now_list = &self.compiled;
        let next_list = next_list()?;
        let cut = cut_off(
            &Verdicts {
                list: now_list,
                mode: self.mode,
            },
            &Verdicts {
                list: &next_list,
                mode: next_mode,
            },
            &people,
        );
        if cut.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = cut.iter().map(ToString::to_string).collect();
        Err(Refusal::Unsafe(
            format!(
                "refused for safety: this would cut off {}. List them first, or repeat with --force if that is intended",
                names.join(", ")
            ),
            cut,
        ))
    }

    fn refuse_empty_enforce(
        &self,
        next: &Allowlist,
        next_mode: Mode,
        what: &str,
    ) -> Result<(), Refusal> {
        if next_mode == Mode::Enforce && !next.has_operator_entries() {
            return Err(Refusal::Error(format!(
                "{what} refused: the allowlist would be empty while enforcing, which drops all IP traffic to this host. Add an entry first, or deactivate"
            )));
        }
        Ok(())
    }

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
                })
                .collect(),
            entries: EntryCounts { ipv4, ipv6 },
            pin_path: self.config.pin_path.display().to_string(),
            config: self.config.path.display().to_string(),
        }
    }

    pub fn stats(&self) -> Result<Stats, DaemonError> {
        let counters = self.filter.counters()?;
        Ok(Stats {
            counters: counters
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
                .collect(),
        })
    }

    fn check(
        &self,
        address: std::net::IpAddr,
        port: Option<PortSpec>,
    ) -> Result<CheckResult, Refusal> {
        let list = &self.compiled;
        let access = list.access_of(address);
        let public = port.is_some_and(|port| {
            list.public_ports
                .iter()
                .any(|range| range.contains(port.protocol, port.first))
        });
        // Without a port, a port-scoped entry decides nothing on its own.
        let listed_for_port = match (access, port) {
            (Some(access), Some(port)) => access.allows(port.protocol, port.first),
            (Some(access), None) => *access == Reach::All,
            (None, _) => false,
        };
        let (verdict, reason) = match (self.mode, listed_for_port, public, access.is_some()) {
            (Mode::Off, ..) => ("pass", "passed_off"),
            (_, true, _, _) => ("pass", "passed_listed"),
            (_, false, true, _) => ("pass", "passed_public_port"),
            (Mode::Monitor, false, false, true) => ("pass", "monitor_port_not_allowed"),
            (Mode::Monitor, false, false, false) => ("pass", "monitor_would_drop"),
            (Mode::Enforce, false, false, true) => ("drop", "dropped_port_not_allowed"),
            (Mode::Enforce, false, false, false) => ("drop", "dropped_not_listed"),
        };
        Ok(CheckResult {
            address,
            port,
            mode: self.mode,
            verdict: verdict.into(),
            reason: reason.into(),
            allowed_ports: match access {
                Some(Reach::Ports(ranges)) => Some(ranges.clone()),
                _ => None,
            },
            entry: self.allowlist.deciding_entry(address).cloned(),
        })
    }

    /// Expires entries and reverts an unconfirmed activation whose time is up.
    fn tick(&mut self) {
        let now = now();
        let mut allowlist = self.allowlist.clone();
        let expired = allowlist.expire(now);
        let (mut mode, pending) = match self.pending_confirm {
            Some(pending) if pending.deadline <= now => {
                warn!(reverted_to = %pending.revert_to, "activation was not confirmed in time; reverting");
                (pending.revert_to, None)
            }
            other => (self.mode, other),
        };
        if mode == Mode::Enforce && !allowlist.has_operator_entries() {
            // Expiry is on a timer, not an operator's command, so it must not lock
            // everyone out: monitor keeps counting what enforce would drop.
            error!("the last entry of the allowlist expired while enforcing; switching to monitor so the host stays reachable. Add entries and `allowlistctl activate` to enforce again");
            mode = Mode::Monitor;
        }
        if expired.is_empty() && pending == self.pending_confirm {
            return;
        }
        for entry in &expired {
            info!(network = %entry.network, description = %entry.description, "entry expired");
        }
        if let Err(error) = self.commit(allowlist, mode, pending) {
            error!(%error, "applying expiry failed; will retry");
        }
    }

    /// When `tick` next has something to do.
    fn next_deadline(&self) -> Option<u64> {
        [
            self.allowlist.next_expiry(),
            self.pending_confirm.map(|pending| pending.deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn handle(&mut self, request: Request) -> Reply {
        let result = match request {
            Request::Status => Ok(Reply::with_status(self.status())),
            Request::Stats => self.stats().map(Reply::with_stats).map_err(Refusal::from),
            Request::List | Request::Export => Ok(Reply::with_entries(
                self.allowlist.entries().into_iter().cloned().collect(),
            )),
            Request::Check { address, port } => self.check(address, port).map(Reply::with_check),
            Request::Reload => self.reload().map(Reply::done).map_err(Refusal::from),
            Request::Add {
                network,
                description,
                expires_in_secs,
                ports,
            } => self.add(network, description, expires_in_secs, ports),
            Request::Remove { network, safety } => self.remove(network, &safety),
            Request::Import {
                rows,
                replace,
                dry_run,
                safety,
            } => self.import(&rows, replace, dry_run, &safety),
            Request::SetMode {
                mode,
                confirm_secs,
                safety,
            } => self.set_mode(mode, confirm_secs, &safety),
            Request::Confirm => self.confirm(),
        };
        match result {
            Ok(reply) => {
                if let Some(message) = &reply.message {
                    info!("{message}");
                }
                reply
            }
            Err(Refusal::Error(message)) => {
                warn!("refused: {message}");
                Reply::failed(message)
            }
            Err(Refusal::Unsafe(message, at_risk)) => {
                warn!("{message}");
                Reply::unsafe_change(message, at_risk)
            }
        }
    }

    fn add(
        &mut self,
        network: ipnet::IpNet,
        description: Option<String>,
        expires_in_secs: Option<u64>,
        ports: Vec<PortSpec>,
    ) -> Result<Reply, Refusal> {
        let network = network.trunc();
        let expires_at = expires_in_secs.map(|secs| now() + secs);
        let previous = self.allowlist.managed_entry(network).cloned();
        let new = self
            .allowlist
            .add(network, description, expires_at, ports)?;
        let added = self.allowlist.managed_entry(network).cloned();
        let added = added.ok_or_else(|| Refusal::Error(format!("{network} vanished")))?;
        self.commit_change(network, previous, Change::Add(added))?;
        let network = network.trunc();
        let expiry = expires_at
            .map(|at| format!(" until {}", format_time(at)))
            .unwrap_or_default();
        Ok(Reply::done(if new {
            format!("added {network}{expiry}")
        } else {
            format!("updated {network}{expiry}")
        }))
    }

    fn remove(&mut self, network: ipnet::IpNet, safety: &Safety) -> Result<Reply, Refusal> {
        let network = network.trunc();
        let removed = self.allowlist.remove(network)?;
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
            self.allowlist.restore_managed(network, Some(removed));
            return Err(refusal);
        }
        self.commit_change(network, Some(removed), Change::Remove(network))?;
        Ok(Reply::done(format!("removed {network}")))
    }

    fn import(
        &mut self,
        rows: &[crate::allowlist::ImportRow],
        replace: bool,
        dry_run: bool,
        safety: &Safety,
    ) -> Result<Reply, Refusal> {
        let mut next = self.allowlist.clone();
        let plan = next.import(rows, replace);
        let summary = format!(
            "{} {} rows: {} added, {} updated, {} removed, {} left to the config file",
            if dry_run { "would import" } else { "imported" },
            rows.len(),
            plan.added.len(),
            plan.updated.len(),
            plan.removed.len(),
            plan.unchanged_config.len()
        );
        if dry_run {
            return Ok(Reply::with_import(summary, plan));
        }
        if replace {
            self.check_lockout(&next, self.mode, safety)?;
            self.refuse_empty_enforce(&next, self.mode, "import --replace")?;
        }
        self.commit(next, self.mode, self.pending_confirm)?;
        Ok(Reply::with_import(summary, plan))
    }

    fn set_mode(
        &mut self,
        mode: Mode,
        confirm_secs: Option<u64>,
        safety: &Safety,
    ) -> Result<Reply, Refusal> {
        if mode == Mode::Enforce && !self.allowlist.has_operator_entries() {
            return Err(Refusal::Error(
                "activation refused: the allowlist is empty, so enforcing would drop all IP traffic to this host. Add at least one entry (allowlistctl add ADDRESS) first".into(),
            ));
        }
        if mode == Mode::Enforce && self.mode != Mode::Enforce {
            self.check_lockout(&self.allowlist, mode, safety)?;
        }
        let pending = confirm_secs.map(|secs| PendingConfirm {
            revert_to: self
                .pending_confirm
                .map_or(self.mode, |pending| pending.revert_to),
            deadline: now() + secs,
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
        if self.pending_confirm.is_none() {
            return Err(Refusal::Error(
                "nothing to confirm: no `activate --confirm` is pending".into(),
            ));
        }
        self.commit(self.allowlist.clone(), self.mode, None)?;
        Ok(Reply::done(format!("confirmed: mode {} stays", self.mode)))
    }

    /// Serves the control socket until SIGTERM or SIGINT. Leaving does not detach the
    /// filter: the pinned program keeps enforcing the last applied list.
    pub async fn serve(self) -> Result<(), DaemonError> {
        let socket = self.config.socket.clone();
        let access = Access::from_config(
            self.config.socket_group.as_deref(),
            self.config.socket_readable_by_all,
        );
        let listener = bind_control_socket(&socket, &access)?;
        info!(socket = %socket.display(), "ready");
        let daemon = Arc::new(Mutex::new(self));
        let changed = Arc::new(Notify::new());
        tokio::spawn(run_timers(Arc::clone(&daemon), Arc::clone(&changed)));
        let socket_error = |error: io::Error| DaemonError::Socket {
            path: socket.display().to_string(),
            message: error.to_string(),
        };
        let mut hangup = signal(SignalKind::hangup()).map_err(socket_error)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(socket_error)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(socket_error)?;
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(serve_client(stream, Arc::clone(&daemon), access, Arc::clone(&changed)));
                    }
                    Err(error) => warn!(%error, "accepting a control connection failed"),
                },
                _ = hangup.recv() => {
                    info!("SIGHUP: reloading the config");
                    let daemon = Arc::clone(&daemon);
                    let _ = tokio::task::spawn_blocking(move || lock(&daemon).handle(Request::Reload)).await;
                    changed.notify_one();
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
        }
        let _ = std::fs::remove_file(&socket);
        info!("stopping; the filter stays attached and keeps enforcing the last applied list");
        Ok(())
    }
}

/// Hands memory freed by a whole-list change back to the system: the old list, its
/// compiled form and the request that carried the new one can be hundreds of MiB at a
/// million entries, and the allocator would otherwise keep them as the daemon's RSS.
fn return_freed_memory() {
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

fn format_time(unix_secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_secs)).to_string()
}

fn lock(daemon: &Mutex<Daemon>) -> std::sync::MutexGuard<'_, Daemon> {
    // A panic while holding the lock cannot leave the kernel half-changed (each change
    // is atomic there), so the state is still usable.
    daemon
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Wakes at the next expiry or confirm deadline, or when a change may have moved it.
async fn run_timers(daemon: Arc<Mutex<Daemon>>, changed: Arc<Notify>) {
    loop {
        let deadline = lock(&daemon).next_deadline();
        let wait = match deadline {
            Some(at) => {
                let at = UNIX_EPOCH + Duration::from_secs(at);
                at.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
            }
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                let daemon = Arc::clone(&daemon);
                let _ = tokio::task::spawn_blocking(move || lock(&daemon).tick()).await;
            }
            _ = changed.notified() => {}
        }
    }
}

const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Answers one client's requests, one JSON line each. A client that sends garbage gets
/// an error reply; one that sends too much or nothing is disconnected. Neither can stall
/// other clients: only the handling of a parsed request takes the lock.
async fn serve_client(
    stream: UnixStream,
    daemon: Arc<Mutex<Daemon>>,
    access: Access,
    changed: Arc<Notify>,
) {
    let peer = match stream.peer_cred() {
        Ok(cred) => Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        },
        Err(error) => {
            warn!(%error, "cannot read the client's credentials; closing");
            return;
        }
    };
    let may_change = access.may_change(&peer);
    let may_read = access.may_read(&peer);
    let limit = if may_change {
        control::MAX_REQUEST_BYTES
    } else {
        control::MAX_READ_ONLY_REQUEST_BYTES
    };
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    loop {
        let mut line = Vec::new();
        let read = tokio::time::timeout(
            CLIENT_IDLE_TIMEOUT,
            (&mut reader)
                .take(limit as u64 + 1)
                .read_until(b'\n', &mut line),
        )
        .await;
        let reply = match read {
            Err(_) | Ok(Err(_)) | Ok(Ok(0)) => return,
            Ok(Ok(_)) if line.len() > limit => {
                let reply = Reply::failed(format!("request longer than {limit} bytes refused"));
                let _ = write_reply(&mut writer, &reply).await;
                return;
            }
            Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
                Err(error) => Reply::failed(format!("malformed request: {error}")),
                Ok(request) if !may_read || (!request.is_read_only() && !may_change) => {
                    warn!(
                        uid = peer.uid,
                        "refused a request from a client without permission"
                    );
                    Reply::failed(format!(
                        "permission denied: uid {} may not {}; changes need root{}",
                        peer.uid,
                        if request.is_read_only() {
                            "read the allowlist"
                        } else {
                            "change the allowlist"
                        },
                        access
                            .group
                            .map(|_| " or the socket_group")
                            .unwrap_or_default()
                    ))
                }
                Ok(request) => {
                    let daemon = Arc::clone(&daemon);
                    let reply = tokio::task::spawn_blocking(move || lock(&daemon).handle(request))
                        .await
                        .unwrap_or_else(|error| Reply::failed(format!("internal error: {error}")));
                    changed.notify_one();
                    reply
                }
            },
        };
        if write_reply(&mut writer, &reply).await.is_err() {
            return;
        }
    }
}

async fn write_reply(
    writer: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &Reply,
) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(reply).map_err(io::Error::other)?;
    bytes.push(b'\n');
    writer.write_all(&bytes).await
}

/// Binds the socket, replacing a stale file from a dead daemon but never a live one.
fn bind_control_socket(path: &Path, access: &Access) -> Result<UnixListener, DaemonError> {
    let fail = |message: String| DaemonError::Socket {
        path: path.display().to_string(),
        message,
    };
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(fail(
            "another allowlistd is already serving on this socket; stop it first".into(),
        ));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|error| fail(format!("creating {}: {error}", parent.display())))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(fail(format!("removing the stale socket: {error}"))),
    }
    let listener = UnixListener::bind(path).map_err(|error| fail(error.to_string()))?;
    access
        .apply_to_socket(path)
        .map_err(|error| fail(format!("setting owner and permissions: {error}")))?;
    Ok(listener)
}
