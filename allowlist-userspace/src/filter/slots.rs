//! What a slot should hold and how to get it there: the list in the kernel's terms, the
//! diff against what the slot holds (a compact sorted mirror, walked in step with the
//! list), where each host goes (the exact-host hash while it has room, else the trie; a
//! host keeps its place while listed), the order of the writes, and when they go in
//! batches (see `batch.rs`). The maps are behind [`SlotMaps`], so all of this is tested
//! without a kernel.

use std::collections::{BTreeMap, BTreeSet};

use allowlist_common::{AllowRule, PortSet, MAX_PORT_SETS, PUBLIC_PORT_SET, RULE_PORTS};
use ipnet::{Ipv4Net, Ipv6Net};

use super::{
    error::{kernel_error, Result},
    family::Prefix,
    ApplyReport, FilterError,
};
use crate::{
    compile::{CompiledList, Reach},
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
    /// [`SlotMaps::insert`] of each entry, in order, in one call to the kernel.
    fn insert_batch(
        &mut self,
        place: Place,
        entries: &[(P, AllowRule)],
    ) -> Result<(), BatchError<Self::Error>>;
    /// [`SlotMaps::remove`] of each prefix, in order, in one call to the kernel.
    fn remove_batch(&mut self, place: Place, nets: &[P]) -> Result<(), BatchError<Self::Error>>;
    /// Sets `net`'s screen bits, leaving the others.
    fn screen(&mut self, net: P);
    /// Makes the screen exactly `bits`.
    fn write_screen(&mut self, bits: &ScreenBits);
    /// Every prefix the maps hold, with where it is and its rule: what the mirror is
    /// rebuilt from when a write failed part way.
    fn read_all(&self) -> Result<Vec<(P, Place, AllowRule)>, Self::Error>;
}

/// Why a batch call did not write all its elements.
#[derive(Debug)]
pub(super) enum BatchError<E> {
    /// The kernel has no batch call for this map; nothing was written.
    Unsupported,
    /// The elements before `done` were written; the one at `done` was refused (or, when
    /// `done` is the batch's length, the call failed after writing them all).
    Stopped { done: usize, error: E },
}

/// When a slot writes in batches rather than one element per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Batching {
    /// Changes fewer than this are written one by one: a batch call saves little on a few
    /// writes, and one-by-one writes are what in-place changes are made of.
    pub from: usize,
    /// Elements per batch call at most, which bounds the buffers (64k IPv6 trie keys and
    /// rules take 2 MiB).
    pub chunk: usize,
    /// The kernel refused batch calls for the exact-host hash: written one by one since.
    pub refused_exact: bool,
    /// The same for the trie.
    pub refused_trie: bool,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            from: 32,
            chunk: 65_536,
            refused_exact: false,
            refused_trie: false,
        }
    }
}

impl Batching {
    fn refused(&mut self, place: Place) -> &mut bool {
        match place {
            Place::Exact => &mut self.refused_exact,
            Place::Trie => &mut self.refused_trie,
        }
    }
}

/// One prefix and its rule as a slot's mirror holds it: 12 bytes for IPv4 and 24 for
/// IPv6, where `(prefix, AllowRule)` takes 16 and 28 (port sets are numbered below
/// [`MAX_PORT_SETS`], so 16 bits hold any the filter writes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Held<P> {
    net: P,
    flags: u32,
    /// A port set number too large for 16 bits, read back from the kernel, is held as
    /// `u16::MAX`, which no list the filter writes has: the next write replaces the rule.
    port_set: u16,
}

const _: () = assert!(MAX_PORT_SETS < u16::MAX as u32);

impl<P: Copy> Held<P> {
    fn new((net, rule): (P, AllowRule)) -> Self {
        Held {
            net,
            flags: rule.flags,
            port_set: u16::try_from(rule.port_set).unwrap_or(u16::MAX),
        }
    }

    fn rule(&self) -> AllowRule {
        AllowRule {
            flags: self.flags,
            port_set: u32::from(self.port_set),
        }
    }

    fn entry(&self) -> (P, AllowRule) {
        (self.net, self.rule())
    }
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
            self.exact = self.exact.saturating_sub(1);
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
    /// What the maps hold, sorted by prefix: the mirror every write is diffed against.
    held: Vec<Held<P>>,
    placement: FamilyPlacement<P>,
    batching: Batching,
}

impl<P: Prefix, M: SlotMaps<P>> FamilySlot<P, M> {
    /// `held` (in any order) as the maps hold it, placed as `placement` says.
    pub fn new(
        maps: M,
        slot: usize,
        held: Vec<(P, AllowRule)>,
        placement: FamilyPlacement<P>,
    ) -> Self {
        let mut held: Vec<Held<P>> = held.into_iter().map(Held::new).collect();
        held.sort_unstable_by_key(|held| held.net);
        FamilySlot {
            maps,
            slot,
            held,
            placement,
            batching: Batching::default(),
        }
    }

    /// Rebuilds the mirror and the hosts' placement from what the maps hold. After a
    /// write failed part way the mirror no longer says what the kernel has: a later diff
    /// against it (the rollback to the previous list, say) would leave the prefixes the
    /// failed write had already added, and a refused list would partly pass.
    fn resync(&mut self) -> Result<()> {
        let found = self
            .maps
            .read_all()
            .map_err(kernel_error(format!("reading slot {} back", self.slot)))?;
        let mut placement = FamilyPlacement::new(self.placement.capacity);
        self.held.clear();
        for (net, place, rule) in found {
            placement.found(net, place);
            self.held.push(Held::new((net, rule)));
        }
        self.held.sort_unstable_by_key(|held| held.net);
        self.placement = placement;
        Ok(())
    }

    /// `result` as it is, with the mirror read back from the kernel first if it is an
    /// error (a failed read-back is logged: the write's own error is the one to report).
    fn resynced_on_error(&mut self, result: Result<ApplyReport>) -> Result<ApplyReport> {
        if result.is_err() {
            if let Err(error) = self.resync() {
                tracing::error!(
                    slot = self.slot,
                    "a write to the slot failed and reading it back failed too: {error}; \
                     the next whole apply of this slot may leave stale prefixes"
                );
            }
        }
        result
    }

    /// What the maps hold, by prefix.
    pub fn held(&self) -> impl ExactSizeIterator<Item = (P, AllowRule)> + '_ {
        self.held.iter().map(Held::entry)
    }

    /// Brings an idle slot (no packet is judged by it) to `wanted` (sorted by prefix):
    /// removals first, so a list replaced by another never needs room for both, then the
    /// screen whole. A large change goes in batches.
    pub fn write_whole(
        &mut self,
        wanted: &[(P, AllowRule)],
        screen: &ScreenBits,
    ) -> Result<ApplyReport> {
        let result = self.try_write_whole(wanted, screen);
        self.resynced_on_error(result)
    }

    fn try_write_whole(
        &mut self,
        wanted: &[(P, AllowRule)],
        screen: &ScreenBits,
    ) -> Result<ApplyReport> {
        let changes_at_least = |count: usize| {
            merge(&self.held, wanted)
                .nth(count.saturating_sub(1))
                .is_some()
        };
        let batched = changes_at_least(self.batching.from);
        let mut writes = Writes::new(&mut self.maps, self.slot, &mut self.batching);
        writes.batched = batched;
        let mut report = ApplyReport::default();
        for change in merge(&self.held, wanted) {
            if let Change::Remove(net) = change {
                writes.remove(self.placement.take(net), net)?;
                report.removed += 1;
            }
        }
        writes.flush()?;
        for change in merge(&self.held, wanted) {
            if let Change::Upsert { net, rule, listed } = change {
                writes.insert(self.placement.place(net, listed), net, rule)?;
                report.added += 1;
            }
        }
        writes.flush()?;
        self.maps.write_screen(screen);
        // In place: the mirror's memory serves every list of about its size.
        self.held.clear();
        self.held.extend(wanted.iter().copied().map(Held::new));
        Ok(report)
    }

    /// Brings the prefixes inside `region` to `wanted` (all inside it) in a slot packets
    /// may be judged by. Screen bits are set before the prefixes that need them; then
    /// `upsert` (new prefixes, or new rules) before `remove`, each longest prefix first,
    /// so a source's longest match moves from its old prefix and rule to its new one
    /// without passing through a shorter prefix that is about to be replaced or has
    /// already gone.
    pub fn write_region(&mut self, region: &P, wanted: &[(P, AllowRule)]) -> Result<ApplyReport> {
        let result = self.try_write_region(region, wanted);
        self.resynced_on_error(result)
    }

    fn try_write_region(&mut self, region: &P, wanted: &[(P, AllowRule)]) -> Result<ApplyReport> {
        let start = self.held.partition_point(|held| held.net < *region);
        let len = self.held[start..]
            .iter()
            .take_while(|held| region.covers(&held.net))
            .count();
        let range = start..start + len;
        let mut upsert = Vec::new();
        let mut remove = Vec::new();
        for change in merge(&self.held[range.clone()], wanted) {
            match change {
                Change::Upsert { net, rule, listed } => upsert.push((net, rule, listed)),
                Change::Remove(net) => remove.push(net),
            }
        }
        for (net, _, _) in &upsert {
            self.maps.screen(*net);
        }
        upsert.sort_by_key(|(net, _, _)| std::cmp::Reverse(net.len()));
        remove.sort_by_key(|net| std::cmp::Reverse(net.len()));
        let mut writes = Writes::new(&mut self.maps, self.slot, &mut self.batching);
        writes.batched = upsert.len() + remove.len() >= writes.batching.from;
        for (net, rule, listed) in &upsert {
            writes.insert(self.placement.place(*net, *listed), *net, *rule)?;
        }
        writes.flush()?;
        for net in &remove {
            writes.remove(self.placement.take(*net), *net)?;
        }
        writes.flush()?;
        self.held
            .splice(range, wanted.iter().copied().map(Held::new));
        Ok(ApplyReport {
            added: upsert.len(),
            removed: remove.len(),
            ..ApplyReport::default()
        })
    }
}

/// One difference between what a slot holds and what it should.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change<P> {
    /// `net` is new, or has a new rule (`listed`: the slot holds it already).
    Upsert {
        net: P,
        rule: AllowRule,
        listed: bool,
    },
    Remove(P),
}

/// The changes that turn `held` into `wanted`, in prefix order: one linear walk of the
/// two sorted sequences together.
fn merge<'a, P: Ord + Copy>(
    held: &'a [Held<P>],
    wanted: &'a [(P, AllowRule)],
) -> impl Iterator<Item = Change<P>> + 'a {
    use std::cmp::Ordering;
    let mut held = held.iter().peekable();
    let mut wanted = wanted.iter().peekable();
    std::iter::from_fn(move || loop {
        let order = match (held.peek(), wanted.peek()) {
            (None, None) => return None,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(old), Some((net, _))) => old.net.cmp(net),
        };
        match order {
            Ordering::Less => return held.next().map(|old| Change::Remove(old.net)),
            Ordering::Greater => {
                return wanted.next().map(|&(net, rule)| Change::Upsert {
                    net,
                    rule,
                    listed: false,
                })
            }
            Ordering::Equal => {
                let (old, &(net, rule)) = (held.next()?, wanted.next()?);
                if old.rule() != rule {
                    return Some(Change::Upsert {
                        net,
                        rule,
                        listed: true,
                    });
                }
            }
        }
    })
}

/// The prefixes to write (new, or with a new rule) and to remove to turn `current` into
/// `wanted`; both sorted by prefix. (The writers walk [`merge`] instead.)
#[cfg(test)]
pub(super) fn diff<N: Ord + Copy>(
    current: &[(N, AllowRule)],
    wanted: &[(N, AllowRule)],
) -> (Vec<(N, AllowRule)>, Vec<N>) {
    let current: Vec<Held<N>> = current.iter().copied().map(Held::new).collect();
    let (mut upsert, mut remove) = (Vec::new(), Vec::new());
    for change in merge(&current, wanted) {
        match change {
            Change::Upsert { net, rule, .. } => upsert.push((net, rule)),
            Change::Remove(net) => remove.push(net),
        }
    }
    (upsert, remove)
}

/// The writes into one family's maps of a slot: made one by one, or gathered per map and
/// sent in batches of [`Batching::chunk`].
struct Writes<'a, P, M> {
    maps: &'a mut M,
    slot: usize,
    batching: &'a mut Batching,
    batched: bool,
    inserts: [Vec<(P, AllowRule)>; 2],
    removes: [Vec<P>; 2],
}

/// Gathered writes by map, in the order they are sent: the exact-host hash first, as its
/// hosts are the longest prefixes there are (which in-place writes rely on).
const PLACES: [Place; 2] = [Place::Exact, Place::Trie];

impl<'a, P: Prefix, M: SlotMaps<P>> Writes<'a, P, M> {
    fn new(maps: &'a mut M, slot: usize, batching: &'a mut Batching) -> Self {
        Writes {
            maps,
            slot,
            batching,
            batched: false,
            inserts: [Vec::new(), Vec::new()],
            removes: [Vec::new(), Vec::new()],
        }
    }

    fn insert(&mut self, place: Place, net: P, rule: AllowRule) -> Result<()> {
        if !self.batched {
            return self.insert_one(place, net, rule);
        }
        self.inserts[place as usize].push((net, rule));
        if self.inserts[place as usize].len() >= self.batching.chunk {
            self.flush()?;
        }
        Ok(())
    }

    fn remove(&mut self, place: Place, net: P) -> Result<()> {
        if !self.batched {
            return self.remove_one(place, net);
        }
        self.removes[place as usize].push(net);
        if self.removes[place as usize].len() >= self.batching.chunk {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends what is gathered, every map's, in [`PLACES`] order: a full buffer flushes
    /// them all, so no write overtakes one gathered before it in another map.
    fn flush(&mut self) -> Result<()> {
        for place in PLACES {
            let inserts = std::mem::take(&mut self.inserts[place as usize]);
            self.insert_all(place, &inserts)?;
            let removes = std::mem::take(&mut self.removes[place as usize]);
            self.remove_all(place, &removes)?;
            // The buffers are kept for the next chunk.
            self.inserts[place as usize] = reuse(inserts);
            self.removes[place as usize] = reuse(removes);
        }
        Ok(())
    }

    fn insert_all(&mut self, place: Place, entries: &[(P, AllowRule)]) -> Result<()> {
        let mut rest = entries;
        while !rest.is_empty() {
            if *self.batching.refused(place) {
                for &(net, rule) in rest {
                    self.insert_one(place, net, rule)?;
                }
                return Ok(());
            }
            let chunk = &rest[..rest.len().min(self.batching.chunk.max(1))];
            match self.maps.insert_batch(place, chunk) {
                Ok(()) => rest = &rest[chunk.len()..],
                Err(BatchError::Unsupported) => *self.batching.refused(place) = true,
                Err(BatchError::Stopped { done, error }) => {
                    let Some(&(net, rule)) = chunk.get(done) else {
                        return Err(kernel_error(format!(
                            "adding {} prefixes to slot {}",
                            chunk.len(),
                            self.slot
                        ))(error));
                    };
                    // Written alone, the refused element is reported as any single
                    // write is (or goes in, if what stopped the batch has passed).
                    self.insert_one(place, net, rule)?;
                    rest = &rest[done + 1..];
                }
            }
        }
        Ok(())
    }

    fn remove_all(&mut self, place: Place, nets: &[P]) -> Result<()> {
        let mut rest = nets;
        while !rest.is_empty() {
            if *self.batching.refused(place) {
                for &net in rest {
                    self.remove_one(place, net)?;
                }
                return Ok(());
            }
            let chunk = &rest[..rest.len().min(self.batching.chunk.max(1))];
            match self.maps.remove_batch(place, chunk) {
                Ok(()) => rest = &rest[chunk.len()..],
                Err(BatchError::Unsupported) => *self.batching.refused(place) = true,
                Err(BatchError::Stopped { done, error }) => {
                    let Some(&net) = chunk.get(done) else {
                        return Err(kernel_error(format!(
                            "removing {} prefixes from slot {}",
                            chunk.len(),
                            self.slot
                        ))(error));
                    };
                    self.remove_one(place, net)?;
                    rest = &rest[done + 1..];
                }
            }
        }
        Ok(())
    }

    fn insert_one(&mut self, place: Place, net: P, rule: AllowRule) -> Result<()> {
        self.maps
            .insert(place, net, rule)
            .map_err(kernel_error(format!("adding {net} to slot {}", self.slot)))
    }

    fn remove_one(&mut self, place: Place, net: P) -> Result<()> {
        self.maps.remove(place, net).map_err(kernel_error(format!(
            "removing {net} from slot {}",
            self.slot
        )))
    }
}

fn reuse<T>(mut buffer: Vec<T>) -> Vec<T> {
    buffer.clear();
    buffer
}
