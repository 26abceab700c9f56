//! What a slot should hold and how to get it there: the list in the kernel's terms, the
//! diff against what the slot holds, where each host goes (the exact-host hash while it
//! has room, else the trie; a host keeps its place while listed), and the order of the
//! writes. The maps are behind [`SlotMaps`], so all of this is tested without a kernel.

use std::collections::{BTreeMap, BTreeSet};

use allowlist_common::{AllowRule, PortSet, MAX_PORT_SETS, PUBLIC_PORT_SET, RULE_PORTS};
use ipnet::{Ipv4Net, Ipv6Net};

use super::{
    error::{kernel_error, Result},
    family::Prefix,
    ApplyReport, FilterError,
};
use crate::{
    compile::{region_range, CompiledList, Reach},
    ports::PortSpec,
    screen::ScreenBits,
};

#[cfg(test)]
mod tests;

/// A compiled list in the kernel's terms: prefixes with rules, and the port sets the
/// rules point at (index 0: the public ports).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct KernelSlot {
    pub v4: Vec<(Ipv4Net, AllowRule)>,
    pub v6: Vec<(Ipv6Net, AllowRule)>,
    pub port_sets: Vec<PortSet>,
}

impl KernelSlot {
    pub fn from_list(list: &CompiledList) -> Result<KernelSlot> {
        debug_assert_eq!(PUBLIC_PORT_SET, 0);
        let mut port_sets = PortSetIds {
            sets: vec![port_set(&list.public_ports)],
            ids: BTreeMap::new(),
        };
        Ok(KernelSlot {
            v4: port_sets.rules(&list.v4)?,
            v6: port_sets.rules(&list.v6)?,
            port_sets: port_sets.sets,
        })
    }
}

/// Numbers each distinct port scope once, in the order rules first point at it.
struct PortSetIds {
    sets: Vec<PortSet>,
    ids: BTreeMap<Vec<PortSpec>, u32>,
}

impl PortSetIds {
    fn rules<P: Prefix>(&mut self, prefixes: &[(P, Reach)]) -> Result<Vec<(P, AllowRule)>> {
        prefixes
            .iter()
            .map(|(net, reach)| Ok((*net, self.rule(reach)?)))
            .collect()
    }

    fn rule(&mut self, reach: &Reach) -> Result<AllowRule> {
        let Reach::Ports(ranges) = reach else {
            return Ok(AllowRule::ALLOW_ALL);
        };
        let next = self.sets.len() as u32;
        let id = *self.ids.entry(ranges.clone()).or_insert(next);
        if id == next {
            if next >= MAX_PORT_SETS {
                return Err(too_many_port_sets("compiling port scopes"));
            }
            self.sets.push(port_set(ranges));
        }
        Ok(AllowRule {
            flags: RULE_PORTS,
            port_set: id,
        })
    }
}

pub(super) fn too_many_port_sets(context: &str) -> FilterError {
    FilterError::Kernel {
        context: context.into(),
        message: format!("more than {MAX_PORT_SETS} distinct port sets"),
    }
}

pub(super) fn port_set(ranges: &[PortSpec]) -> PortSet {
    let mut set = PortSet::default();
    for (slot, range) in set.ranges.iter_mut().zip(ranges) {
        *slot = range.to_kernel();
    }
    set.len = ranges.len().min(set.ranges.len()) as u32;
    set
}

/// The screen bits of a list, computed once per apply for both slots.
pub(super) struct Screens {
    pub v4: ScreenBits,
    pub v6: ScreenBits,
}

impl Screens {
    pub fn of(list: &KernelSlot) -> Screens {
        Screens {
            v4: ScreenBits::of_v4(list.v4.iter().map(|(net, _)| net)),
            v6: ScreenBits::of_v6(list.v6.iter().map(|(net, _)| net)),
        }
    }
}

/// The two maps a prefix can live in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Place {
    /// The exact-host hash.
    Exact,
    Trie,
}

/// One family's maps in one slot, as the writes below need them.
pub(super) trait SlotMaps<P> {
    type Error: std::error::Error + 'static;
    /// Adds `net`, or replaces its rule.
    fn insert(&mut self, place: Place, net: P, rule: AllowRule) -> Result<(), Self::Error>;
    fn remove(&mut self, place: Place, net: P) -> Result<(), Self::Error>;
    /// Sets `net`'s screen bits, leaving the others.
    fn screen(&mut self, net: P);
    /// Makes the screen exactly `bits`.
    fn write_screen(&mut self, bits: &ScreenBits);
}

/// Where a family's hosts are in one slot. Hosts go to the exact-host hash while it has
/// room; the rest ("overflow") to the trie, and a host keeps its place for as long as it
/// is listed, so no write ever moves one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FamilyPlacement<P> {
    capacity: usize,
    /// Hosts in the exact-host hash.
    exact: usize,
    /// Hosts in the trie.
    overflow: BTreeSet<P>,
}

impl<P: Prefix> FamilyPlacement<P> {
    pub fn new(capacity: usize) -> Self {
        FamilyPlacement {
            capacity,
            exact: 0,
            overflow: BTreeSet::new(),
        }
    }

    /// Notes a prefix found in the kernel at start.
    pub fn found(&mut self, net: P, place: Place) {
        match place {
            Place::Exact => self.exact += 1,
            Place::Trie if net.is_host() => {
                self.overflow.insert(net);
            }
            Place::Trie => {}
        }
    }

    /// Where `net` goes (or already is, if `listed` in the slot).
    fn place(&mut self, net: P, listed: bool) -> Place {
        if !net.is_host() || self.overflow.contains(&net) {
            return Place::Trie;
        }
        if listed {
            return Place::Exact;
        }
        if self.exact < self.capacity {
            self.exact += 1;
            Place::Exact
        } else {
            self.overflow.insert(net);
            Place::Trie
        }
    }

    /// Where `net` is, forgetting it.
    fn take(&mut self, net: P) -> Place {
        if net.is_host() && !self.overflow.remove(&net) {
            self.exact -= 1;
            Place::Exact
        } else {
            Place::Trie
        }
    }
}

/// One family's part of one slot: its maps, what they hold and where its hosts are.
pub(super) struct FamilySlot<P, M> {
    maps: M,
    /// For messages.
    slot: usize,
    /// Sorted by prefix.
    held: Vec<(P, AllowRule)>,
    placement: FamilyPlacement<P>,
}

impl<P: Prefix, M: SlotMaps<P>> FamilySlot<P, M> {
    /// `held` (in any order) as the maps hold it, placed as `placement` says.
    pub fn new(
        maps: M,
        slot: usize,
        mut held: Vec<(P, AllowRule)>,
        placement: FamilyPlacement<P>,
    ) -> Self {
        held.sort_unstable_by_key(|(net, _)| *net);
        FamilySlot {
            maps,
            slot,
            held,
            placement,
        }
    }

    pub fn held(&self) -> &[(P, AllowRule)] {
        &self.held
    }

    /// Brings an idle slot (no packet is judged by it) to `wanted`: removals first, so a
    /// list replaced by another never needs room for both, then the screen whole.
    pub fn write_whole(
        &mut self,
        wanted: &[(P, AllowRule)],
        screen: &ScreenBits,
    ) -> Result<ApplyReport> {
        let (upsert, remove) = diff(&self.held, wanted);
        for net in &remove {
            self.remove(*net)?;
        }
        for (net, rule) in &upsert {
            self.upsert(*net, *rule)?;
        }
        self.maps.write_screen(screen);
        self.held = wanted.to_vec();
        Ok(ApplyReport {
            added: upsert.len(),
            removed: remove.len(),
            ..ApplyReport::default()
        })
    }

    /// Brings the prefixes inside `region` to `wanted` (all inside it) in a slot packets
    /// may be judged by. Screen bits are set before the prefixes that need them; then
    /// `upsert` (new prefixes, or new rules) before `remove`, each longest prefix first,
    /// so a source's longest match moves from its old prefix and rule to its new one
    /// without passing through a shorter prefix that is about to be replaced or has
    /// already gone.
    pub fn write_region(&mut self, region: &P, wanted: &[(P, AllowRule)]) -> Result<ApplyReport> {
        let range = region_range(&self.held, region, |net| region.covers(net));
        let (mut upsert, mut remove) = diff(&self.held[range.clone()], wanted);
        for (net, _) in &upsert {
            self.maps.screen(*net);
        }
        upsert.sort_by_key(|(net, _)| std::cmp::Reverse(net.len()));
        remove.sort_by_key(|net| std::cmp::Reverse(net.len()));
        for (net, rule) in &upsert {
            self.upsert(*net, *rule)?;
        }
        for net in &remove {
            self.remove(*net)?;
        }
        self.held.splice(range, wanted.iter().copied());
        Ok(ApplyReport {
            added: upsert.len(),
            removed: remove.len(),
            ..ApplyReport::default()
        })
    }

    fn upsert(&mut self, net: P, rule: AllowRule) -> Result<()> {
        let listed = self.held.binary_search_by(|(n, _)| n.cmp(&net)).is_ok();
        let place = self.placement.place(net, listed);
        self.maps
            .insert(place, net, rule)
            .map_err(kernel_error(format!("adding {net} to slot {}", self.slot)))
    }

    fn remove(&mut self, net: P) -> Result<()> {
        let place = self.placement.take(net);
        self.maps.remove(place, net).map_err(kernel_error(format!(
            "removing {net} from slot {}",
            self.slot
        )))
    }
}

/// The prefixes to write (new, or with a new rule) and to remove to turn `current` into
/// `wanted`; both sorted by prefix.
pub(super) fn diff<N: Ord + Copy>(
    current: &[(N, AllowRule)],
    wanted: &[(N, AllowRule)],
) -> (Vec<(N, AllowRule)>, Vec<N>) {
    let find = |list: &[(N, AllowRule)], net: &N| {
        list.binary_search_by(|(n, _)| n.cmp(net))
            .ok()
            .map(|i| list[i].1)
    };
    let upsert = wanted
        .iter()
        .filter(|(net, rule)| find(current, net) != Some(*rule))
        .copied()
        .collect();
    let remove = current
        .iter()
        .filter(|(net, _)| find(wanted, net).is_none())
        .map(|(net, _)| *net)
        .collect();
    (upsert, remove)
}
