//! Map layouts on bpffs and moving between them, which is what an upgrade is.
//!
//! A daemon only ever opens maps pinned in its own layout
//! ([`allowlist_common::LAYOUT_VERSION`]), in a directory of their own beside any other
//! layout's. Finding the interfaces run by an older layout, it fills its own maps from
//! the saved list and carries the counters and flows over (where their layout is the
//! same), then swaps its program into each interface's links atomically, so every packet
//! meets the old filter or the new one; only then does it stamp its maps live and remove
//! the old ones. Each step can be cut short by a crash: until the stamp says live, the
//! next start of this version redoes the move, and a start of the older version takes
//! its interfaces back and discards the half-built maps; once live, an older version
//! refuses to touch what it cannot read.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use allowlist_common::{
    Counter, FlowKey, FlowState, FragmentKey, LayoutStamp, Revert, COUNTER_BLOCKS, COUNTER_SLOTS,
    LAYOUT_BUILDING, LAYOUT_LIVE, LAYOUT_VERSION, MAP_CARRIED, MAP_COUNTERS, MAP_FLOWS,
    MAP_FRAGMENTS, MAP_LAYOUT, MAP_REVERT,
};
use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuValues},
    Pod,
};
use tracing::{info, warn};

use super::{
    blocks::{add_to, added_per_cpu},
    error::{io_error, kernel_error, Result},
    pins::{layout_of_dir_name, Pins},
    FilterError,
};

/// Who writes this version's maps, as its stamp says.
pub const WRITER: &str = concat!("allowlistd ", env!("CARGO_PKG_VERSION"));

/// What is pinned under a pin path, as far as layouts go.
#[derive(Debug, Default)]
pub(super) struct Survey {
    /// This version's maps were pinned and live: a plain take-over.
    pub ours_live: bool,
    /// This version's maps were pinned but not yet live: an upgrade a crash (or a failed
    /// start) cut short, which this start resumes.
    pub ours_building: bool,
    /// Tables were carried over just before the first interface switched (see
    /// [`carry_tables`]).
    pub tables_carried: bool,
    /// The layout the interfaces run now, when it is an older one: what to carry
    /// counters and flows over from.
    pub source: Option<OldLayout>,
    /// What to remove once every interface runs this version's program: older layouts,
    /// and a newer one a crash left half-built.
    pub retiring: Vec<PathBuf>,
}

#[derive(Debug)]
pub(super) struct OldLayout {
    pub version: u32,
    pub maps: PathBuf,
    pub writer: String,
    /// Its kernel-side revert of an unconfirmed `--confirm`, if that fired: what the
    /// kernel's clock decided while no daemon of this version ran.
    pub reverted_to: Option<u32>,
}

/// One layout found on bpffs.
struct Found {
    version: u32,
    /// The directory holding its `program` and `maps`.
    dir: PathBuf,
    live: bool,
    writer: String,
}

/// Looks at what is pinned and decides what a start of this version does with it.
/// Refuses, changing nothing, when the interfaces run a newer layout than this one.
pub(super) fn survey(pins: &Pins) -> Result<Survey> {
    let mut survey = Survey::default();
    let mut found = find_layouts(pins)?;
    found.sort_by_key(|layout| layout.version);
    for layout in found {
        let retire = |survey: &mut Survey| {
            survey.retiring.extend(layout_paths(pins, layout.version));
        };
        if layout.version == LAYOUT_VERSION {
            survey.ours_live = layout.live;
            survey.ours_building = !layout.live;
        } else if layout.version > LAYOUT_VERSION {
            if layout.live {
                return Err(FilterError::NewerLayout {
                    pin_path: pins.root().display().to_string(),
                    version: layout.version,
                    writer: layout.writer,
                });
            }
            // A newer version's upgrade that a crash cut short: its interfaces are
            // taken back below, and its maps discarded.
            retire(&mut survey);
        } else {
            if layout.live {
                let maps = layout.dir.join("maps");
                survey.source = Some(OldLayout {
                    version: layout.version,
                    reverted_to: read_fired_revert(&maps.join(MAP_REVERT)),
                    maps,
                    writer: layout.writer.clone(),
                });
            }
            retire(&mut survey);
        }
    }
    Ok(survey)
}

/// What of `version` is removed when it retires: its directory, or for layout 1, which
/// shares the pin path's root with the links, just its program and maps.
fn layout_paths(pins: &Pins, version: u32) -> Vec<PathBuf> {
    let dir = pins.layout_dir(version);
    if version == 1 {
        vec![dir.join("program"), dir.join("maps")]
    } else {
        vec![dir]
    }
}

fn find_layouts(pins: &Pins) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    let root = pins.root();
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(error) => return Err(io_error(format!("listing {}", root.display()))(error)),
    };
    for entry in entries {
        let name = entry
            .map_err(io_error(format!("listing {}", root.display())))?
            .file_name();
        let name = name.to_string_lossy();
        if name == "maps" || (name == "program" && !root.join("maps").exists()) {
            // Layout 1 had no stamp. Its maps are what the interfaces run (its program's
            // pin may be missing after a crash); a program pinned without them is a
            // leftover to remove.
            found.push(Found {
                version: 1,
                dir: root.to_path_buf(),
                live: name == "maps",
                writer: "an allowlistd from before layout stamps".into(),
            });
        } else if let Some(version) = layout_of_dir_name(&name) {
            let dir = pins.layout_dir(version);
            let stamp = read_stamp(&dir.join("maps").join(MAP_LAYOUT))?;
            found.push(Found {
                version,
                live: stamp.state == LAYOUT_LIVE && stamp.version == version,
                writer: writer_of(&stamp),
                dir,
            });
        }
    }
    Ok(found)
}

/// The stamp at `path`; a directory without one (a crash before it was made) is building.
fn read_stamp(path: &Path) -> Result<LayoutStamp> {
    if !path.exists() {
        return Ok(LayoutStamp::default());
    }
    let stamps: Array<MapData, LayoutStamp> = open_pinned(path)?;
    stamps
        .get(&0, 0)
        .map_err(kernel_error(format!("reading {}", path.display())))
}

/// The mode an older layout's kernel reverted to, if its revert fired. Unreadable (a
/// layout without one, say) counts as not fired: the wall clock decides then.
fn read_fired_revert(path: &Path) -> Option<u32> {
    let reverts: Array<MapData, Revert> = open_pinned(path).ok()?;
    let revert = reverts.get(&0, 0).ok()?;
    (revert.fired != 0).then_some(revert.mode)
}

fn writer_of(stamp: &LayoutStamp) -> String {
    let end = stamp
        .writer
        .iter()
        .position(|byte| *byte == 0)
        .unwrap_or(stamp.writer.len());
    match std::str::from_utf8(&stamp.writer[..end]) {
        Ok("") | Err(_) => format!("an unknown allowlistd (layout {})", stamp.version),
        Ok(writer) => writer.to_string(),
    }
}

/// Stamps this version's maps: building while they are filled, live once every
/// interface runs the program that uses them.
pub(super) fn stamp(stamps: &mut Array<MapData, LayoutStamp>, state: u32) -> Result<()> {
    let mut stamp = LayoutStamp {
        version: LAYOUT_VERSION,
        state,
        ..LayoutStamp::default()
    };
    let writer = WRITER.as_bytes();
    let len = writer.len().min(stamp.writer.len());
    stamp.writer[..len].copy_from_slice(&writer[..len]);
    stamps
        .set(0, stamp, 0)
        .map_err(kernel_error("writing the layout stamp"))
}

pub(super) const BUILDING: u32 = LAYOUT_BUILDING;
pub(super) const LIVE: u32 = LAYOUT_LIVE;

/// First half of carrying what the old layout counted over into this version's fresh
/// maps, before any interface runs the new program: the counters, summed over the old
/// blocks and slot by slot (a reason keeps its value across versions), into block 0 (what
/// no interface owns: the old layout did not count per interface in this one's blocks) and this layout's counters and the
/// record of what was carried. A start that resumes a cut-short upgrade leaves both
/// alone: its counters already hold what was carried plus what the new program counted.
/// A map whose layout changed is not carried over, and the log says so.
pub(super) fn carry_counters_before_switch(source: &OldLayout, ours: &Path, resuming: bool) {
    if resuming {
        return;
    }
    let copied = old_totals(&source.maps.join(MAP_COUNTERS)).and_then(|totals| {
        copy_counters(&totals, &ours.join(MAP_COUNTERS))
            .and_then(|slots| copy_counters(&totals, &ours.join(MAP_CARRIED)).map(|_| slots))
    });
    match copied {
        Ok(slots) => info!(slots, from = source.version, "carried the counters over"),
        Err(error) => {
            warn!(%error, "the counters of layout {} cannot be carried over; they start from zero", source.version)
        }
    }
}

/// Second half, once every interface runs the new program: adds what the old program
/// counted since the first half (it judged packets until its last interface switched),
/// and copies the flows it recorded meanwhile. The record of what was carried is brought
/// up to date first, so a crash in between loses those packets from the count rather than
/// counting them twice. A packet the new program counts on the same CPU between this
/// read and write is lost from the count: a window of microseconds.
pub(super) fn carry_over_after_switch(
    source: &OldLayout,
    ours: &Path,
    before_flow_copied: &dyn Fn(&FlowKey),
) {
    let counted = old_totals(&source.maps.join(MAP_COUNTERS))
        .and_then(|now| add_counted_since(&now, &ours.join(MAP_CARRIED), &ours.join(MAP_COUNTERS)));
    if let Err(error) = counted {
        warn!(%error, "the packets the old program counted during the switch are not carried over");
    }
    carry_tables(source, ours, before_flow_copied);
}

/// Copies the old program's flow and fragment tables into this version's: just before the
/// first interface switches (so what the host opened while the new maps were filled is
/// there), and again after the last. `before_flow_copied` sees each flow before this
/// version's table holds it (for the remote filter).
pub(super) fn carry_tables(source: &OldLayout, ours: &Path, before_flow_copied: &dyn Fn(&FlowKey)) {
    let flows = copy_newest::<FlowKey>(
        &source.maps.join(MAP_FLOWS),
        &ours.join(MAP_FLOWS),
        before_flow_copied,
    );
    let fragments = copy_newest::<FragmentKey>(
        &source.maps.join(MAP_FRAGMENTS),
        &ours.join(MAP_FRAGMENTS),
        &|_| {},
    );
    for (name, copied) in [(MAP_FLOWS, flows), (MAP_FRAGMENTS, fragments)] {
        match copied {
            Ok(entries) => info!(map = name, entries, "carried entries over"),
            Err(error) => {
                warn!(map = name, %error, "not carried over from layout {}", source.version)
            }
        }
    }
}

/// What an older layout's counters hold, per reason slot and CPU, summed over its
/// blocks: layouts up to 2 had one block of 32 (48 in test builds), later ones
/// [`COUNTER_BLOCKS`] (a number that never changes, so any layout's block size is its
/// length divided by it). The map's length says which, whatever the directory's stamp
/// claims: a single block is never a multiple of [`COUNTER_BLOCKS`] long.
fn old_totals(old: &Path) -> Result<Vec<Vec<Counter>>> {
    let old: PerCpuArray<MapData, Counter> = open_pinned(old)?;
    let blocks = if old.len().is_multiple_of(COUNTER_BLOCKS) {
        COUNTER_BLOCKS
    } else {
        1
    };
    let block_size = (old.len() / blocks).max(1);
    let mut totals: Vec<Vec<Counter>> = Vec::new();
    for index in 0..old.len() {
        let values = old
            .get(&index, 0)
            .map_err(kernel_error("reading the old counters"))?;
        let slot = (index % block_size) as usize;
        if totals.len() <= slot {
            totals.resize(slot + 1, Vec::new());
        }
        let sum = &mut totals[slot];
        sum.resize(values.iter().count().max(sum.len()), Counter::default());
        for (sum, cpu) in sum.iter_mut().zip(values.iter()) {
            add_to(sum, cpu);
        }
    }
    Ok(totals)
}

/// Writes the older layout's totals into slot by slot of `new` (block 0 of this
/// layout's counters, or the record of what was carried).
fn copy_counters(totals: &[Vec<Counter>], new: &Path) -> Result<usize> {
    let mut new: PerCpuArray<MapData, Counter> = open_pinned(new)?;
    let slots = totals.len().min(COUNTER_SLOTS as usize);
    for (index, per_cpu) in totals.iter().take(slots).enumerate() {
        let per_cpu = PerCpuValues::try_from(per_cpu.clone())
            .map_err(io_error("collecting per-CPU counters"))?;
        new.set(index as u32, per_cpu, 0)
            .map_err(kernel_error("writing the counters"))?;
    }
    Ok(slots)
}

/// Adds to `counters` (block 0) what the old layout counted since `carried` was taken,
/// and moves `carried` up to now (before adding: see [`carry_over_after_switch`]).
fn add_counted_since(now: &[Vec<Counter>], carried: &Path, counters: &Path) -> Result<()> {
    let mut carried: PerCpuArray<MapData, Counter> = open_pinned(carried)?;
    let mut counters: PerCpuArray<MapData, Counter> = open_pinned(counters)?;
    let slots = now.len().min(carried.len() as usize);
    for (index, now) in now.iter().take(slots).enumerate() {
        let index = index as u32;
        let before = carried
            .get(&index, 0)
            .map_err(kernel_error("reading the carried counters"))?;
        let since: Vec<Counter> = now
            .iter()
            .zip(before.iter())
            .map(|(now, before)| Counter {
                packets: now.packets.saturating_sub(before.packets),
                bytes: now.bytes.saturating_sub(before.bytes),
            })
            .collect();
        if since.iter().all(|counted| *counted == Counter::default()) {
            continue;
        }
        let per_cpu = |values: Vec<Counter>| {
            PerCpuValues::try_from(values).map_err(io_error("collecting per-CPU counters"))
        };
        carried
            .set(index, per_cpu(now.clone())?, 0)
            .map_err(kernel_error("writing the carried counters"))?;
        let here = counters
            .get(&index, 0)
            .map_err(kernel_error("reading the counters"))?;
        let sum = added_per_cpu(here.iter(), &since);
        counters
            .set(index, per_cpu(sum)?, 0)
            .map_err(kernel_error("writing the counters"))?;
    }
    Ok(())
}

/// Copies every entry of an LRU table whose copy here is missing or older.
fn copy_newest<K: Pod>(old: &Path, new: &Path, before_copied: &dyn Fn(&K)) -> Result<usize> {
    let old: BpfHashMap<MapData, K, FlowState> = open_pinned(old)?;
    let mut new: BpfHashMap<MapData, K, FlowState> = open_pinned(new)?;
    let mut copied = 0;
    for entry in old.iter() {
        let Ok((key, state)) = entry else {
            // An entry evicted while we iterate; the rest still count.
            continue;
        };
        let newer_here = new
            .get(&key, 0)
            .is_ok_and(|here| here.last_seen_ns >= state.last_seen_ns);
        if !newer_here {
            before_copied(&key);
            new.insert(key, state, 0)
                .map_err(kernel_error("copying a table entry"))?;
            copied += 1;
        }
    }
    Ok(copied)
}

/// Opens a pinned map as `T`, which checks its type and key and value sizes.
fn open_pinned<T: TryFrom<Map, Error = aya::maps::MapError>>(path: &Path) -> Result<T> {
    let context = || format!("opening {}", path.display());
    let data = MapData::from_pin(path).map_err(kernel_error(context()))?;
    let map = Map::from_map_data(data).map_err(kernel_error(context()))?;
    T::try_from(map).map_err(kernel_error(context()))
}

/// Removes what retired layouts left, once no interface runs them.
pub(super) fn remove_retired(retiring: &[PathBuf]) -> Result<()> {
    for path in retiring {
        let removed = if path.is_dir() {
            fs::remove_dir_all(path)
        } else {
            fs::remove_file(path)
        };
        match removed {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error(format!("removing {}", path.display()))(error)),
        }
    }
    Ok(())
}

/// Test builds only (feature `crash-points`): dies as by `kill -9` at the step
/// `ALLOWLIST_CRASH_AT` names, so the tests can show that every step is recoverable.
pub(super) fn crash_point(step: &str) {
    #[cfg(feature = "crash-points")]
    if std::env::var("ALLOWLIST_CRASH_AT").is_ok_and(|wanted| wanted == step) {
        eprintln!("crash point {step}: killing this process");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    #[cfg(not(feature = "crash-points"))]
    let _ = step;
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use allowlist_common::REMOTE_FILTER_BITS;
    use allowlist_common::{
        AllowRule, Control, Counter, DropAdmission, DroppedSourceKey, DroppedSourceStats,
        EntryHits, FlowKey, FlowState, FragmentKey, LayoutStamp, Mode, PortRange, PortSet, Reason,
        Revert, FEATURE_DHCP_CLIENT, FEATURE_PASS_ENCAPSULATED, FEATURE_RECORD_DROPS,
        FEATURE_RETURN_TRAFFIC, FEATURE_REVERT_PENDING, LAYOUT_VERSION, NEXT_TEST_LAYOUT,
        RELEASED_LAYOUT, RULE_ALLOW_ALL, RULE_HIT_SHIFT, RULE_PORTS,
    };
    use allowlist_common::{RecentDrop, COUNTER_BLOCKS, MAX_COUNTED_IFINDEX};
    use allowlist_common::{COARSE_SCREEN_BITS, SCREEN_BITS, SCREEN_BITS_PER_COARSE_BIT};

    use crate::filter::EBPF_OBJECT;

    /// Every layout as recorded: its maps as the object file defines them (name, type, key
    /// and value sizes, capacity, flags) and what their values mean (each kernel-crossing
    /// struct's size and field offsets, each reason's and mode's number, each flag bit).
    /// A change to either is a new layout. The test build's layout is the released one
    /// with more counter slots.
    const RECORDED: &[(u32, &str, &str)] = &[
        (2, MAPS_2, MEANING_2),
        (3, MAPS_3, MEANING_3),
        (4, MAPS_4, MEANING_4),
        (RELEASED_LAYOUT, MAPS_5, MEANING_5),
        (NEXT_TEST_LAYOUT, MAPS_NEXT_TEST, MEANING_5),
    ];

    const MAPS_2: &str = "\
ALLOW_V4_0 type=11 key=8 value=8 entries=2000000 flags=0x1
ALLOW_V4_1 type=11 key=8 value=8 entries=2000000 flags=0x1
ALLOW_V6_0 type=11 key=20 value=8 entries=2000000 flags=0x1
ALLOW_V6_1 type=11 key=20 value=8 entries=2000000 flags=0x1
CARRIED type=6 key=4 value=16 entries=32 flags=0x0
CONTROL type=2 key=4 value=16 entries=1 flags=0x0
COUNTERS type=6 key=4 value=16 entries=32 flags=0x0
DROPPED_SOURCES type=10 key=24 value=24 entries=4096 flags=0x0
DROP_ADMISSION type=6 key=4 value=16 entries=1 flags=0x0
ENTRY_HITS type=6 key=4 value=24 entries=16384 flags=0x0
EXACT_V4_0 type=1 key=4 value=8 entries=1048576 flags=0x1
EXACT_V4_1 type=1 key=4 value=8 entries=1048576 flags=0x1
EXACT_V6_0 type=1 key=16 value=8 entries=262144 flags=0x1
EXACT_V6_1 type=1 key=16 value=8 entries=262144 flags=0x1
FLOWS type=9 key=40 value=8 entries=65536 flags=0x0
FRAGMENTS type=9 key=40 value=8 entries=4096 flags=0x0
LAYOUT type=2 key=4 value=64 entries=1 flags=0x0
PORT_SETS_0 type=2 key=4 value=136 entries=4096 flags=0x0
PORT_SETS_1 type=2 key=4 value=136 entries=4096 flags=0x0
REVERT type=2 key=4 value=16 entries=1 flags=0x0
SCREEN_V4_0 type=2 key=4 value=8 entries=262144 flags=0x400
SCREEN_V4_1 type=2 key=4 value=8 entries=262144 flags=0x400
SCREEN_V6_0 type=2 key=4 value=8 entries=262144 flags=0x400
SCREEN_V6_1 type=2 key=4 value=8 entries=262144 flags=0x400";

    const MAPS_3: &str = "\
ALLOW_V4_0 type=11 key=8 value=8 entries=2000000 flags=0x1
ALLOW_V4_1 type=11 key=8 value=8 entries=2000000 flags=0x1
ALLOW_V6_0 type=11 key=20 value=8 entries=2000000 flags=0x1
ALLOW_V6_1 type=11 key=20 value=8 entries=2000000 flags=0x1
CARRIED type=6 key=4 value=16 entries=32 flags=0x0
CLOCK_PROBE type=2 key=4 value=8 entries=1 flags=0x0
CONTROL type=2 key=4 value=16 entries=1 flags=0x0
COUNTERS type=6 key=4 value=16 entries=2048 flags=0x0
DROPPED_SOURCES type=10 key=24 value=24 entries=4096 flags=0x0
DROP_ADMISSION type=6 key=4 value=16 entries=1 flags=0x0
ENTRY_HITS type=6 key=4 value=24 entries=16384 flags=0x0
EXACT_V4_0 type=1 key=4 value=8 entries=1048576 flags=0x1
EXACT_V4_1 type=1 key=4 value=8 entries=1048576 flags=0x1
EXACT_V6_0 type=1 key=16 value=8 entries=262144 flags=0x1
EXACT_V6_1 type=1 key=16 value=8 entries=262144 flags=0x1
FLOWS type=9 key=40 value=8 entries=65536 flags=0x0
FRAGMENTS type=9 key=40 value=8 entries=4096 flags=0x0
IFINDEX_BLOCKS type=2 key=4 value=4 entries=65536 flags=0x0
LAYOUT type=2 key=4 value=64 entries=1 flags=0x0
PORT_SETS_0 type=2 key=4 value=136 entries=4096 flags=0x0
PORT_SETS_1 type=2 key=4 value=136 entries=4096 flags=0x0
RECENT_DROPS type=6 key=4 value=48 entries=1024 flags=0x0
REVERT type=2 key=4 value=16 entries=1 flags=0x0
SCREEN_V4_0 type=2 key=4 value=8 entries=262144 flags=0x400
SCREEN_V4_1 type=2 key=4 value=8 entries=262144 flags=0x400
SCREEN_V6_0 type=2 key=4 value=8 entries=262144 flags=0x400
SCREEN_V6_1 type=2 key=4 value=8 entries=262144 flags=0x400";

    const MAPS_4: &str = "\
ALLOW_V4_0 type=11 key=8 value=8 entries=2000000 flags=0x1
ALLOW_V4_1 type=11 key=8 value=8 entries=2000000 flags=0x1
ALLOW_V6_0 type=11 key=20 value=8 entries=2000000 flags=0x1
ALLOW_V6_1 type=11 key=20 value=8 entries=2000000 flags=0x1
CARRIED type=6 key=4 value=16 entries=32 flags=0x0
CLOCK_PROBE type=2 key=4 value=8 entries=1 flags=0x0
COARSE_V4_0 type=2 key=4 value=8 entries=16384 flags=0x400
COARSE_V4_1 type=2 key=4 value=8 entries=16384 flags=0x400
COARSE_V6_0 type=2 key=4 value=8 entries=16384 flags=0x400
COARSE_V6_1 type=2 key=4 value=8 entries=16384 flags=0x400
CONTROL type=2 key=4 value=16 entries=1 flags=0x0
COUNTERS type=6 key=4 value=16 entries=2048 flags=0x0
DROPPED_SOURCES type=10 key=24 value=24 entries=4096 flags=0x0
DROP_ADMISSION type=6 key=4 value=16 entries=1 flags=0x0
ENTRY_HITS type=6 key=4 value=24 entries=16384 flags=0x0
EXACT_V4_0 type=1 key=4 value=8 entries=1048576 flags=0x1
EXACT_V4_1 type=1 key=4 value=8 entries=1048576 flags=0x1
EXACT_V6_0 type=1 key=16 value=8 entries=262144 flags=0x1
EXACT_V6_1 type=1 key=16 value=8 entries=262144 flags=0x1
FLOWS type=9 key=40 value=8 entries=65536 flags=0x0
FRAGMENTS type=9 key=40 value=8 entries=4096 flags=0x0
IFINDEX_BLOCKS type=2 key=4 value=4 entries=65536 flags=0x0
LAYOUT type=2 key=4 value=64 entries=1 flags=0x0
PORT_SETS_0 type=2 key=4 value=136 entries=4096 flags=0x0
PORT_SETS_1 type=2 key=4 value=136 entries=4096 flags=0x0
RECENT_DROPS type=6 key=4 value=48 entries=1024 flags=0x0
REVERT type=2 key=4 value=16 entries=1 flags=0x0
SCREEN_V4_0 type=2 key=4 value=8 entries=262144 flags=0x400
SCREEN_V4_1 type=2 key=4 value=8 entries=262144 flags=0x400
SCREEN_V6_0 type=2 key=4 value=8 entries=262144 flags=0x400
SCREEN_V6_1 type=2 key=4 value=8 entries=262144 flags=0x400";

    const MAPS_5: &str = "\
ALLOW_V4_0 type=11 key=8 value=8 entries=2000000 flags=0x1
ALLOW_V4_1 type=11 key=8 value=8 entries=2000000 flags=0x1
ALLOW_V6_0 type=11 key=20 value=8 entries=2000000 flags=0x1
ALLOW_V6_1 type=11 key=20 value=8 entries=2000000 flags=0x1
CARRIED type=6 key=4 value=16 entries=32 flags=0x0
CLOCK_PROBE type=2 key=4 value=8 entries=1 flags=0x0
COARSE_V4_0 type=2 key=4 value=8 entries=16384 flags=0x400
COARSE_V4_1 type=2 key=4 value=8 entries=16384 flags=0x400
COARSE_V6_0 type=2 key=4 value=8 entries=16384 flags=0x400
COARSE_V6_1 type=2 key=4 value=8 entries=16384 flags=0x400
CONTROL type=2 key=4 value=16 entries=1 flags=0x0
COUNTERS type=6 key=4 value=16 entries=2048 flags=0x0
DROPPED_SOURCES type=10 key=24 value=24 entries=4096 flags=0x0
DROP_ADMISSION type=6 key=4 value=16 entries=1 flags=0x0
ENTRY_HITS type=6 key=4 value=24 entries=16384 flags=0x0
EXACT_V4_0 type=1 key=4 value=8 entries=1048576 flags=0x1
EXACT_V4_1 type=1 key=4 value=8 entries=1048576 flags=0x1
EXACT_V6_0 type=1 key=16 value=8 entries=262144 flags=0x1
EXACT_V6_1 type=1 key=16 value=8 entries=262144 flags=0x1
FLOWS type=9 key=40 value=8 entries=65536 flags=0x0
FRAGMENTS type=9 key=40 value=8 entries=4096 flags=0x0
IFINDEX_BLOCKS type=2 key=4 value=4 entries=65536 flags=0x0
LAYOUT type=2 key=4 value=64 entries=1 flags=0x0
PORT_SETS_0 type=2 key=4 value=136 entries=4096 flags=0x0
PORT_SETS_1 type=2 key=4 value=136 entries=4096 flags=0x0
RECENT_DROPS type=6 key=4 value=48 entries=1024 flags=0x0
REMOTES type=2 key=4 value=8 entries=32768 flags=0x400
REVERT type=2 key=4 value=16 entries=1 flags=0x0
SCREEN_V4_0 type=2 key=4 value=8 entries=262144 flags=0x400
SCREEN_V4_1 type=2 key=4 value=8 entries=262144 flags=0x400
SCREEN_V6_0 type=2 key=4 value=8 entries=262144 flags=0x400
SCREEN_V6_1 type=2 key=4 value=8 entries=262144 flags=0x400";

    const MAPS_NEXT_TEST: &str = "\
ALLOW_V4_0 type=11 key=8 value=8 entries=2000000 flags=0x1
ALLOW_V4_1 type=11 key=8 value=8 entries=2000000 flags=0x1
ALLOW_V6_0 type=11 key=20 value=8 entries=2000000 flags=0x1
ALLOW_V6_1 type=11 key=20 value=8 entries=2000000 flags=0x1
CARRIED type=6 key=4 value=16 entries=48 flags=0x0
CLOCK_PROBE type=2 key=4 value=8 entries=1 flags=0x0
COARSE_V4_0 type=2 key=4 value=8 entries=16384 flags=0x400
COARSE_V4_1 type=2 key=4 value=8 entries=16384 flags=0x400
COARSE_V6_0 type=2 key=4 value=8 entries=16384 flags=0x400
COARSE_V6_1 type=2 key=4 value=8 entries=16384 flags=0x400
CONTROL type=2 key=4 value=16 entries=1 flags=0x0
COUNTERS type=6 key=4 value=16 entries=3072 flags=0x0
DROPPED_SOURCES type=10 key=24 value=24 entries=4096 flags=0x0
DROP_ADMISSION type=6 key=4 value=16 entries=1 flags=0x0
ENTRY_HITS type=6 key=4 value=24 entries=16384 flags=0x0
EXACT_V4_0 type=1 key=4 value=8 entries=1048576 flags=0x1
EXACT_V4_1 type=1 key=4 value=8 entries=1048576 flags=0x1
EXACT_V6_0 type=1 key=16 value=8 entries=262144 flags=0x1
EXACT_V6_1 type=1 key=16 value=8 entries=262144 flags=0x1
FLOWS type=9 key=40 value=8 entries=65536 flags=0x0
FRAGMENTS type=9 key=40 value=8 entries=4096 flags=0x0
IFINDEX_BLOCKS type=2 key=4 value=4 entries=65536 flags=0x0
LAYOUT type=2 key=4 value=64 entries=1 flags=0x0
PORT_SETS_0 type=2 key=4 value=136 entries=4096 flags=0x0
PORT_SETS_1 type=2 key=4 value=136 entries=4096 flags=0x0
RECENT_DROPS type=6 key=4 value=48 entries=1024 flags=0x0
REMOTES type=2 key=4 value=8 entries=32768 flags=0x400
REVERT type=2 key=4 value=16 entries=1 flags=0x0
SCREEN_V4_0 type=2 key=4 value=8 entries=262144 flags=0x400
SCREEN_V4_1 type=2 key=4 value=8 entries=262144 flags=0x400
SCREEN_V6_0 type=2 key=4 value=8 entries=262144 flags=0x400
SCREEN_V6_1 type=2 key=4 value=8 entries=262144 flags=0x400";

    const MEANING_2: &str = "\
LayoutStamp size=64 version@0 state@4 writer@8
Control size=16 mode@0 active_slot@4 features@8
Revert size=16 deadline_ns@0 mode@8 fired@12
AllowRule size=8 flags@0 port_set@4
PortRange size=8 protocol@0 first@4 last@6
PortSet size=136 len@0 ranges@8
FlowKey size=40 remote@0 local@16 remote_port@32 local_port@34 protocol@36
FlowState size=8 last_seen_ns@0
FragmentKey size=40 source@0 destination@16 id@32 protocol@36
Counter size=16 packets@0 bytes@8
DroppedSourceKey size=24 source@0 ifindex@16 reason@20
DroppedSourceStats size=24 packets@0 bytes@8 last_seen_ns@16
DropAdmission size=16 window_start_ns@0 admitted@8
EntryHits size=24 packets@0 bytes@8 last_hit_ns@16
reason PassedListed=0
reason PassedNonIp=1
reason PassedExempt=2
reason PassedOff=3
reason DroppedNotListed=4
reason DroppedMalformed=5
reason MonitorNotListed=6
reason MonitorMalformed=7
reason PassedReturnTraffic=8
reason PassedPublicPort=9
reason PassedFragment=12
reason DroppedPortNotAllowed=10
reason MonitorPortNotAllowed=11
reason DroppedEncapsulated=13
reason MonitorEncapsulated=14
reason PassedEncapsulated=15
mode Off=0
mode Monitor=1
mode Enforce=2
features return_traffic=1 dhcp_client=2 pass_encapsulated=4 revert_pending=8 record_drops=16
rules allow_all=1 ports=2 hit_shift=16";

    const MEANING_3: &str = "\
LayoutStamp size=64 version@0 state@4 writer@8
Control size=16 mode@0 active_slot@4 features@8
Revert size=16 deadline_ns@0 mode@8 fired@12
AllowRule size=8 flags@0 port_set@4
PortRange size=8 protocol@0 first@4 last@6
PortSet size=136 len@0 ranges@8
FlowKey size=40 remote@0 local@16 remote_port@32 local_port@34 protocol@36
FlowState size=8 last_seen_ns@0
FragmentKey size=40 source@0 destination@16 id@32 protocol@36
Counter size=16 packets@0 bytes@8
DroppedSourceKey size=24 source@0 ifindex@16 reason@20
DroppedSourceStats size=24 packets@0 bytes@8 last_seen_jiffies@16
DropAdmission size=16 window_start_jiffies@0 admitted@8
EntryHits size=24 packets@0 bytes@8 last_hit_jiffies@16
RecentDrop size=48 key@0 stats@24
reason PassedListed=0
reason PassedNonIp=1
reason PassedExempt=2
reason PassedOff=3
reason DroppedNotListed=4
reason DroppedMalformed=5
reason MonitorNotListed=6
reason MonitorMalformed=7
reason PassedReturnTraffic=8
reason PassedPublicPort=9
reason PassedFragment=12
reason DroppedPortNotAllowed=10
reason MonitorPortNotAllowed=11
reason DroppedEncapsulated=13
reason MonitorEncapsulated=14
reason PassedEncapsulated=15
mode Off=0
mode Monitor=1
mode Enforce=2
features return_traffic=1 dhcp_client=2 pass_encapsulated=4 revert_pending=8 record_drops=16
rules allow_all=1 ports=2 hit_shift=16
counters blocks=64 max_ifindex=65536";

    const MEANING_4: &str = "\
LayoutStamp size=64 version@0 state@4 writer@8
Control size=16 mode@0 active_slot@4 features@8
Revert size=16 deadline_ns@0 mode@8 fired@12
AllowRule size=8 flags@0 port_set@4
PortRange size=8 protocol@0 first@4 last@6
PortSet size=136 len@0 ranges@8
FlowKey size=40 remote@0 local@16 remote_port@32 local_port@34 protocol@36
FlowState size=8 last_seen_ns@0
FragmentKey size=40 source@0 destination@16 id@32 protocol@36
Counter size=16 packets@0 bytes@8
DroppedSourceKey size=24 source@0 ifindex@16 reason@20
DroppedSourceStats size=24 packets@0 bytes@8 last_seen_jiffies@16
DropAdmission size=16 window_start_jiffies@0 admitted@8
EntryHits size=24 packets@0 bytes@8 last_hit_jiffies@16
RecentDrop size=48 key@0 stats@24
reason PassedListed=0
reason PassedNonIp=1
reason PassedExempt=2
reason PassedOff=3
reason DroppedNotListed=4
reason DroppedMalformed=5
reason MonitorNotListed=6
reason MonitorMalformed=7
reason PassedReturnTraffic=8
reason PassedPublicPort=9
reason PassedFragment=12
reason DroppedPortNotAllowed=10
reason MonitorPortNotAllowed=11
reason DroppedEncapsulated=13
reason MonitorEncapsulated=14
reason PassedEncapsulated=15
mode Off=0
mode Monitor=1
mode Enforce=2
features return_traffic=1 dhcp_client=2 pass_encapsulated=4 revert_pending=8 record_drops=16
rules allow_all=1 ports=2 hit_shift=16
counters blocks=64 max_ifindex=65536
screens bits=16777216 coarse_bits=1048576 screen_bits_per_coarse_bit=16";

    const MEANING_5: &str = "\
LayoutStamp size=64 version@0 state@4 writer@8
Control size=16 mode@0 active_slot@4 features@8 remote_generation@12
Revert size=16 deadline_ns@0 mode@8 fired@12
AllowRule size=8 flags@0 port_set@4
PortRange size=8 protocol@0 first@4 last@6
PortSet size=136 len@0 ranges@8
FlowKey size=40 remote@0 local@16 remote_port@32 local_port@34 protocol@36
FlowState size=8 last_seen_ns@0
FragmentKey size=40 source@0 destination@16 id@32 protocol@36
Counter size=16 packets@0 bytes@8
DroppedSourceKey size=24 source@0 ifindex@16 reason@20
DroppedSourceStats size=24 packets@0 bytes@8 last_seen_jiffies@16
DropAdmission size=16 window_start_jiffies@0 admitted@8
EntryHits size=24 packets@0 bytes@8 last_hit_jiffies@16
RecentDrop size=48 key@0 stats@24
reason PassedListed=0
reason PassedNonIp=1
reason PassedExempt=2
reason PassedOff=3
reason DroppedNotListed=4
reason DroppedMalformed=5
reason MonitorNotListed=6
reason MonitorMalformed=7
reason PassedReturnTraffic=8
reason PassedPublicPort=9
reason PassedFragment=12
reason DroppedPortNotAllowed=10
reason MonitorPortNotAllowed=11
reason DroppedEncapsulated=13
reason MonitorEncapsulated=14
reason PassedEncapsulated=15
mode Off=0
mode Monitor=1
mode Enforce=2
features return_traffic=1 dhcp_client=2 pass_encapsulated=4 revert_pending=8 record_drops=16
rules allow_all=1 ports=2 hit_shift=16
counters blocks=64 max_ifindex=65536
screens bits=16777216 coarse_bits=1048576 screen_bits_per_coarse_bit=16
remotes bits=1048576 generations=2";

    fn maps() -> String {
        let object = aya_obj::Object::parse(EBPF_OBJECT).expect("parsing the embedded XDP object");
        let mut maps: Vec<String> = object
            .maps
            .iter()
            // Sections (.rodata, .bss) and aya-log's ring, which is never pinned.
            .filter(|(name, _)| !name.starts_with('.') && !name.starts_with("AYA_"))
            .map(|(name, map)| {
                format!(
                    "{name} type={} key={} value={} entries={} flags={:#x}",
                    map.map_type(),
                    map.key_size(),
                    map.value_size(),
                    map.max_entries(),
                    map.map_flags()
                )
            })
            .collect();
        maps.sort();
        maps.join("\n")
    }

    macro_rules! layout_of {
        ($type:ty { $($field:ident),* }) => {
            format!(
                concat!(stringify!($type), " size={}", $(" ", stringify!($field), "@{}"),*),
                size_of::<$type>() $(, offset_of!($type, $field))*
            )
        };
    }

    fn meaning() -> String {
        let mut lines = vec![
            layout_of!(LayoutStamp {
                version,
                state,
                writer
            }),
            layout_of!(Control {
                mode,
                active_slot,
                features,
                remote_generation
            }),
            layout_of!(Revert {
                deadline_ns,
                mode,
                fired
            }),
            layout_of!(AllowRule { flags, port_set }),
            layout_of!(PortRange {
                protocol,
                first,
                last
            }),
            layout_of!(PortSet { len, ranges }),
            layout_of!(FlowKey {
                remote,
                local,
                remote_port,
                local_port,
                protocol
            }),
            layout_of!(FlowState { last_seen_ns }),
            layout_of!(FragmentKey {
                source,
                destination,
                id,
                protocol
            }),
            layout_of!(Counter { packets, bytes }),
            layout_of!(DroppedSourceKey {
                source,
                ifindex,
                reason
            }),
            layout_of!(DroppedSourceStats {
                packets,
                bytes,
                last_seen_jiffies
            }),
            layout_of!(DropAdmission {
                window_start_jiffies,
                admitted
            }),
            layout_of!(EntryHits {
                packets,
                bytes,
                last_hit_jiffies
            }),
            layout_of!(RecentDrop { key, stats }),
        ];
        lines.extend(
            Reason::ALL
                .iter()
                .map(|reason| format!("reason {reason:?}={}", *reason as u32)),
        );
        lines.extend(
            [Mode::Off, Mode::Monitor, Mode::Enforce]
                .iter()
                .map(|mode| format!("mode {mode:?}={}", *mode as u32)),
        );
        lines.push(format!(
            "features return_traffic={FEATURE_RETURN_TRAFFIC} dhcp_client={FEATURE_DHCP_CLIENT} \
             pass_encapsulated={FEATURE_PASS_ENCAPSULATED} revert_pending={FEATURE_REVERT_PENDING} \
             record_drops={FEATURE_RECORD_DROPS}"
        ));
        lines.push(format!(
            "rules allow_all={RULE_ALLOW_ALL} ports={RULE_PORTS} hit_shift={RULE_HIT_SHIFT}"
        ));
        lines.push(format!(
            "counters blocks={COUNTER_BLOCKS} max_ifindex={MAX_COUNTED_IFINDEX}"
        ));
        lines.push(format!(
            "screens bits={SCREEN_BITS} coarse_bits={COARSE_SCREEN_BITS} \
             screen_bits_per_coarse_bit={SCREEN_BITS_PER_COARSE_BIT}"
        ));
        lines.push(format!("remotes bits={REMOTE_FILTER_BITS} generations=2"));
        lines.join("\n")
    }

    #[test]
    fn the_maps_and_what_they_hold_are_as_recorded_for_this_layout_so_a_change_needs_a_new_one() {
        let (maps, meaning) = (maps(), meaning());
        let recorded = RECORDED
            .iter()
            .find(|(version, _, _)| *version == LAYOUT_VERSION);
        assert_eq!(
            recorded.map(|(_, maps, meaning)| (*maps, *meaning)),
            Some((maps.as_str(), meaning.as_str())),
            "the XDP object's maps or what they hold differ from what layout \
             {LAYOUT_VERSION} recorded: a daemon of this version would take maps pinned by \
             another, laid out differently, as its own. Bump RELEASED_LAYOUT in \
             allowlist-common, then record for it:\n{maps}\n\n{meaning}"
        );
    }
}
