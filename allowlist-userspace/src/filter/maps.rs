//! The kernel's maps as the filter holds them: taken from the loaded object, each slot
//! read back so that a daemon taking over continues by difference, and each family's
//! lookups behind [`SlotMaps`].

use allowlist_common::MAP_IFINDEX_BLOCKS;
use allowlist_common::MAP_REMOTES;
use allowlist_common::{
    AllowRule, Control, Counter, FlowKey, FlowState, LayoutStamp, PortSet, Revert, MAP_CONTROL,
    MAP_COUNTERS, MAP_FLOWS, MAP_LAYOUT, MAP_PORT_SETS, MAP_REVERT, SLOTS,
};
use allowlist_common::{DroppedSourceKey, DroppedSourceStats, MAP_DROPPED_SOURCES};
use allowlist_common::{EntryHits, MAP_ENTRY_HITS};
use allowlist_common::{RecentDrop, MAP_RECENT_DROPS};
use aya::{
    maps::{
        lpm_trie::Key, Array, HashMap as BpfHashMap, IterableMap as _, LpmTrie, Map, MapData,
        MapError, PerCpuArray, PerCpuHashMap,
    },
    sys::SyscallError,
    Ebpf,
};
use ipnet::{Ipv4Net, Ipv6Net};

use super::{
    batch,
    error::{io_error, kernel_error, Result},
    family::Prefix,
    remotes::RemoteFilter,
    slots::{BatchError, FamilyPlacement, FamilySlot, Place, SlotMaps},
    FilterError,
};
use crate::screen::{MappedScreen, ScreenBits};

pub(super) struct Maps {
    pub slots: Vec<Slot>,
    pub control: Array<MapData, Control>,
    pub revert: Array<MapData, Revert>,
    pub layout: Array<MapData, LayoutStamp>,
    pub counters: PerCpuArray<MapData, Counter>,
    /// Which block of `counters` each interface counts in; see `blocks.rs`.
    pub ifindex_blocks: Array<MapData, u32>,
    pub flows: BpfHashMap<MapData, FlowKey, FlowState>,
    /// Which remotes `flows` may hold flows with; see `remotes.rs`.
    pub remotes: RemoteFilter,
    /// Dropped sources (`allowlistctl top`); see `dropped.rs`.
    pub dropped: PerCpuHashMap<MapData, DroppedSourceKey, DroppedSourceStats>,
    /// The CPUs' slots of recently dropped sources in front of `dropped`.
    pub recent_drops: PerCpuArray<MapData, RecentDrop>,
    /// What each listed prefix admitted; see `hits.rs`.
    pub hits: PerCpuArray<MapData, EntryHits>,
}

/// One slot: both families' lookups, and the port sets their rules point at.
pub(super) struct Slot {
    pub v4: KernelFamily<Ipv4Net>,
    pub v6: KernelFamily<Ipv6Net>,
    /// What the port set map holds (as far as rules may point), index 0 the public ports.
    pub port_sets: Vec<PortSet>,
    port_set_map: Array<MapData, PortSet>,
    index: usize,
}

pub(super) type KernelFamily<P> = FamilySlot<P, FamilyMaps<P>>;

/// One family's lookup maps in one slot, in the order the program consults them.
pub(super) struct FamilyMaps<P: Prefix> {
    screen: MappedScreen,
    exact: BpfHashMap<MapData, P::Octets, AllowRule>,
    trie: LpmTrie<MapData, P::Octets, AllowRule>,
}

impl<P: Prefix> SlotMaps<P> for FamilyMaps<P> {
    type Error = MapError;

    fn read_all(&self) -> Result<Vec<(P, Place, AllowRule)>, MapError> {
        let mut found = Vec::new();
        for entry in self.trie.iter() {
            let (key, rule) = entry?;
            // The kernel refuses a prefix length past the family's, so every key has one.
            if let Ok(net) = P::from_key(&key) {
                found.push((net, Place::Trie, rule));
            }
        }
        for entry in self.exact.iter() {
            let (octets, rule) = entry?;
            found.push((P::host(octets), Place::Exact, rule));
        }
        Ok(found)
    }

    fn insert(&mut self, place: Place, net: P, rule: AllowRule) -> Result<(), MapError> {
        match place {
            Place::Exact => self.exact.insert(net.octets(), rule, 0),
            Place::Trie => self.trie.insert(&net.key(), rule, 0),
        }
    }

    fn remove(&mut self, place: Place, net: P) -> Result<(), MapError> {
        match place {
            Place::Exact => self.exact.remove(&net.octets()),
            Place::Trie => self.trie.remove(&net.key()),
        }
    }

    fn insert_batch(
        &mut self,
        place: Place,
        entries: &[(P, AllowRule)],
    ) -> Result<(), BatchError<MapError>> {
        let rules: Vec<AllowRule> = entries.iter().map(|(_, rule)| *rule).collect();
        let written = match place {
            Place::Exact => {
                let keys: Vec<P::Octets> = entries.iter().map(|(net, _)| net.octets()).collect();
                batch::update(self.exact.map(), &keys, &rules)
            }
            Place::Trie => {
                let keys: Vec<Key<P::Octets>> = entries.iter().map(|(net, _)| net.key()).collect();
                batch::update(self.trie.map(), &keys, &rules)
            }
        };
        written.map_err(|stopped| batch_error("bpf_map_update_batch", stopped))
    }

    fn remove_batch(&mut self, place: Place, nets: &[P]) -> Result<(), BatchError<MapError>> {
        let removed = match place {
            Place::Exact => {
                let keys: Vec<P::Octets> = nets.iter().map(|net| net.octets()).collect();
                batch::delete(self.exact.map(), &keys)
            }
            Place::Trie => {
                let keys: Vec<Key<P::Octets>> = nets.iter().map(|net| net.key()).collect();
                batch::delete(self.trie.map(), &keys)
            }
        };
        removed.map_err(|stopped| batch_error("bpf_map_delete_batch", stopped))
    }

    fn screen(&mut self, net: P) {
        net.screen_in(&self.screen);
    }

    fn write_screen(&mut self, bits: &ScreenBits) {
        self.screen.write(bits);
    }
}

/// A batch call's refusal, worded as aya words a single call's.
fn batch_error(call: &'static str, stopped: batch::Stopped) -> BatchError<MapError> {
    if stopped.unsupported() {
        return BatchError::Unsupported;
    }
    BatchError::Stopped {
        done: stopped.done,
        error: MapError::SyscallError(SyscallError {
            call,
            io_error: stopped.error,
        }),
    }
}

impl Maps {
    /// Takes every map out of the loaded object, reading back what each slot holds.
    pub fn take(ebpf: &mut Ebpf) -> Result<Maps> {
        let mut take = |name: &str| {
            ebpf.take_map(name).ok_or_else(|| FilterError::Kernel {
                context: "opening maps".into(),
                message: format!("the program has no map {name}"),
            })
        };
        let mut slots = Vec::with_capacity(SLOTS);
        for (index, name) in MAP_PORT_SETS.into_iter().enumerate() {
            slots.push(Slot {
                v4: take_family(&mut take, index)?,
                v6: take_family(&mut take, index)?,
                // Rewritten whole on the next apply.
                port_sets: Vec::new(),
                port_set_map: Array::try_from(take(name)?).map_err(kernel_error(name))?,
                index,
            });
        }
        Ok(Maps {
            slots,
            flows: BpfHashMap::try_from(take(MAP_FLOWS)?).map_err(kernel_error(MAP_FLOWS))?,
            remotes: RemoteFilter::map(take(MAP_REMOTES)?)?,
            control: Array::try_from(take(MAP_CONTROL)?).map_err(kernel_error(MAP_CONTROL))?,
            revert: Array::try_from(take(MAP_REVERT)?).map_err(kernel_error(MAP_REVERT))?,
            layout: Array::try_from(take(MAP_LAYOUT)?).map_err(kernel_error(MAP_LAYOUT))?,
            counters: PerCpuArray::try_from(take(MAP_COUNTERS)?)
                .map_err(kernel_error(MAP_COUNTERS))?,
            ifindex_blocks: Array::try_from(take(MAP_IFINDEX_BLOCKS)?)
                .map_err(kernel_error(MAP_IFINDEX_BLOCKS))?,
            dropped: PerCpuHashMap::try_from(take(MAP_DROPPED_SOURCES)?)
                .map_err(kernel_error(MAP_DROPPED_SOURCES))?,
            recent_drops: PerCpuArray::try_from(take(MAP_RECENT_DROPS)?)
                .map_err(kernel_error(MAP_RECENT_DROPS))?,
            hits: PerCpuArray::try_from(take(MAP_ENTRY_HITS)?)
                .map_err(kernel_error(MAP_ENTRY_HITS))?,
        })
    }
}

fn take_family<P: Prefix>(
    take: &mut impl FnMut(&str) -> Result<Map>,
    slot: usize,
) -> Result<KernelFamily<P>> {
    let (screen, exact, trie) = (
        P::SCREEN_MAPS[slot],
        P::EXACT_MAPS[slot],
        P::TRIE_MAPS[slot],
    );
    let coarse = P::COARSE_SCREEN_MAPS[slot];
    let maps = FamilyMaps {
        screen: mapped_screen((take(screen)?, screen), (take(coarse)?, coarse))?,
        exact: BpfHashMap::try_from(take(exact)?).map_err(kernel_error(exact))?,
        trie: LpmTrie::try_from(take(trie)?).map_err(kernel_error(trie))?,
    };
    read_back(maps, slot)
}

/// What one family's maps of a slot hold, and which of its hosts overflowed into the
/// trie. (Screens are rewritten with every write, so they need no reading.)
fn read_back<P: Prefix>(maps: FamilyMaps<P>, slot: usize) -> Result<KernelFamily<P>> {
    let mut held = Vec::new();
    let mut placement = FamilyPlacement::new(P::EXACT_CAPACITY as usize);
    let reading = |name: &str| format!("reading {name}");
    for entry in maps.trie.iter() {
        let (key, rule) = entry.map_err(kernel_error(reading(P::TRIE_MAPS[slot])))?;
        let net = P::from_key(&key).map_err(kernel_error(reading(P::TRIE_MAPS[slot])))?;
        placement.found(net, Place::Trie);
        held.push((net, rule));
    }
    for entry in maps.exact.iter() {
        let (octets, rule) = entry.map_err(kernel_error(reading(P::EXACT_MAPS[slot])))?;
        let net = P::host(octets);
        placement.found(net, Place::Exact);
        held.push((net, rule));
    }
    Ok(FamilySlot::new(maps, slot, held, placement))
}

fn mapped_screen(screen: (Map, &str), coarse: (Map, &str)) -> Result<MappedScreen> {
    let array = |(map, name): (Map, &str)| match map {
        Map::Array(data) => Ok(data),
        _ => Err(FilterError::Kernel {
            context: format!("opening {name}"),
            message: "not an array map".into(),
        }),
    };
    let names = format!("{} and {}", screen.1, coarse.1);
    MappedScreen::map(array(screen)?, array(coarse)?)
        .map_err(io_error(format!("mapping {names} into memory")))
}

impl Slot {
    /// Writes the port sets that differ from `wanted`; first, as rules may point at them.
    pub fn write_port_sets(&mut self, wanted: &[PortSet]) -> Result<()> {
        for (index, set) in wanted.iter().enumerate() {
            if self.port_sets.get(index) != Some(set) {
                self.write_port_set(index, *set)?;
            }
        }
        self.port_sets = wanted.to_vec();
        Ok(())
    }

    /// Adds a port set after the others.
    pub fn push_port_set(&mut self, set: PortSet) -> Result<()> {
        self.write_port_set(self.port_sets.len(), set)?;
        self.port_sets.push(set);
        Ok(())
    }

    fn write_port_set(&mut self, index: usize, set: PortSet) -> Result<()> {
        self.port_set_map
            .set(index as u32, set, 0)
            .map_err(kernel_error(format!(
                "writing port set {index} of slot {}",
                self.index
            )))
    }
}
