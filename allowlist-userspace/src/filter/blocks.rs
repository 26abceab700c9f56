//! Counters per interface (`allowlistctl stats --interface`): the program counts each
//! packet once, in its interface's block of the counters, which it finds by interface
//! index in `IFINDEX_BLOCKS`. The daemon gives each interface a block before it attaches
//! there, and a daemon taking over reads the blocks back, so an interface keeps its
//! counts across restarts. Totals are the sum of every block.

use std::collections::BTreeMap;

use allowlist_common::{Counter, Reason, COUNTER_BLOCKS, COUNTER_SLOTS, MAX_COUNTED_IFINDEX};
use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues};
use tracing::warn;

use super::error::{io_error, kernel_error, Result};

/// Counters summed over CPUs, by reason.
pub type Counters = BTreeMap<&'static str, Counter>;

/// Which block each attached interface counts in.
#[derive(Debug, Default)]
pub(super) struct CounterBlocks {
    of: BTreeMap<String, u32>,
}

impl CounterBlocks {
    /// The blocks of the interfaces a previous daemon attached (by their pins).
    pub fn read_back(ifindex_blocks: &Array<MapData, u32>, pinned: &[String]) -> Self {
        let mut of = BTreeMap::new();
        for interface in pinned {
            let Some(ifindex) = ifindex_of(interface) else {
                continue;
            };
            if let Ok(block) = ifindex_blocks.get(&ifindex, 0) {
                if block != 0 && block < COUNTER_BLOCKS {
                    of.insert(interface.clone(), block);
                }
            }
        }
        CounterBlocks { of }
    }

    /// Gives `interface` a block (keeping the one it has) and points its interface index
    /// at it, before the program runs there. A block another interface used before is
    /// emptied into block 0 first, so no interface inherits another's counts; no program
    /// counts in a block no interface holds, so nothing is lost meanwhile. With every
    /// block taken, or an interface index beyond the map, the interface counts in block 0
    /// with the others no block holds, and the log says so.
    pub fn claim(
        &mut self,
        interface: &str,
        ifindex_blocks: &mut Array<MapData, u32>,
        counters: &mut PerCpuArray<MapData, Counter>,
    ) -> Result<()> {
        let Some(ifindex) = ifindex_of(interface).filter(|index| *index < MAX_COUNTED_IFINDEX)
        else {
            warn!(
                interface,
                "its interface index is {MAX_COUNTED_IFINDEX} or more: its packets are counted in the totals only, not per interface"
            );
            return Ok(());
        };
        let block = match self.of.get(interface) {
            Some(block) => *block,
            None => {
                let Some(free) =
                    (1..COUNTER_BLOCKS).find(|block| !self.of.values().any(|b| b == block))
                else {
                    warn!(
                        interface,
                        "more than {} interfaces: its packets are counted in the totals only, not per interface",
                        COUNTER_BLOCKS - 1
                    );
                    return Ok(());
                };
                empty_into_block_0(counters, free)?;
                self.of.insert(interface.to_string(), free);
                free
            }
        };
        ifindex_blocks
            .set(ifindex, block, 0)
            .map_err(kernel_error(format!("giving {interface} its counters")))
    }

    /// Forgets a detached interface's block; its counts stay in the totals until another
    /// interface takes the block.
    pub fn release(&mut self, interface: &str) {
        self.of.remove(interface);
    }

    /// Every reason's counters summed over CPUs and blocks.
    pub fn totals(counters: &PerCpuArray<MapData, Counter>) -> Result<Counters> {
        let mut totals = Counters::new();
        for block in 0..COUNTER_BLOCKS {
            add_block(&mut totals, counters, block)?;
        }
        Ok(totals)
    }

    /// Each attached interface's counters, by name.
    pub fn per_interface(
        &self,
        counters: &PerCpuArray<MapData, Counter>,
    ) -> Result<BTreeMap<String, Counters>> {
        let mut interfaces = BTreeMap::new();
        for (interface, block) in &self.of {
            let mut of_interface = Counters::new();
            add_block(&mut of_interface, counters, *block)?;
            interfaces.insert(interface.clone(), of_interface);
        }
        Ok(interfaces)
    }
}

fn ifindex_of(interface: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(interface).ok()
}

fn add_block(
    sums: &mut Counters,
    counters: &PerCpuArray<MapData, Counter>,
    block: u32,
) -> Result<()> {
    for reason in Reason::ALL {
        let per_cpu = counters
            .get(&(block * COUNTER_SLOTS + reason as u32), 0)
            .map_err(kernel_error("reading counters"))?;
        let sum = sums.entry(reason.name()).or_default();
        for cpu in per_cpu.iter() {
            add_to(sum, cpu);
        }
    }
    Ok(())
}

fn empty_into_block_0(counters: &mut PerCpuArray<MapData, Counter>, block: u32) -> Result<()> {
    for slot in 0..COUNTER_SLOTS {
        let index = block * COUNTER_SLOTS + slot;
        let left = counters
            .get(&index, 0)
            .map_err(kernel_error("reading counters"))?;
        if left.iter().all(|cpu| *cpu == Counter::default()) {
            continue;
        }
        let here = counters
            .get(&slot, 0)
            .map_err(kernel_error("reading counters"))?;
        let sum = added_per_cpu(here.iter(), left.iter());
        let zeros = vec![Counter::default(); sum.len()];
        let per_cpu = |values| {
            PerCpuValues::try_from(values).map_err(io_error("collecting per-CPU counters"))
        };
        counters
            .set(slot, per_cpu(sum)?, 0)
            .map_err(kernel_error("writing counters"))?;
        counters
            .set(index, per_cpu(zeros)?, 0)
            .map_err(kernel_error("writing counters"))?;
    }
    Ok(())
}

/// Adds `more` to `sum` (saturating: a counter that reached the top stays there).
pub(super) fn add_to(sum: &mut Counter, more: &Counter) {
    sum.packets = sum.packets.saturating_add(more.packets);
    sum.bytes = sum.bytes.saturating_add(more.bytes);
}

/// Two per-CPU sets of counters added CPU by CPU.
pub(super) fn added_per_cpu<'a>(
    a: impl IntoIterator<Item = &'a Counter>,
    b: impl IntoIterator<Item = &'a Counter>,
) -> Vec<Counter> {
    a.into_iter()
        .zip(b)
        .map(|(a, b)| {
            let mut sum = *a;
            add_to(&mut sum, b);
            sum
        })
        .collect()
}
