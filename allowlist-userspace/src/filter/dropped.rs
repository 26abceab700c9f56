//! Dropped sources, for `allowlistctl top` and `check`: the kernel's LRU of sources the
//! program dropped (or would have, in monitor mode), folded over CPUs and put on the
//! wall clock.
//!
//! The map's capacity comes from the config (`dropped_sources`). The kernel fixes a
//! map's capacity when it creates it, so a pinned map of another capacity is replaced
//! when the daemon loads its program: what it recorded is lost, the list is not.

use std::{collections::BTreeMap, fs, io, net::IpAddr, path::Path};

use allowlist_common::{
    DroppedSourceKey, DroppedSourceStats, Reason, MAP_DROPPED_SOURCES, MAX_DROPPED_SOURCES,
};
use allowlist_common::{RecentDrop, MAP_RECENT_DROPS, RECENT_DROP_SLOTS};
use aya::maps::{MapData, MapInfo, PerCpuArray, PerCpuHashMap};
use tracing::info;

use super::error::{io_error, kernel_error, Result};
use super::ticks::Reading;

/// A source the program dropped (or would have), on one interface, for one reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedSource {
    pub source: IpAddr,
    pub ifindex: u32,
    pub reason: Reason,
    pub packets: u64,
    pub bytes: u64,
    /// Unix seconds of the last packet.
    pub last_seen: u64,
}

/// The kernel's capacity for a configured one: 0 (recording off) still needs a map.
pub(super) fn map_capacity(configured: u32) -> u32 {
    configured.clamp(1, MAX_DROPPED_SOURCES)
}

/// Removes a pinned map whose capacity is not `capacity`, so that loading the program
/// creates it anew at that size. The program the links run keeps the old map until the
/// new program replaces it, so recording goes on meanwhile.
pub(super) fn resize_pinned(maps_dir: &Path, capacity: u32) -> Result<()> {
    let path = maps_dir.join(MAP_DROPPED_SOURCES);
    let info = match MapInfo::from_pin(&path) {
        Ok(info) => info,
        // Not pinned yet (or unreadable, which loading will report).
        Err(_) => return Ok(()),
    };
    if info.max_entries() == capacity {
        return Ok(());
    }
    info!(
        from = info.max_entries(),
        to = capacity,
        "dropped_sources changed: the table of dropped sources starts afresh at its new size"
    );
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error(format!("removing {}", path.display()))(error)),
    }
}

/// Every source in the table and in the CPUs' recent slots, each added up over both and
/// over CPUs. Entries the kernel evicts while this reads are skipped; one met twice in
/// the table (the kernel restarts a walk whose key vanished) is counted once. A source
/// moving from a slot into the table while this reads may be missed or counted twice
/// for that moment.
pub(super) fn read_all(
    map: &PerCpuHashMap<MapData, DroppedSourceKey, DroppedSourceStats>,
    recent: &PerCpuArray<MapData, RecentDrop>,
    capacity: u32,
    now: &Reading,
) -> Result<Vec<DroppedSource>> {
    let mut found = BTreeMap::new();
    // A walk restarted by evictions could go on as long as traffic does.
    let most = (capacity as usize).saturating_mul(2).max(64);
    for (steps, entry) in map.iter().enumerate() {
        if steps >= most {
            break;
        }
        let (key, per_cpu) =
            entry.map_err(kernel_error(format!("reading {MAP_DROPPED_SOURCES}")))?;
        let folded = per_cpu
            .iter()
            .fold(DroppedSourceStats::default(), |sum, cpu| {
                DroppedSourceStats {
                    packets: sum.packets.saturating_add(cpu.packets),
                    bytes: sum.bytes.saturating_add(cpu.bytes),
                    last_seen_jiffies: sum.last_seen_jiffies.max(cpu.last_seen_jiffies),
                }
            });
        found.insert(key, folded);
    }
    for index in 0..RECENT_DROP_SLOTS {
        let per_cpu = recent
            .get(&index, 0)
            .map_err(kernel_error(format!("reading {MAP_RECENT_DROPS}")))?;
        for slot in per_cpu.iter().filter(|slot| slot.stats.packets != 0) {
            let sum = found.entry(slot.key).or_default();
            sum.packets = sum.packets.saturating_add(slot.stats.packets);
            sum.bytes = sum.bytes.saturating_add(slot.stats.bytes);
            sum.last_seen_jiffies = sum.last_seen_jiffies.max(slot.stats.last_seen_jiffies);
        }
    }
    Ok(found
        .into_iter()
        .filter_map(|(key, stats)| {
            let reason = Reason::ALL
                .into_iter()
                .find(|reason| *reason as u32 == key.reason)?;
            Some(DroppedSource {
                source: crate::sockets::unmap(IpAddr::from(key.source)),
                ifindex: key.ifindex,
                reason,
                packets: stats.packets,
                bytes: stats.bytes,
                last_seen: now.wall_clock_of(stats.last_seen_jiffies),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_off_still_makes_a_map_and_the_bound_holds() {
        assert_eq!(map_capacity(0), 1);
        assert_eq!(map_capacity(4_096), 4_096);
        assert_eq!(map_capacity(u32::MAX), MAX_DROPPED_SOURCES);
    }
}
