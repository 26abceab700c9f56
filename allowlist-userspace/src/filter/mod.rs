//! The kernel side as the daemon sees it: the XDP program, its pinned maps and links.
//!
//! Everything is pinned under `pin_path`, so the filter outlives the daemon: a crash or a
//! restart leaves the last applied list enforcing, and the next daemon takes over what is
//! pinned instead of starting from nothing.
//!
//! ```text
//! pin_path/
//!   vN/program       the XDP program of map layout N (allowlist_common::LAYOUT_VERSION)
//!   vN/maps/NAME     every map of allowlist_common::MAP_*, in layout N
//!   links/IFNAME     one XDP link per protected interface
//!   egress/IFNAME    one TC egress (TCX) link per protected interface: flow tracking
//! ```
//!
//! This module is the [`Filter`] API; `pins` keeps the filter on bpffs, `layout` moves
//! between map layouts (upgrades), `attach` puts it on interfaces, `slots` works out what
//! to write into a slot and in which order, `maps` holds the kernel's maps, `family` is
//! all that differs between IPv4 and IPv6, `error` words the kernel's refusals, and
//! `dropped` and `hits` read what the program observes (the sources it drops, what each
//! listed prefix admits). Over 500 lines because the `Filter` API is the one place that
//! sequences them.

mod attach;
mod batch;
mod blocks;
mod dropped;
mod error;
mod family;
mod hits;
mod layout;
mod maps;
mod pins;
mod probe;
mod remotes;
mod slots;
mod ticks;

use std::{
    collections::BTreeMap,
    fs, io,
    time::{Duration, Instant},
};

use allowlist_common::{
    AllowRule, Control, FlowKey, FlowState, PortSet, Revert, FEATURE_REVERT_PENDING, MAX_PORT_SETS,
    RULE_PORTS, SLOTS,
};
use aya::{programs::Xdp, Ebpf, EbpfLoader};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tracing::info;

pub use self::{
    attach::EgressMechanism,
    dropped::DroppedSource,
    error::FilterError,
    hits::PrefixHits,
    layout::WRITER,
    pins::{prepare_pin_root, uninstall, Pins},
    probe::OLDEST_KERNEL,
    remotes::RemoteFilterRebuild,
};
use self::{
    attach::{egress_program_of, program_of},
    error::{io_error, kernel_error, Result},
    family::Prefix,
    maps::Maps,
    pins::ensure_bpffs,
    slots::{port_set, too_many_port_sets, KernelSlot, Screens},
};
use crate::{
    clock,
    compile::{region_range, CompiledList, Reach},
    config::Mode,
    state::PendingConfirm,
};

/// The compiled XDP program, embedded so the installed daemon is self-contained.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/allowlist"));
/// Helper programs for `cargo xtask bench` (no-op, drop-all, traffic generator); never
/// loaded by the daemon.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/allowlist-bench"));

/// How the program ended up attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedMode {
    Native,
    Generic,
}

/// The daemon's handle on the loaded program and its maps.
pub struct Filter {
    ebpf: Ebpf,
    pins: Pins,
    /// Also what each slot holds now, read back from the kernel at start.
    maps: Maps,
    control: Control,
    attached: BTreeMap<String, AttachedMode>,
    /// How the flow tracker is attached to each interface's egress.
    egress: BTreeMap<String, EgressMechanism>,
    /// Other layouts found pinned, to finish moving from once every interface runs this
    /// program (see [`Filter::complete_layout`]).
    layouts: layout::Survey,
    /// Capacity of the dropped-sources map as created.
    dropped_capacity: u32,
    /// Each listed prefix's hit counter.
    hit_counters: hits::HitCounters,
    /// Which block of the counters each attached interface counts in.
    counter_blocks: blocks::CounterBlocks,
    /// The clock hits and drops are stamped with.
    ticks: ticks::TickClock,
}

pub use blocks::Counters;

/// What applying a list changed in the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub added: usize,
    pub removed: usize,
    pub took: Duration,
}

impl Filter {
    /// Loads the program and opens the maps pinned under `pins` (creating them the first
    /// time). Nothing is attached and no verdict changes yet.
    pub fn open(pins: Pins, ebpf_debug_log: bool) -> Result<Filter> {
        Self::open_with(
            pins,
            ebpf_debug_log,
            allowlist_common::DEFAULT_DROPPED_SOURCES,
        )
    }

    /// [`Filter::open`], with the dropped-sources map made for `dropped_sources` sources
    /// (a pinned one of another size is replaced; 0 makes the smallest, as recording is
    /// then off).
    pub fn open_with(pins: Pins, ebpf_debug_log: bool, dropped_sources: u32) -> Result<Filter> {
        probe::require_kernel_features()?;
        ensure_bpffs(pins.root())?;
        // Before anything is created: a newer layout is refused untouched.
        let layouts = layout::survey(&pins)?;
        if let (false, Some(source)) = (layouts.ours_live, &layouts.source) {
            info!(
                from = source.version,
                to = allowlist_common::LAYOUT_VERSION,
                "the interfaces run a filter in an older map layout, written by {}; building this version's maps beside it and switching over",
                source.writer
            );
        }
        for dir in [
            pins.root().to_path_buf(),
            pins.maps(),
            pins.links(),
            pins.egress_links(),
        ] {
            fs::create_dir_all(&dir).map_err(io_error(format!("creating {}", dir.display())))?;
        }
        // aya-log's level filter: 0 silences every log statement in the program.
        let log_level: u8 = if ebpf_debug_log { 0xff } else { 0 };
        let maps_dir = pins.maps();
        let dropped_capacity = dropped::map_capacity(dropped_sources);
        dropped::resize_pinned(&maps_dir, dropped_capacity)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .map_max_entries(allowlist_common::MAP_DROPPED_SOURCES, dropped_capacity)
            .override_global(aya_log::LEVEL, &log_level, true)
            .load(EBPF_OBJECT)
            .map_err(kernel_error("loading the XDP program's maps"))?;
        program_of(&mut ebpf)?
            .load()
            .map_err(kernel_error("loading the XDP program into the kernel"))?;
        egress_program_of(&mut ebpf)?.load().map_err(kernel_error(
            "loading the TC egress program into the kernel",
        ))?;
        let ticks = ticks::TickClock::load(&mut ebpf)?;

        if ebpf_debug_log {
            forward_program_log(&mut ebpf)?;
        }
        let mut maps = Maps::take(&mut ebpf)?;
        if !layouts.ours_live {
            layout::stamp(&mut maps.layout, layout::BUILDING)?;
            if let Some(source) = &layouts.source {
                layout::carry_counters_before_switch(source, &maps_dir, layouts.ours_building);
            }
            layout::crash_point("layout-built");
        }
        let control = maps
            .control
            .get(&0, 0)
            .map_err(kernel_error("reading the control record"))?;
        let active = &maps.slots[control.active_slot as usize % SLOTS];
        let hit_counters = hits::HitCounters::read_back(
            active
                .v4
                .held()
                .map(|(net, rule)| (IpNet::V4(net), rule))
                .chain(active.v6.held().map(|(net, rule)| (IpNet::V6(net), rule))),
        );
        let counter_blocks =
            blocks::CounterBlocks::read_back(&maps.ifindex_blocks, &pins.pinned_interfaces()?);
        Ok(Filter {
            counter_blocks,
            ticks,
            ebpf,
            pins,
            maps,
            control,
            attached: BTreeMap::new(),
            egress: BTreeMap::new(),
            layouts,
            dropped_capacity,
            hit_counters,
        })
    }

    /// Finishes a start: every interface runs this program now, so this version's maps
    /// are stamped live and what other layouts left is removed (after carrying over the
    /// flows the old program recorded since [`Filter::open`]).
    pub fn complete_layout(&mut self) -> Result<()> {
        if self.layouts.ours_live && self.layouts.retiring.is_empty() {
            return Ok(());
        }
        layout::crash_point("layout-switched");
        if let Some(source) = &self.layouts.source {
            let remotes = &self.maps.remotes;
            layout::carry_over_after_switch(source, &self.pins.maps(), &|flow| {
                remotes.mark([flow])
            });
        }
        layout::stamp(&mut self.maps.layout, layout::LIVE)?;
        layout::crash_point("layout-live");
        layout::remove_retired(&self.layouts.retiring)?;
        if let Some(source) = self.layouts.source.take() {
            info!(
                from = source.version,
                to = allowlist_common::LAYOUT_VERSION,
                "every interface runs this version's filter; the old layout's maps are removed"
            );
        } else if !self.layouts.retiring.is_empty() {
            info!(removed = ?self.layouts.retiring, "removed maps that an interrupted upgrade left");
        }
        self.layouts = layout::Survey {
            ours_live: true,
            ..layout::Survey::default()
        };
        Ok(())
    }

    /// Whether this start moves the interfaces over from an older map layout.
    pub fn switching_layouts(&self) -> bool {
        !self.layouts.ours_live && self.layouts.source.is_some()
    }

    /// Called before any interface's XDP or egress program is replaced: while switching
    /// layouts, the old program's flows go over once more, as late as possible.
    fn before_switching(&mut self) {
        if self.layouts.ours_live || self.layouts.tables_carried {
            return;
        }
        if let Some(source) = &self.layouts.source {
            let remotes = &self.maps.remotes;
            layout::carry_tables(source, &self.pins.maps(), &|flow| remotes.mark([flow]));
        }
        self.layouts.tables_carried = true;
    }

    /// What each listed prefix that has a hit counter admitted, folded over CPUs.
    pub fn prefix_hits(&self) -> Result<BTreeMap<IpNet, PrefixHits>> {
        let now = self.ticks.now(&self.ebpf)?;
        self.hit_counters
            .read(&self.maps.hits, |jiffies| now.wall_clock_of(jiffies))
    }

    /// The sources the program dropped (or would have, in monitor mode) that the
    /// kernel's table still holds, folded over CPUs.
    pub fn dropped_sources(&self) -> Result<Vec<DroppedSource>> {
        dropped::read_all(
            &self.maps.dropped,
            &self.maps.recent_drops,
            self.dropped_capacity,
            &self.ticks.now(&self.ebpf)?,
        )
    }

    /// Whether a previous daemon left this filter attached somewhere.
    pub fn is_pinned(pins: &Pins) -> Result<bool> {
        Ok(!pins.pinned_interfaces()?.is_empty())
    }

    pub fn mode(&self) -> Mode {
        mode_of(self.control.mode)
    }

    /// Whether the program itself reverted a `--confirm` change whose deadline passed
    /// (since the daemon last armed one), and to which mode.
    pub fn reverted_in_kernel(&mut self) -> Result<Option<Mode>> {
        let revert = self
            .maps
            .revert
            .get(&0, 0)
            .map_err(kernel_error("reading the revert record"))?;
        if revert.fired == 0 {
            // Switching layouts, this layout's revert is new: the old one's says what the
            // kernel did.
            let old = self
                .layouts
                .source
                .as_ref()
                .filter(|_| !self.layouts.ours_live);
            return Ok(old.and_then(|old| old.reverted_to).map(mode_of));
        }
        self.refresh_control()?;
        Ok(Some(mode_of(revert.mode)))
    }

    /// Prefixes per family (IPv4, IPv6) in the list the kernel judges by now.
    pub fn entry_counts(&self) -> (usize, usize) {
        let slot = &self.maps.slots[self.control.active_slot as usize % SLOTS];
        (slot.v4.held().len(), slot.v6.held().len())
    }

    /// Turns features (`FEATURE_*`) on or off for the next packet. A pending revert is
    /// not a feature the config sets: it is kept as it is.
    pub fn set_features(&mut self, features: u32) -> Result<()> {
        self.refresh_control()?;
        let features =
            (features & !FEATURE_REVERT_PENDING) | (self.control.features & FEATURE_REVERT_PENDING);
        if self.control.features != features {
            self.write_control(Control {
                features,
                ..self.control
            })?;
        }
        Ok(())
    }

    /// Records flows the host opened before tracking began (e.g. a download running when
    /// the daemon starts), so their replies pass too.
    pub fn seed_flows(&mut self, flows: &[FlowKey]) -> Result<usize> {
        let now = boot_time_ns();
        // Bits first: a reply that finds the flow must find its remote's bit.
        self.maps.remotes.mark(flows);
        for flow in flows {
            self.maps
                .flows
                .insert(flow, FlowState { last_seen_ns: now }, 0)
                .map_err(kernel_error("seeding the flow table"))?;
        }
        Ok(flows.len())
    }

    /// Rebuilds the remote filter from the flows still live and switches the program to
    /// it, so the remotes of ended flows no longer send their packets to the flow table.
    pub fn rebuild_remote_filter(&mut self) -> Result<RemoteFilterRebuild> {
        // From the kernel, not this process's copy: clearing the generation the program
        // reads would drop replies to every flow until the fill is done.
        self.read_control()?;
        let standby = self.control.remote_generation ^ 1;
        self.maps.remotes.clear(standby);
        wait_for_packets_in_flight();
        let rebuilt = self
            .maps
            .remotes
            .fill(standby, &self.maps.flows, boot_time_ns())?;
        self.read_control()?;
        self.write_control(Control {
            remote_generation: standby,
            ..self.control
        })?;
        Ok(rebuilt)
    }

    fn read_control(&mut self) -> Result<()> {
        self.control = self
            .maps
            .control
            .get(&0, 0)
            .map_err(kernel_error("reading the control record"))?;
        Ok(())
    }

    /// How the flow tracker is attached to each interface it is on.
    pub fn egress(&self) -> &BTreeMap<String, EgressMechanism> {
        &self.egress
    }

    pub fn attached(&self) -> &BTreeMap<String, AttachedMode> {
        &self.attached
    }

    /// Makes the kernel judge by `list`, atomically: the inactive slot is brought to
    /// `list`, the program is pointed at it, and this returns once every packet in flight
    /// has finished with the old slot.
    ///
    /// One pass: the old slot is left as it is (idle, holding the previous list), and the
    /// next change brings it up to date by diffing against its own mirror of what it
    /// holds. Writing the same change into it again here would double every whole-list
    /// change for nothing, as the next change rewrites it anyway. The report counts the
    /// writes made to the slot now in force.
    pub fn apply(&mut self, list: &CompiledList) -> Result<ApplyReport> {
        let started = Instant::now();
        let mut list = KernelSlot::from_list(list)?;
        self.hit_counters.stamp(&mut list.v4, &mut self.maps.hits)?;
        self.hit_counters.stamp(&mut list.v6, &mut self.maps.hits)?;
        let screens = Screens::of(&list);
        self.refresh_control()?;
        let active = self.control.active_slot as usize % SLOTS;
        let standby = 1 - active;
        let mut report = self.write_slot(standby, &list, &screens)?;
        self.write_control(Control {
            active_slot: standby as u32,
            ..self.control
        })?;
        // Before the old slot may be written again (the next change) and before counters
        // of prefixes gone from the list are given out again: a packet still judged by
        // the old slot could count into them.
        wait_for_packets_in_flight();
        // The old slot still points at the counters of prefixes gone from the list, but
        // no packet is judged by it, and the next change rewrites its rules. (Looked up in
        // the sorted list: far fewer prefixes have counters than a long list holds.)
        self.hit_counters.keep_only(|net| match net {
            IpNet::V4(net) => list.v4.binary_search_by(|(n, _)| n.cmp(net)).is_ok(),
            IpNet::V6(net) => list.v6.binary_search_by(|(n, _)| n.cmp(net)).is_ok(),
        });
        report.took = started.elapsed();
        Ok(report)
    }

    /// Applies a change confined to `region` (one entry added, updated or removed) in
    /// place to the slot in force, without the flip and its wait: `list` is the whole new
    /// list, equal to the one in force outside `region`. This is what keeps one change to
    /// a list of millions in the milliseconds. The idle slot is left as it is: the next
    /// whole apply brings it up to date from its own mirror.
    ///
    /// Each key is replaced atomically, screen bits are set before the prefixes that
    /// need them (and left set after a removal: a set bit only means "look further",
    /// until the next whole apply clears it), and prefixes are written longest first,
    /// so a packet meets its source's old verdict or its new one.
    pub fn apply_region(&mut self, list: &CompiledList, region: IpNet) -> Result<ApplyReport> {
        if self.active_slot().port_sets.is_empty() {
            // Not written since this process took the maps over (the port sets are only
            // known once written): rewrite whole.
            return self.apply(list);
        }
        let started = Instant::now();
        let mut report = match region.trunc() {
            IpNet::V4(region) => self.write_region(&list.v4, region)?,
            IpNet::V6(region) => self.write_region(&list.v6, region)?,
        };
        report.took = started.elapsed();
        Ok(report)
    }

    fn active_slot(&self) -> &maps::Slot {
        &self.maps.slots[self.control.active_slot as usize % SLOTS]
    }

    /// One family's part of [`Filter::apply_region`]; `compiled` is that family's list.
    fn write_region<P: Prefix + Into<IpNet>>(
        &mut self,
        compiled: &[(P, Reach)],
        region: P,
    ) -> Result<ApplyReport> {
        let range = region_range(compiled, &region, |net| region.covers(net));
        let mut wanted = self.rules_for(&compiled[range])?;
        self.hit_counters.stamp(&mut wanted, &mut self.maps.hits)?;
        self.refresh_control()?;
        let active = self.control.active_slot as usize % SLOTS;
        let report = P::in_slot(&mut self.maps.slots[active]).write_region(&region, &wanted)?;
        if !wanted.iter().any(|(net, _)| *net == region) {
            // The changed network left the kernel (removed, or now inside another).
            self.hit_counters.release(region.into());
        }
        Ok(report)
    }

    /// Kernel rules for compiled prefixes; a port set neither slot has yet is added to
    /// both before any rule points at it.
    fn rules_for<P: Copy>(&mut self, prefixes: &[(P, Reach)]) -> Result<Vec<(P, AllowRule)>> {
        let mut rules = Vec::with_capacity(prefixes.len());
        for (net, reach) in prefixes {
            let rule = match reach {
                Reach::All => AllowRule::ALLOW_ALL,
                Reach::Ports(ranges) => {
                    let set = port_set(ranges);
                    let known = &self.active_slot().port_sets;
                    let id = match known.iter().skip(1).position(|known| *known == set) {
                        Some(index) => index + 1,
                        None => self.add_port_set(set)?,
                    };
                    AllowRule {
                        flags: RULE_PORTS,
                        port_set: id as u32,
                    }
                }
            };
            rules.push((*net, rule));
        }
        Ok(rules)
    }

    /// Adds a port set to the slot in force (the idle one gets its sets with the next
    /// whole apply).
    fn add_port_set(&mut self, set: PortSet) -> Result<usize> {
        let active = self.control.active_slot as usize % SLOTS;
        let slot = &mut self.maps.slots[active];
        let id = slot.port_sets.len();
        if id >= MAX_PORT_SETS as usize {
            return Err(too_many_port_sets("adding a port scope"));
        }
        slot.push_port_set(set)?;
        Ok(id)
    }

    /// Sets the mode; with `pending`, the program itself goes back to its `revert_to`
    /// when its deadline passes unconfirmed (see [`allowlist_common::Revert`]), so the
    /// revert does not depend on this process being alive then.
    ///
    /// Returns the mode the kernel ends up in: a confirmation that crossed the kernel's
    /// own revert on the deadline finds the reverted mode there, and the caller must take
    /// that as the outcome.
    pub fn set_mode(&mut self, mode: Mode, pending: Option<PendingConfirm>) -> Result<Mode> {
        self.refresh_control()?;
        let mut control = Control {
            mode: allowlist_common::Mode::from(mode) as u32,
            features: self.control.features & !FEATURE_REVERT_PENDING,
            ..self.control
        };
        if let Some(pending) = pending {
            let revert = Revert {
                deadline_ns: boot_time_of(pending.deadline),
                mode: allowlist_common::Mode::from(pending.revert_to) as u32,
                fired: 0,
            };
            // The deadline before the bit that makes the program read it.
            self.maps
                .revert
                .set(0, revert, 0)
                .map_err(kernel_error("writing the revert record"))?;
            control.features |= FEATURE_REVERT_PENDING;
        }
        let was_pending = self.control.features & FEATURE_REVERT_PENDING != 0;
        if self.control != control {
            self.write_control(control)?;
            wait_for_packets_in_flight();
        }
        if was_pending && pending.is_none() {
            // A packet that read the record before our write may have reverted it after;
            // every such packet has finished now (the wait above), so this read is final.
            self.refresh_control()?;
        }
        Ok(self.mode())
    }

    /// Re-reads the control record while a revert is pending: the program may have
    /// rewritten it, and a write built on a stale copy would undo that revert.
    fn refresh_control(&mut self) -> Result<()> {
        if self.control.features & FEATURE_REVERT_PENDING != 0 {
            self.read_control()?;
        }
        Ok(())
    }

    /// Pins the program loaded now, replacing a previous daemon's pin.
    pub fn pin_program(&mut self) -> Result<()> {
        let path = self.pins.program();
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error(format!("removing {}", path.display()))(error)),
        }
        program_of(&mut self.ebpf)?
            .pin(&path)
            .map_err(kernel_error(format!(
                "pinning the program at {}",
                path.display()
            )))
    }

    /// What the program counted on every interface, by reason.
    pub fn counters(&self) -> Result<Counters> {
        blocks::CounterBlocks::totals(&self.maps.counters)
    }

    /// What the program counted on each attached interface, by name and reason.
    pub fn interface_counters(&self) -> Result<BTreeMap<String, Counters>> {
        self.counter_blocks.per_interface(&self.maps.counters)
    }

    /// The loaded program, for `BPF_PROG_TEST_RUN`.
    pub fn program(&mut self) -> Result<&mut Xdp> {
        program_of(&mut self.ebpf)
    }

    fn write_control(&mut self, control: Control) -> Result<()> {
        self.maps
            .control
            .set(0, control, 0)
            .map_err(kernel_error("writing the control record"))?;
        self.control = control;
        Ok(())
    }

    fn write_slot(
        &mut self,
        slot: usize,
        list: &KernelSlot,
        screens: &Screens,
    ) -> Result<ApplyReport> {
        let slot = &mut self.maps.slots[slot];
        // Port sets first: rules written below may point at them.
        slot.write_port_sets(&list.port_sets)?;
        let v4 = slot.v4.write_whole(&list.v4, &screens.v4)?;
        let v6 = slot.v6.write_whole(&list.v6, &screens.v6)?;
        Ok(ApplyReport {
            added: v4.added + v6.added,
            removed: v4.removed + v6.removed,
            took: Duration::ZERO,
        })
    }
}

fn mode_of(raw: u32) -> Mode {
    match allowlist_common::Mode::from_raw(raw) {
        allowlist_common::Mode::Off => Mode::Off,
        allowlist_common::Mode::Monitor => Mode::Monitor,
        allowlist_common::Mode::Enforce => Mode::Enforce,
    }
}

/// A wall-clock deadline (Unix seconds) on the program's clock, CLOCK_BOOTTIME, which
/// counts suspend and does not jump; one already passed is due now.
fn boot_time_of(deadline: u64) -> u64 {
    let left = deadline.saturating_sub(clock::now());
    boot_time_ns().saturating_add(left.saturating_mul(1_000_000_000))
}

/// CLOCK_BOOTTIME in nanoseconds: the clock of bpf_ktime_get_boot_ns.
fn boot_time_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|time| time.tv_sec() as u64 * 1_000_000_000 + time.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Forwards the program's aya-log records to this process's log (target
/// `allowlist_ebpf`) from a thread of its own, so the kernel side can be debugged live.
fn forward_program_log(ebpf: &mut Ebpf) -> Result<()> {
    use std::os::fd::AsFd as _;
    let mut logger =
        aya_log::EbpfLogger::init(ebpf).map_err(kernel_error("starting the XDP program's log"))?;
    std::thread::Builder::new()
        .name("ebpf-log".into())
        .spawn(move || loop {
            let mut fds = [nix::poll::PollFd::new(
                logger.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16)).is_err() {
                return;
            }
            logger.flush();
        })
        .map_err(io_error("starting the XDP log thread"))?;
    Ok(())
}

/// Waits until no packet can still be judged by what the control record said before.
///
/// The program runs inside an RCU read-side critical section, and the global membarrier
/// command waits for an RCU grace period (synchronize_rcu), so once it returns every
/// program run that read the old record has finished.
fn wait_for_packets_in_flight() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
    // SAFETY: membarrier takes no pointers.
    let result = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if result != 0 {
        // Only refused on nohz_full kernels; a program run lasts microseconds.
        std::thread::sleep(Duration::from_millis(50));
    }
}
