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
    Counter, FlowKey, FlowState, FragmentKey, LayoutStamp, LAYOUT_BUILDING, LAYOUT_LIVE,
    LAYOUT_VERSION, MAP_COUNTERS, MAP_FLOWS, MAP_FRAGMENTS, MAP_LAYOUT,
};
use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuValues},
    Pod,
};
use tracing::{info, warn};

use super::{
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
    /// Its counters as carried over before the switch.
    pub counters_carried: Option<CounterSnapshot>,
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
                survey.source = Some(OldLayout {
                    version: layout.version,
                    maps: layout.dir.join("maps"),
                    writer: layout.writer.clone(),
                    counters_carried: None,
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
        if name == "maps" {
            // Layout 1 had no stamp; its maps are live if its program is pinned.
            found.push(Found {
                version: 1,
                dir: root.to_path_buf(),
                live: root.join("program").exists(),
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

/// The old layout's counters, per slot and per CPU, as they were copied into the new
/// maps before the switch.
pub(super) type CounterSnapshot = Vec<Vec<Counter>>;

/// First half of carrying what the old layout counted over into this version's fresh
/// maps, before any interface runs the new program: the counters, slot by slot (a
/// reason keeps its value across versions), set to the old values; and the flow and
/// fragment tables. Setting (never adding) makes a repeat after a crash harmless. A map
/// whose layout changed is not carried over, and the log says so.
pub(super) fn carry_over_before_switch(source: &OldLayout, ours: &Path) -> Option<CounterSnapshot> {
    let copied = copy_counters(&source.maps.join(MAP_COUNTERS), &ours.join(MAP_COUNTERS));
    let snapshot = match copied {
        Ok(snapshot) => {
            info!(
                slots = snapshot.len(),
                from = source.version,
                "carried the counters over"
            );
            Some(snapshot)
        }
        Err(error) => {
            warn!(%error, "the counters of layout {} cannot be carried over; they start from zero", source.version);
            None
        }
    };
    carry_tables(source, ours);
    snapshot
}

/// Second half, once every interface runs the new program: adds what the old program
/// counted since the first half (it judged packets until its last interface switched),
/// and copies the flows it recorded meanwhile. A packet the new program counts on the
/// same CPU between this read and write is lost from the count: a window of
/// microseconds, where doing nothing would lose the whole switch.
pub(super) fn carry_over_after_switch(
    source: &OldLayout,
    ours: &Path,
    snapshot: Option<&CounterSnapshot>,
) {
    if let Some(snapshot) = snapshot {
        if let Err(error) = add_counted_since(
            &source.maps.join(MAP_COUNTERS),
            &ours.join(MAP_COUNTERS),
            snapshot,
        ) {
            warn!(%error, "the packets the old program counted during the switch are not carried over");
        }
    }
    carry_tables(source, ours);
}

fn carry_tables(source: &OldLayout, ours: &Path) {
    for (name, copy) in [
        (
            MAP_FLOWS,
            copy_newest::<FlowKey> as fn(&Path, &Path) -> Result<usize>,
        ),
        (MAP_FRAGMENTS, copy_newest::<FragmentKey>),
    ] {
        match copy(&source.maps.join(name), &ours.join(name)) {
            Ok(entries) => info!(map = name, entries, "carried entries over"),
            Err(error) => {
                warn!(map = name, %error, "not carried over from layout {}", source.version)
            }
        }
    }
}

fn copy_counters(old: &Path, new: &Path) -> Result<CounterSnapshot> {
    let old: PerCpuArray<MapData, Counter> = open_pinned(old)?;
    let mut new: PerCpuArray<MapData, Counter> = open_pinned(new)?;
    let slots = old.len().min(new.len());
    let mut snapshot = Vec::with_capacity(slots as usize);
    for index in 0..slots {
        let values: Vec<Counter> = old
            .get(&index, 0)
            .map_err(kernel_error("reading the old counters"))?
            .iter()
            .copied()
            .collect();
        let per_cpu = PerCpuValues::try_from(values.clone())
            .map_err(io_error("collecting per-CPU counters"))?;
        new.set(index, per_cpu, 0)
            .map_err(kernel_error("writing the counters"))?;
        snapshot.push(values);
    }
    Ok(snapshot)
}

fn add_counted_since(old: &Path, new: &Path, snapshot: &CounterSnapshot) -> Result<()> {
    let old: PerCpuArray<MapData, Counter> = open_pinned(old)?;
    let mut new: PerCpuArray<MapData, Counter> = open_pinned(new)?;
    for (index, before) in (0u32..).zip(snapshot) {
        let now = old
            .get(&index, 0)
            .map_err(kernel_error("reading the old counters"))?;
        let here = new
            .get(&index, 0)
            .map_err(kernel_error("reading the counters"))?;
        let mut changed = false;
        let sum: Vec<Counter> = here
            .iter()
            .zip(now.iter().zip(before))
            .map(|(here, (now, before))| {
                let packets = now.packets.saturating_sub(before.packets);
                let bytes = now.bytes.saturating_sub(before.bytes);
                changed |= packets != 0 || bytes != 0;
                Counter {
                    packets: here.packets.saturating_add(packets),
                    bytes: here.bytes.saturating_add(bytes),
                }
            })
            .collect();
        if changed {
            let per_cpu =
                PerCpuValues::try_from(sum).map_err(io_error("collecting per-CPU counters"))?;
            new.set(index, per_cpu, 0)
                .map_err(kernel_error("writing the counters"))?;
        }
    }
    Ok(())
}

/// Copies every entry of an LRU table whose copy here is missing or older.
fn copy_newest<K: Pod>(old: &Path, new: &Path) -> Result<usize> {
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
    use allowlist_common::LAYOUT_VERSION;

    use crate::filter::EBPF_OBJECT;

    /// Every layout's maps as the object file defines them: name, type, key and value
    /// sizes, capacity, flags. A change to any of them is a new layout. Layout 3 is the
    /// test build's (`ALLOWLIST_TEST_LAYOUT`): layout 2 with more counter slots.
    const RECORDED: &[(u32, &str)] = &[(2, LAYOUT_2), (3, LAYOUT_3)];

    const LAYOUT_2: &str = "\
ALLOW_V4_0 type=11 key=8 value=8 entries=2000000 flags=0x1\n\
ALLOW_V4_1 type=11 key=8 value=8 entries=2000000 flags=0x1\n\
ALLOW_V6_0 type=11 key=20 value=8 entries=2000000 flags=0x1\n\
ALLOW_V6_1 type=11 key=20 value=8 entries=2000000 flags=0x1\n\
CONTROL type=2 key=4 value=16 entries=1 flags=0x0\n\
COUNTERS type=6 key=4 value=16 entries=32 flags=0x0\n\
EXACT_V4_0 type=1 key=4 value=8 entries=1048576 flags=0x1\n\
EXACT_V4_1 type=1 key=4 value=8 entries=1048576 flags=0x1\n\
EXACT_V6_0 type=1 key=16 value=8 entries=262144 flags=0x1\n\
EXACT_V6_1 type=1 key=16 value=8 entries=262144 flags=0x1\n\
FLOWS type=9 key=40 value=8 entries=65536 flags=0x0\n\
FRAGMENTS type=9 key=40 value=8 entries=4096 flags=0x0\n\
LAYOUT type=2 key=4 value=64 entries=1 flags=0x0\n\
PORT_SETS_0 type=2 key=4 value=136 entries=4096 flags=0x0\n\
PORT_SETS_1 type=2 key=4 value=136 entries=4096 flags=0x0\n\
REVERT type=2 key=4 value=16 entries=1 flags=0x0\n\
SCREEN_V4_0 type=2 key=4 value=8 entries=262144 flags=0x400\n\
SCREEN_V4_1 type=2 key=4 value=8 entries=262144 flags=0x400\n\
SCREEN_V6_0 type=2 key=4 value=8 entries=262144 flags=0x400\n\
SCREEN_V6_1 type=2 key=4 value=8 entries=262144 flags=0x400";

    const LAYOUT_3: &str = "\
ALLOW_V4_0 type=11 key=8 value=8 entries=2000000 flags=0x1\n\
ALLOW_V4_1 type=11 key=8 value=8 entries=2000000 flags=0x1\n\
ALLOW_V6_0 type=11 key=20 value=8 entries=2000000 flags=0x1\n\
ALLOW_V6_1 type=11 key=20 value=8 entries=2000000 flags=0x1\n\
CONTROL type=2 key=4 value=16 entries=1 flags=0x0\n\
COUNTERS type=6 key=4 value=16 entries=48 flags=0x0\n\
EXACT_V4_0 type=1 key=4 value=8 entries=1048576 flags=0x1\n\
EXACT_V4_1 type=1 key=4 value=8 entries=1048576 flags=0x1\n\
EXACT_V6_0 type=1 key=16 value=8 entries=262144 flags=0x1\n\
EXACT_V6_1 type=1 key=16 value=8 entries=262144 flags=0x1\n\
FLOWS type=9 key=40 value=8 entries=65536 flags=0x0\n\
FRAGMENTS type=9 key=40 value=8 entries=4096 flags=0x0\n\
LAYOUT type=2 key=4 value=64 entries=1 flags=0x0\n\
PORT_SETS_0 type=2 key=4 value=136 entries=4096 flags=0x0\n\
PORT_SETS_1 type=2 key=4 value=136 entries=4096 flags=0x0\n\
REVERT type=2 key=4 value=16 entries=1 flags=0x0\n\
SCREEN_V4_0 type=2 key=4 value=8 entries=262144 flags=0x400\n\
SCREEN_V4_1 type=2 key=4 value=8 entries=262144 flags=0x400\n\
SCREEN_V6_0 type=2 key=4 value=8 entries=262144 flags=0x400\n\
SCREEN_V6_1 type=2 key=4 value=8 entries=262144 flags=0x400";

    fn fingerprint() -> String {
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

    #[test]
    fn the_maps_are_as_recorded_for_this_layout_version_so_a_changed_map_needs_a_new_version() {
        let actual = fingerprint();
        let recorded = RECORDED
            .iter()
            .find(|(version, _)| *version == LAYOUT_VERSION)
            .map(|(_, maps)| *maps);
        assert_eq!(
            recorded,
            Some(actual.as_str()),
            "the XDP object's maps differ from what layout {LAYOUT_VERSION} recorded: \
             a daemon of this version would open maps pinned by another in a different \
             layout. Bump LAYOUT_VERSION in allowlist-common, then record for it:\n{actual}"
        );
    }
}
