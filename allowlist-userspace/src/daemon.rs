//! `allowlistd`: brings the kernel in line with the allowlist, then serves the control
//! socket.
//!
//! Start-up order matters for an operator's safety: config and state are validated
//! completely before the kernel is touched; the list and mode are in the maps before the
//! program is attached anywhere; the socket only answers once every interface is
//! protected. Every change is applied to the kernel, then made durable, then reported.

use std::path::Path;

use tracing::{error, info, warn};

use crate::{
    access::{Access, SharedAccess},
    allowlist::{
        check_description, check_import_rows, Allowlist, Entry, EntryUpdate, ImportRow, ListError,
    },
    attachments,
    clock::{self, format_time, now},
    compile::{CompiledList, Reach},
    config::{self, Config, ConfigError, EncapsulatedIp, Mode},
    control::{
        CheckResult, CounterValue, EntryCounts, InterfaceStatus, Reply, Request, Safety, Stats,
        Status,
    },
    durable,
    filter::{self, Filter, FilterError, Pins},
    instance::{self, InstanceLock, LockError},
    ports::{self, PortSpec},
    safety::{cut_off, people_at_risk, Verdicts},
    startup::{self, PlanError, Saved, StartPlan},
    state::{self, Change, PendingConfirm, State, StateError},
    verdict::{self, Destination},
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
    /// Generation of the state file on disk, which journal lines name.
    generation: u64,
    /// Who may use the control socket; reload changes it for every connection.
    access: SharedAccess,
    /// Held for the daemon's life: no second daemon on this pin path or state dir.
    _instance: InstanceLock,
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
        let filter = Filter::open(pins, ebpf_debug_log)?;
        if taking_over {
            let (ipv4, ipv6) = filter.entry_counts();
            info!(mode = %filter.mode(), ipv4, ipv6, "found a pinned filter still enforcing; taking it over");
        }
        let StartPlan {
            config,
            allowlist,
            mode,
            config_mode,
            pending_confirm,
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
            filter,
            compiled: CompiledList::default(),
            journaled: 0,
            generation: saved.as_ref().map_or(0, |saved| saved.generation),
            access,
            _instance: instance,
        };
        daemon.apply_compiled(compiled)?;
        daemon.attach_interfaces()?;
        daemon.filter.pin_program()?;
        daemon.persist_at_start(saved)?;
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
        // Access first, and on its own: taking it away must not wait for (or depend on)
        // the list change, which can fail on a full disk.
        if let Err(error) = self.apply_access() {
            self.config = previous;
            return Err(error);
        }
        let previous_config_mode = std::mem::replace(&mut self.config_mode, self.config.mode);
        let result = self
            .commit(allowlist, mode, self.pending_confirm)
            .and_then(|()| self.attach_interfaces());
        if let Err(error) = result {
            self.config = previous;
            self.config_mode = previous_config_mode;
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
        let mut attach = || -> Result<(), FilterError> {
            for interface in &self.config.interfaces {
                let recorded = recorded.get(interface).copied();
                self.filter
                    .attach(interface, self.config.xdp_mode, recorded)?;
            }
            self.filter.detach_others(&self.config.interfaces)
        };
        let attached = attach();
        // Also after a failure: what did get attached is recorded.
        attachments::store(&self.config.state_dir, self.filter.attached());
        attached?;
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
            .map_err(|error| DaemonError::Refused(startup::where_from(&self.config, &error)))?;
        list.check_kernel_limits().map_err(DaemonError::Refused)?;
        self.apply_compiled(list)
    }

    /// As [`Daemon::apply_to_kernel`], with the allowlist compiled already.
    fn apply_compiled(&mut self, list: CompiledList) -> Result<(), DaemonError> {
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
        let applied = match compiled {
            Some(list) => self.apply_compiled(list),
            None => self.apply_to_kernel(),
        };
        let result = applied.and_then(|()| self.persist());
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

    fn state(&self) -> State {
        let mut state = State::new(
            self.mode,
            self.config_mode,
            self.allowlist.managed().cloned().collect(),
        );
        state.pending_confirm = self.pending_confirm;
        state.config_first_seen = self.allowlist.config_first_seen();
        state
    }

    fn persist(&mut self) -> Result<(), DaemonError> {
        let mut state = self.state();
        state.generation = self.generation.wrapping_add(1);
        state.store(&self.config.state_dir)?;
        self.generation = state.generation;
        self.journaled = 0;
        Ok(())
    }

    /// Writes the state whole at start, folding in the journal. The list on disk (state
    /// file plus journal) is already the list the daemon enforces, so when nothing
    /// changed nothing is written, and when writing fails (a full disk: the rewrite
    /// needs room for a second copy) the daemon still comes up, keeps the journal and
    /// says so. Only a first start, with no list on disk yet, must write.
    fn persist_at_start(&mut self, saved: Option<Saved>) -> Result<(), DaemonError> {
        let Some(saved) = saved else {
            return self.persist();
        };
        self.journaled = saved.replay.changes;
        let unchanged = saved.replay.changes == 0
            && saved.replay.stale == 0
            && saved.normalized == 0
            && saved.mode == self.mode
            && saved.config_mode == self.config_mode
            && saved.pending_confirm == self.pending_confirm
            && saved.config_first_seen == self.allowlist.config_first_seen();
        if unchanged {
            return Ok(());
        }
        if let Err(error) = self.persist() {
            warn!(%error, journaled = saved.replay.changes, "could not rewrite the state file at start; the saved list (state file and journal) is intact and enforced, and will be written whole at the next change that can");
        }
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
        if let Err(error) = state::journal(&self.config.state_dir, self.generation, change) {
            // Whatever the failed append left, the next change rewrites the state whole
            // (which also starts a fresh journal) instead of appending after it.
            self.journaled = JOURNAL_COMPACT_AT;
            return Err(error.into());
        }
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
        let people = people_at_risk(safety.caller, safety.caller_port, loopback_protected);
        if people.is_empty() {
            return Ok(());
        }
        self.refuse_cut_off(&people, &next_list()?, next_mode)
    }

    /// As `check_lockout_with`, for a next list compiled already.
    fn check_lockout_against(
        &self,
        next_list: &CompiledList,
        next_mode: Mode,
        safety: &Safety,
    ) -> Result<(), Refusal> {
        self.check_lockout_with(|| Ok(next_list.clone()), next_mode, safety)
    }

    fn refuse_cut_off(
        &self,
        people: &[crate::safety::AtRisk],
        next_list: &CompiledList,
        next_mode: Mode,
    ) -> Result<(), Refusal> {
        let cut = cut_off(
            &Verdicts {
                list: &self.compiled,
                mode: self.mode,
            },
            &Verdicts {
                list: next_list,
                mode: next_mode,
            },
            people,
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
        // An IPv4 client reaches the host as IPv4 whatever it is written as.
        let address = crate::safety::unmap(address);
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
            entry: self.allowlist.deciding_entry(address).cloned(),
        })
    }

    /// Expires entries and reverts an unconfirmed activation whose time is up. Returns
    /// false if that could not be applied (the timer retries).
    pub(crate) fn tick(&mut self) -> bool {
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
            return true;
        }
        for entry in &expired {
            info!(network = %entry.network, description = ?entry.description, "entry expired");
        }
        if let Err(error) = self.commit(allowlist, mode, pending) {
            error!(%error, "applying expiry failed; will retry");
            return false;
        }
        true
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

    pub(crate) fn handle(&mut self, request: Request) -> Reply {
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
                never_expires,
                ports,
                safety,
            } => self.add(
                network,
                description,
                (expires_in_secs, never_expires),
                ports,
                &safety,
            ),
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
        let previous = self.allowlist.managed_entry(network).cloned();
        let update = EntryUpdate {
            description,
            expires_at,
            ports,
        };
        let new = self.allowlist.add(network, update)?;
        let added = self.allowlist.managed_entry(network).cloned();
        let added = added.ok_or_else(|| Refusal::Error(format!("{network} vanished")))?;
        if let Some(before) = &previous {
            if let Err(refusal) = self.check_narrowing(before, &added, safety) {
                self.allowlist.restore_managed(network, previous);
                return Err(refusal);
            }
        }
        self.commit_change(network, previous, Change::Add(added.clone()))?;
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
            "{} {network} ({ports}, {expiry})",
            if new { "added" } else { "updated" }
        )))
    }

    /// Refuses an update of a listed entry that would cut someone off: narrower ports at
    /// once, or a new or earlier expiry when it comes (judged as if the entry were gone,
    /// since the timer removes it without asking). `self.allowlist` holds `after`.
    fn check_narrowing(
        &self,
        before: &Entry,
        after: &Entry,
        safety: &Safety,
    ) -> Result<(), Refusal> {
        let network = after.network;
        let expires_sooner = match (before.expires_at, after.expires_at) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(was), Some(is)) => is < was,
        };
        if !expires_sooner && before.ports == after.ports {
            return Ok(());
        }
        self.check_lockout_with(
            || {
                let mut around = self.allowlist.entries_around(network);
                if expires_sooner {
                    around.retain(|(listed, _)| {
                        *listed != network || self.allowlist.owner_in_config(listed).is_some()
                    });
                }
                let mut next = self.compiled.clone();
                next.recompile_region(network, around)
                    .map_err(|error| Refusal::Error(error.to_string()))?;
                Ok(next)
            },
            self.mode,
            safety,
        )
    }

    fn remove(&mut self, network: ipnet::IpNet, safety: &Safety) -> Result<Reply, Refusal> {
        let network = config::normalize(network);
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
        rows: &[ImportRow],
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
                    for network in &expiring_sooner {
                        let _ = then.remove(*network);
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
        if mode == Mode::Enforce && !self.allowlist.has_operator_entries() {
            return Err(Refusal::Error(
                "activation refused: the allowlist is empty, so enforcing would drop all IP traffic to this host. Add at least one entry (allowlistctl add ADDRESS) first".into(),
            ));
        }
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
        if self.pending_confirm.is_none() {
            return Err(Refusal::Error(
                "nothing to confirm: no `activate --confirm` is pending".into(),
            ));
        }
        self.commit(self.allowlist.clone(), self.mode, None)?;
        Ok(Reply::done(format!("confirmed: mode {} stays", self.mode)))
    }
}

/// Listing 0.0.0.0/0 or ::/0 switches the allowlist off for that family: only on purpose.
fn refuse_everyone_unless_forced(network: ipnet::IpNet, force: bool) -> Result<(), Refusal> {
    if config::allows_everyone(network) && !force {
        return Err(Refusal::Error(format!(
            "{network} allows every source, which turns the allowlist off for that address family; repeat with --force if that is what you want"
        )));
    }
    Ok(())
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
