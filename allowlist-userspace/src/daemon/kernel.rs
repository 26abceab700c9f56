//! What the daemon asks of the kernel layer, as one trait: the real [`Filter`], or in
//! unit tests a fake that records what it was told, so that the state transitions (add,
//! remove, import, expiry, rollback) are tested without root. The end-to-end tests keep
//! the real one honest.

use std::collections::BTreeMap;

use allowlist_common::FlowKey;
use ipnet::IpNet;

use crate::{
    compile::CompiledList,
    config::{Mode, XdpMode},
    filter::{
        ApplyReport, AttachedMode, Counters, DroppedSource, EgressMechanism, Filter, FilterError,
        PrefixHits, RemoteFilterRebuild,
    },
    state::PendingConfirm,
};

pub trait Kernel {
    /// Makes the kernel judge by `list`, atomically.
    fn apply(&mut self, list: &CompiledList) -> Result<ApplyReport, FilterError>;
    /// Applies a change confined to `region` in place (see [`Filter::apply_region`]).
    fn apply_region(
        &mut self,
        list: &CompiledList,
        region: IpNet,
    ) -> Result<ApplyReport, FilterError>;
    /// Sets the mode; with `pending`, the kernel reverts on its own at the deadline.
    /// Returns the mode the kernel is in afterwards (see [`Filter::set_mode`]).
    fn set_mode(
        &mut self,
        mode: Mode,
        pending: Option<PendingConfirm>,
    ) -> Result<Mode, FilterError>;
    fn set_features(&mut self, features: u32) -> Result<(), FilterError>;
    /// The mode the kernel is in now.
    fn mode(&self) -> Mode;
    /// Prefixes per family (IPv4, IPv6) the kernel judges by now.
    fn entry_counts(&self) -> (usize, usize);
    /// What the program counted, by reason, summed over CPUs and interfaces.
    fn counters(&self) -> Result<Counters, FilterError>;
    /// What it counted on each attached interface.
    fn interface_counters(&self) -> Result<BTreeMap<String, Counters>, FilterError>;
    /// Attaches to `interface` (or takes over its pinned link), given the mode recorded
    /// for it earlier.
    fn attach(
        &mut self,
        interface: &str,
        wanted: XdpMode,
        recorded: Option<AttachedMode>,
    ) -> Result<AttachedMode, FilterError>;
    /// Attaches the flow tracker to `interface`'s egress (or takes it over).
    fn attach_egress(&mut self, interface: &str) -> Result<EgressMechanism, FilterError>;
    /// How the flow tracker is attached, per interface.
    fn egress(&self) -> &BTreeMap<String, EgressMechanism>;
    /// Detaches from every interface not in `keep`.
    fn detach_others(&mut self, keep: &[String]) -> Result<(), FilterError>;
    fn attached(&self) -> &BTreeMap<String, AttachedMode>;
    fn seed_flows(&mut self, flows: &[FlowKey]) -> Result<usize, FilterError>;
    /// Drops ended flows' remotes from the filter in front of the flow table (see
    /// [`Filter::rebuild_remote_filter`]).
    fn rebuild_remote_filter(&mut self) -> Result<RemoteFilterRebuild, FilterError>;
    /// Pins the program loaded now, so the filter outlives the daemon.
    fn pin_program(&mut self) -> Result<(), FilterError>;
    /// Every interface runs this program: retire other map layouts (see
    /// [`Filter::complete_layout`]).
    fn complete_layout(&mut self) -> Result<(), FilterError>;
    /// What the kernel's table of dropped sources holds.
    fn dropped_sources(&self) -> Result<Vec<DroppedSource>, FilterError>;
    /// What each listed prefix the kernel counts for admitted.
    fn prefix_hits(&self) -> Result<std::collections::BTreeMap<IpNet, PrefixHits>, FilterError>;
}

impl Kernel for Filter {
    fn apply(&mut self, list: &CompiledList) -> Result<ApplyReport, FilterError> {
        Filter::apply(self, list)
    }
    fn apply_region(
        &mut self,
        list: &CompiledList,
        region: IpNet,
    ) -> Result<ApplyReport, FilterError> {
        Filter::apply_region(self, list, region)
    }
    fn set_mode(
        &mut self,
        mode: Mode,
        pending: Option<PendingConfirm>,
    ) -> Result<Mode, FilterError> {
        Filter::set_mode(self, mode, pending)
    }
    fn set_features(&mut self, features: u32) -> Result<(), FilterError> {
        Filter::set_features(self, features)
    }
    fn mode(&self) -> Mode {
        Filter::mode(self)
    }
    fn entry_counts(&self) -> (usize, usize) {
        Filter::entry_counts(self)
    }
    fn counters(&self) -> Result<Counters, FilterError> {
        Filter::counters(self)
    }
    fn interface_counters(&self) -> Result<BTreeMap<String, Counters>, FilterError> {
        Filter::interface_counters(self)
    }
    fn attach(
        &mut self,
        interface: &str,
        wanted: XdpMode,
        recorded: Option<AttachedMode>,
    ) -> Result<AttachedMode, FilterError> {
        Filter::attach(self, interface, wanted, recorded)
    }
    fn attach_egress(&mut self, interface: &str) -> Result<EgressMechanism, FilterError> {
        Filter::attach_egress(self, interface)
    }
    fn egress(&self) -> &BTreeMap<String, EgressMechanism> {
        Filter::egress(self)
    }
    fn detach_others(&mut self, keep: &[String]) -> Result<(), FilterError> {
        Filter::detach_others(self, keep)
    }
    fn attached(&self) -> &BTreeMap<String, AttachedMode> {
        Filter::attached(self)
    }
    fn seed_flows(&mut self, flows: &[FlowKey]) -> Result<usize, FilterError> {
        Filter::seed_flows(self, flows)
    }
    fn rebuild_remote_filter(&mut self) -> Result<RemoteFilterRebuild, FilterError> {
        Filter::rebuild_remote_filter(self)
    }
    fn pin_program(&mut self) -> Result<(), FilterError> {
        Filter::pin_program(self)
    }
    fn complete_layout(&mut self) -> Result<(), FilterError> {
        Filter::complete_layout(self)
    }
    fn dropped_sources(&self) -> Result<Vec<DroppedSource>, FilterError> {
        Filter::dropped_sources(self)
    }
    fn prefix_hits(&self) -> Result<std::collections::BTreeMap<IpNet, PrefixHits>, FilterError> {
        Filter::prefix_hits(self)
    }
}
