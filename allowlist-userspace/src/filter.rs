//! The kernel side as the daemon sees it: the XDP program, its pinned maps and links.
//!
//! Everything is pinned under `pin_path`, so the filter outlives the daemon: a crash or a
//! restart leaves the last applied list enforcing, and the next daemon takes over what is
//! pinned instead of starting from nothing.
//!
//! ```text
//! pin_path/
//!   program          the XDP program
//!   maps/NAME        every map of allowlist_common::MAP_*
//!   links/IFNAME     one XDP link per protected interface
//!   egress/IFNAME    one TC egress (TCX) link per protected interface: flow tracking
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use allowlist_common::{
    AllowRule, Control, Counter, FlowKey, FlowState, Ipv4Octets, Ipv6Octets, PortSet, Reason,
    MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_CONTROL, MAP_COUNTERS, MAP_EXACT_V4, MAP_EXACT_V6, MAP_FLOWS,
    MAP_PORT_SETS, MAP_SCREEN_V4, MAP_SCREEN_V6, MAX_EXACT_V4, MAX_EXACT_V6, MAX_PORT_SETS,
    PROGRAM_NAME, PUBLIC_PORT_SET, RULE_PORTS, SLOTS,
};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap as BpfHashMap, LpmTrie, Map, MapData, PerCpuArray},
    programs::{
        links::FdLink, links::PinnedLink, tc::SchedClassifierLink, tc::TcAttachOptions,
        xdp::XdpMode as KernelXdpMode, LinkOrder, SchedClassifier, TcAttachType, Xdp,
    },
    Ebpf, EbpfLoader,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::{
    compile::{region_range, CompiledList, Reach},
    config::{Mode, XdpMode},
    ports::PortSpec,
    screen::{MappedScreen, ScreenBits},
};

/// Name of the TC egress program that records the flows the host opens.
const EGRESS_PROGRAM_NAME: &str = "track_flows";

/// The compiled XDP program, embedded so the installed daemon is self-contained.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/allowlist"));
/// Helper programs for `cargo xtask bench` (no-op, drop-all, traffic generator); never
/// loaded by the daemon.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/allowlist-bench"));

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("{context}: {cause}")]
    Io { context: String, cause: io::Error },
    #[error("{context}: {message}")]
    Kernel { context: String, message: String },
}

type Result<T, E = FilterError> = std::result::Result<T, E>;

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> FilterError {
    let context = context.into();
    move |cause| FilterError::Io { context, cause }
}

fn kernel_error<E: std::fmt::Display>(context: impl Into<String>) -> impl FnOnce(E) -> FilterError {
    let context = context.into();
    move |error| FilterError::Kernel {
        context,
        // aya's errors hide the errno in their source chain; show all of it.
        message: error.to_string(),
    }
}

/// The paths of everything pinned for one filter instance.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }
    fn program(&self) -> PathBuf {
        self.root.join("program")
    }
    fn links(&self) -> PathBuf {
        self.root.join("links")
    }
    fn link(&self, interface: &str) -> PathBuf {
        self.links().join(interface)
    }
    fn egress_link(&self, interface: &str) -> PathBuf {
        self.root.join("egress").join(interface)
    }
    /// Interfaces that have a pinned link, i.e. that this filter protects now.
    fn pinned_interfaces(&self) -> Result<Vec<String>> {
        let dir = self.links();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(io_error(format!("listing {}", dir.display()))(error)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error(format!("listing {}", dir.display())))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
}

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
    maps: Maps,
    control: Control,
    /// What each slot holds now, read back from the kernel at start.
    slots: [KernelSlot; SLOTS],
    /// Per slot: which hosts live in the exact-host hash and which in the trie.
    placement: [Placement; SLOTS],
    attached: BTreeMap<String, AttachedMode>,
}

struct Maps {
    v4: Vec<FamilyMaps<Ipv4Octets>>,
    v6: Vec<FamilyMaps<Ipv6Octets>>,
    port_sets: Vec<Array<MapData, PortSet>>,
    control: Array<MapData, Control>,
    counters: PerCpuArray<MapData, Counter>,
    flows: BpfHashMap<MapData, FlowKey, FlowState>,
}

/// One address family's lookup maps in one slot, in the order the program consults them.
struct FamilyMaps<K: aya::Pod> {
    screen: MappedScreen,
    exact: BpfHashMap<MapData, K, AllowRule>,
    trie: LpmTrie<MapData, K, AllowRule>,
}

/// Per slot: where hosts live. Hosts go to the exact-host hash while it has room; the
/// rest ("overflow") to the trie, and a host keeps its place for as long as it is listed.
#[derive(Default)]
struct Placement {
    v4: FamilyPlacement<Ipv4Net>,
    v6: FamilyPlacement<Ipv6Net>,
}

struct FamilyPlacement<P> {
    /// Hosts in the exact-host hash.
    exact: usize,
    /// Hosts in the trie.
    overflow: BTreeSet<P>,
}

impl<P> Default for FamilyPlacement<P> {
    fn default() -> Self {
        FamilyPlacement {
            exact: 0,
            overflow: BTreeSet::new(),
        }
    }
}

/// What the daemon needs to know about a prefix to place it in a family's maps.
trait Prefix: Ord + Copy + std::fmt::Display {
    type Octets: aya::Pod;
    /// Capacity of the family's exact-host hash.
    const EXACT_CAPACITY: u32;
    fn is_host(&self) -> bool;
    fn len(&self) -> u8;
    fn octets(&self) -> Self::Octets;
    fn key(&self) -> Key<Self::Octets>;
    /// Sets this prefix's bits in `screen`, leaving the others.
    fn screen_in(&self, screen: &MappedScreen);
}

impl Prefix for Ipv4Net {
    type Octets = Ipv4Octets;
    const EXACT_CAPACITY: u32 = MAX_EXACT_V4;
    fn is_host(&self) -> bool {
        self.prefix_len() == 32
    }
    fn len(&self) -> u8 {
        self.prefix_len()
    }
    fn octets(&self) -> Ipv4Octets {
        self.network().octets()
    }
    fn key(&self) -> Key<Ipv4Octets> {
        key_v4(self)
    }
    fn screen_in(&self, screen: &MappedScreen) {
        screen.set_v4(self);
    }
}

impl Prefix for Ipv6Net {
    type Octets = Ipv6Octets;
    const EXACT_CAPACITY: u32 = MAX_EXACT_V6;
    fn is_host(&self) -> bool {
        self.prefix_len() == 128
    }
    fn len(&self) -> u8 {
        self.prefix_len()
    }
    fn octets(&self) -> Ipv6Octets {
        self.network().octets()
    }
    fn key(&self) -> Key<Ipv6Octets> {
        key_v6(self)
    }
    fn screen_in(&self, screen: &MappedScreen) {
        screen.set_v6(self);
    }
}

/// The screen bits of a list, computed once per apply for both slots.
struct Screens {
    v4: ScreenBits,
    v6: ScreenBits,
}

impl Screens {
    fn of(list: &KernelSlot) -> Screens {
        Screens {
            v4: ScreenBits::of_v4(list.v4.iter().map(|(net, _)| net)),
            v6: ScreenBits::of_v6(list.v6.iter().map(|(net, _)| net)),
        }
    }
}

/// A compiled list in the kernel's terms: prefixes with rules, and the port sets the
/// rules point at (index 0: the public ports).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct KernelSlot {
    v4: Vec<(Ipv4Net, AllowRule)>,
    v6: Vec<(Ipv6Net, AllowRule)>,
    port_sets: Vec<PortSet>,
}

impl KernelSlot {
    fn from_list(list: &CompiledList) -> Result<KernelSlot> {
        let mut port_sets = vec![port_set(&list.public_ports)];
        debug_assert_eq!(PUBLIC_PORT_SET, 0);
        let mut ids: BTreeMap<Vec<PortSpec>, u32> = BTreeMap::new();
        let mut rule = |access: &Reach| -> Result<AllowRule> {
            match access {
                Reach::All => Ok(AllowRule::ALLOW_ALL),
                Reach::Ports(ranges) => {
                    let next = port_sets.len() as u32;
                    let id = *ids.entry(ranges.clone()).or_insert(next);
                    if id == next {
                        if next >= MAX_PORT_SETS {
                            return Err(FilterError::Kernel {
                                context: "compiling port scopes".into(),
                                message: format!("more than {MAX_PORT_SETS} distinct port sets"),
                            });
                        }
                        port_sets.push(port_set(ranges));
                    }
                    Ok(AllowRule {
                        flags: RULE_PORTS,
                        port_set: id,
                    })
                }
            }
        };
        let v4 = list
            .v4
            .iter()
            .map(|(net, access)| Ok((*net, rule(access)?)))
            .collect::<Result<_>>()?;
        let v6 = list
            .v6
            .iter()
            .map(|(net, access)| Ok((*net, rule(access)?)))
            .collect::<Result<_>>()?;
        Ok(KernelSlot { v4, v6, port_sets })
    }
}

fn port_set(ranges: &[PortSpec]) -> PortSet {
    let mut set = PortSet::default();
    for (slot, range) in set.ranges.iter_mut().zip(ranges) {
        *slot = range.to_kernel();
    }
    set.len = ranges.len().min(set.ranges.len()) as u32;
    set
}

/// Counters summed over CPUs, by reason.
pub type Counters = BTreeMap<&'static str, Counter>;

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
        ensure_bpffs(pins.root())?;
        for dir in [
            pins.root().to_path_buf(),
            pins.maps(),
            pins.links(),
            pins.root().join("egress"),
        ] {
            fs::create_dir_all(&dir).map_err(io_error(format!("creating {}", dir.display())))?;
        }
        // aya-log's level filter: 0 silences every log statement in the program.
        let log_level: u8 = if ebpf_debug_log { 0xff } else { 0 };
        let maps_dir = pins.maps();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .override_global(aya_log::LEVEL, &log_level, true)
            .load(EBPF_OBJECT)
            .map_err(kernel_error("loading the XDP program's maps"))?;
        let program: &mut Xdp = program_of(&mut ebpf)?;
        program
            .load()
            .map_err(kernel_error("loading the XDP program into the kernel"))?;
        egress_program_of(&mut ebpf)?.load().map_err(kernel_error(
            "loading the TC egress program into the kernel",
        ))?;

        if ebpf_debug_log {
            forward_program_log(&mut ebpf)?;
        }
        let maps = Maps::take(&mut ebpf)?;
        let control = maps
            .control
            .get(&0, 0)
            .map_err(kernel_error("reading the control record"))?;
        let (slot_0, placement_0) = maps.read_slot(0)?;
        let (slot_1, placement_1) = maps.read_slot(1)?;
        Ok(Filter {
            ebpf,
            pins,
            maps,
            control,
            slots: [slot_0, slot_1],
            placement: [placement_0, placement_1],
            attached: BTreeMap::new(),
        })
    }

    /// Whether a previous daemon left this filter attached somewhere.
    pub fn is_pinned(pins: &Pins) -> Result<bool> {
        Ok(!pins.pinned_interfaces()?.is_empty())
    }

    pub fn mode(&self) -> Mode {
        match allowlist_common::Mode::from_raw(self.control.mode) {
            allowlist_common::Mode::Off => Mode::Off,
            allowlist_common::Mode::Monitor => Mode::Monitor,
            allowlist_common::Mode::Enforce => Mode::Enforce,
        }
    }

    /// Prefixes per family (IPv4, IPv6) in the list the kernel judges by now.
    pub fn entry_counts(&self) -> (usize, usize) {
        let slot = &self.slots[self.control.active_slot as usize % SLOTS];
        (slot.v4.len(), slot.v6.len())
    }

    /// Turns features (`FEATURE_*`) on or off for the next packet.
    pub fn set_features(&mut self, features: u32) -> Result<()> {
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
        for flow in flows {
            self.maps
                .flows
                .insert(flow, FlowState { last_seen_ns: now }, 0)
                .map_err(kernel_error("seeding the flow table"))?;
        }
        Ok(flows.len())
    }

    pub fn attached(&self) -> &BTreeMap<String, AttachedMode> {
        &self.attached
    }

    /// Makes the kernel judge by `list`, atomically: the inactive slot is brought to
    /// `list`, the program is pointed at it, and only after every packet in flight has
    /// finished with the old slot is that one brought up to date too.
    pub fn apply(&mut self, list: &CompiledList) -> Result<ApplyReport> {
        let started = Instant::now();
        let list = KernelSlot::from_list(list)?;
        let list = &list;
        let screens = Screens::of(list);
        let active = self.control.active_slot as usize % SLOTS;
        let standby = 1 - active;
        self.write_slot(standby, list, &screens)?;
        self.write_control(Control {
            active_slot: standby as u32,
            ..self.control
        })?;
        wait_for_packets_in_flight();
        // The old slot is idle now; keep it identical so the next change is a small diff.
        // Its diff is exactly what changed from the previous list.
        let mut report = self.write_slot(active, list, &screens)?;
        report.took = started.elapsed();
        Ok(report)
    }

    /// Applies a change confined to `region` (one entry added, updated or removed) to
    /// both slots in place, without the flip and its wait: `list` is the whole new list,
    /// equal to the one in force outside `region`. This is what keeps one change to a
    /// list of millions in the milliseconds.
    ///
    /// Each key is replaced atomically, screen bits are set before the prefixes that
    /// need them (and left set after a removal: a set bit only means "look further",
    /// until the next whole apply clears it), and prefixes are written longest first,
    /// so a packet meets its source's old verdict or its new one.
    pub fn apply_region(&mut self, list: &CompiledList, region: IpNet) -> Result<ApplyReport> {
        if self.slots[0].port_sets != self.slots[1].port_sets {
            // Only after a start that found slots from another version: rewrite whole.
            return self.apply(list);
        }
        let started = Instant::now();
        let mut report = ApplyReport::default();
        match region.trunc() {
            IpNet::V4(region) => {
                let inside = |net: &Ipv4Net| region.contains(net);
                let range = region_range(&list.v4, &region, inside);
                let wanted = self.rules_for(&list.v4[range])?;
                for slot in 0..SLOTS {
                    let written = write_region(
                        &mut self.maps.v4[slot],
                        &mut self.placement[slot].v4,
                        &mut self.slots[slot].v4,
                        &wanted,
                        &region,
                        inside,
                        slot,
                    )?;
                    report = written;
                }
            }
            IpNet::V6(region) => {
                let inside = |net: &Ipv6Net| region.contains(net);
                let range = region_range(&list.v6, &region, inside);
                let wanted = self.rules_for(&list.v6[range])?;
                for slot in 0..SLOTS {
                    let written = write_region(
                        &mut self.maps.v6[slot],
                        &mut self.placement[slot].v6,
                        &mut self.slots[slot].v6,
                        &wanted,
                        &region,
                        inside,
                        slot,
                    )?;
                    report = written;
                }
            }
        }
        report.took = started.elapsed();
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
                    let known = &self.slots[0].port_sets;
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

    fn add_port_set(&mut self, set: PortSet) -> Result<usize> {
        let id = self.slots[0].port_sets.len();
        if id >= MAX_PORT_SETS as usize {
            return Err(FilterError::Kernel {
                context: "adding a port scope".into(),
                message: format!("more than {MAX_PORT_SETS} distinct port sets"),
            });
        }
        for slot in 0..SLOTS {
            self.maps.port_sets[slot]
                .set(id as u32, set, 0)
                .map_err(kernel_error(format!(
                    "writing port set {id} of slot {slot}"
                )))?;
            self.slots[slot].port_sets.push(set);
        }
        Ok(id)
    }

    pub fn set_mode(&mut self, mode: Mode) -> Result<()> {
        let raw = allowlist_common::Mode::from(mode) as u32;
        if self.control.mode != raw {
            self.write_control(Control {
                mode: raw,
                ..self.control
            })?;
            wait_for_packets_in_flight();
        }
        Ok(())
    }

    /// Attaches to `interface`, or takes over the link a previous daemon pinned there by
    /// swapping in this program atomically (no moment without a filter).
    pub fn attach(
        &mut self,
        interface: &str,
        wanted: XdpMode,
        state_dir: &Path,
    ) -> Result<AttachedMode> {
        if let Some(mode) = self.attached.get(interface) {
            return Ok(*mode);
        }
        let link_pin = self.pins.link(interface);
        let recorded = AttachmentRecord::load(state_dir);
        let program = program_of(&mut self.ebpf)?;
        let attached = if link_pin.exists() {
            let pinned = PinnedLink::from_pin(&link_pin).map_err(kernel_error(format!(
                "opening the pinned link {}",
                link_pin.display()
            )))?;
            let link = aya::programs::xdp::XdpLink::try_from(FdLink::from(pinned)).map_err(
                kernel_error(format!("{} is not an XDP link", link_pin.display())),
            )?;
            let id = program.attach_to_link(link).map_err(kernel_error(format!(
                "replacing the program on {interface}"
            )))?;
            // The pin keeps the link alive; our handle may close whenever we exit.
            let _ = program.take_link(id);
            let mode = recorded
                .get(interface)
                .copied()
                .unwrap_or(AttachedMode::Native);
            if matches!(
                (wanted, mode),
                (XdpMode::Native, AttachedMode::Generic) | (XdpMode::Generic, AttachedMode::Native)
            ) {
                warn!(interface, attached = ?mode, wanted = ?wanted,
                    "keeping the existing {mode:?} attachment: switching XDP mode would leave the interface unfiltered for a moment; run `allowlistd uninstall` first to change it");
            }
            info!(interface, mode = ?mode, "took over the pinned XDP link");
            mode
        } else {
            let (id, mode) = attach_new(program, interface, wanted)?;
            let link = program
                .take_link(id)
                .map_err(kernel_error(format!("taking the link on {interface}")))?;
            let fd_link = FdLink::try_from(link).map_err(kernel_error(format!(
                "the kernel attached {interface} without a BPF link (needs Linux 5.9+), so it cannot be pinned"
            )))?;
            fd_link.pin(&link_pin).map_err(kernel_error(format!(
                "pinning the link at {}",
                link_pin.display()
            )))?;
            info!(interface, mode = ?mode, "attached the XDP program");
            mode
        };
        if let Err(error) = self.attach_egress(interface) {
            // Without the tracker, replies to the host's own connections from unlisted
            // peers are dropped; that is still safer than no filter at all.
            error!(interface, %error, "cannot attach the egress flow tracker: replies to connections this host opens will pass only from listed sources");
        }
        self.attached.insert(interface.to_string(), attached);
        AttachmentRecord(self.attached.clone()).store(state_dir);
        Ok(attached)
    }

    /// Attaches the flow tracker to the interface's egress (TCX, pinned), or swaps this
    /// program into the link a previous daemon pinned.
    fn attach_egress(&mut self, interface: &str) -> Result<()> {
        let pin = self.pins.egress_link(interface);
        let program = egress_program_of(&mut self.ebpf)?;
        if pin.exists() {
            let pinned = PinnedLink::from_pin(&pin).map_err(kernel_error(format!(
                "opening the pinned link {}",
                pin.display()
            )))?;
            let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                .map_err(kernel_error(format!("{} is not a TC link", pin.display())))?;
            let id = program.attach_to_link(link).map_err(kernel_error(format!(
                "replacing the egress program on {interface}"
            )))?;
            let _ = program.take_link(id);
            return Ok(());
        }
        let id = program
            .attach_with_options(
                interface,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(kernel_error(format!(
                "attaching the TC egress flow tracker to {interface} (needs Linux 6.6+ for TCX)"
            )))?;
        let link = program.take_link(id).map_err(kernel_error(format!(
            "taking the egress link on {interface}"
        )))?;
        let fd_link = FdLink::try_from(link).map_err(kernel_error(format!(
            "the egress link on {interface} cannot be pinned"
        )))?;
        fd_link.pin(&pin).map_err(kernel_error(format!(
            "pinning the egress link at {}",
            pin.display()
        )))?;
        Ok(())
    }

    /// Detaches from pinned interfaces that are no longer configured.
    pub fn detach_others(&mut self, keep: &[String], state_dir: &Path) -> Result<()> {
        for interface in self.pins.pinned_interfaces()? {
            if !keep.contains(&interface) {
                let pin = self.pins.link(&interface);
                fs::remove_file(&pin).map_err(io_error(format!("removing {}", pin.display())))?;
                let _ = fs::remove_file(self.pins.egress_link(&interface));
                self.attached.remove(&interface);
                info!(interface, "detached: no longer in the config");
            }
        }
        AttachmentRecord(self.attached.clone()).store(state_dir);
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

    pub fn counters(&self) -> Result<Counters> {
        let mut counters = Counters::new();
        for reason in Reason::ALL {
            let per_cpu = self
                .maps
                .counters
                .get(&(reason as u32), 0)
                .map_err(kernel_error("reading counters"))?;
            let total = per_cpu.iter().fold(Counter::default(), |sum, cpu| Counter {
                packets: sum.packets + cpu.packets,
                bytes: sum.bytes + cpu.bytes,
            });
            counters.insert(reason.name(), total);
        }
        Ok(counters)
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
        // Port sets first: rules written below may point at them.
        let sets = &mut self.maps.port_sets[slot];
        for (index, set) in list.port_sets.iter().enumerate() {
            if self.slots[slot].port_sets.get(index) != Some(set) {
                sets.set(index as u32, set, 0)
                    .map_err(kernel_error(format!(
                        "writing port set {index} of slot {slot}"
                    )))?;
            }
        }
        let current = &self.slots[slot];
        let placement = &mut self.placement[slot];
        let (v4_upsert, v4_remove) = diff(&current.v4, &list.v4);
        let (v6_upsert, v6_remove) = diff(&current.v6, &list.v6);
        let v4 = &mut self.maps.v4[slot];
        write_prefixes(
            v4,
            &mut placement.v4,
            &current.v4,
            &v4_upsert,
            &v4_remove,
            slot,
        )?;
        v4.screen.write(&screens.v4);
        let v6 = &mut self.maps.v6[slot];
        write_prefixes(
            v6,
            &mut placement.v6,
            &current.v6,
            &v6_upsert,
            &v6_remove,
            slot,
        )?;
        v6.screen.write(&screens.v6);
        self.slots[slot] = list.clone();
        Ok(ApplyReport {
            added: v4_upsert.len() + v6_upsert.len(),
            removed: v4_remove.len() + v6_remove.len(),
            took: Duration::ZERO,
        })
    }
}

/// Writes changed prefixes into one family's maps of an idle slot: removals first, so
/// a list replaced by another never needs room for both.
fn write_prefixes<P: Prefix>(
    maps: &mut FamilyMaps<P::Octets>,
    placement: &mut FamilyPlacement<P>,
    current: &[(P, AllowRule)],
    upsert: &[(P, AllowRule)],
    remove: &[P],
    slot: usize,
) -> Result<()> {
    for net in remove {
        remove_prefix(maps, placement, net, slot)?;
    }
    for (net, rule) in upsert {
        upsert_prefix(maps, placement, current, net, rule, slot)?;
    }
    Ok(())
}

/// Writes changed prefixes into one family's maps of a slot packets may be judged by:
/// `upsert` (new prefixes, or new rules) first, then `remove`, each longest prefix first,
/// so a source's longest match moves from its old prefix and rule to its new one without
/// passing through a shorter prefix that is about to be replaced or has already gone.
fn write_prefixes_in_place<P: Prefix>(
    maps: &mut FamilyMaps<P::Octets>,
    placement: &mut FamilyPlacement<P>,
    current: &[(P, AllowRule)],
    upsert: &[(P, AllowRule)],
    remove: &[P],
    slot: usize,
) -> Result<()> {
    let mut upsert = upsert.to_vec();
    upsert.sort_by_key(|(net, _)| std::cmp::Reverse(net.len()));
    let mut remove = remove.to_vec();
    remove.sort_by_key(|net| std::cmp::Reverse(net.len()));
    for (net, rule) in &upsert {
        upsert_prefix(maps, placement, current, net, rule, slot)?;
    }
    for net in &remove {
        remove_prefix(maps, placement, net, slot)?;
    }
    Ok(())
}

fn upsert_prefix<P: Prefix>(
    maps: &mut FamilyMaps<P::Octets>,
    placement: &mut FamilyPlacement<P>,
    current: &[(P, AllowRule)],
    net: &P,
    rule: &AllowRule,
    slot: usize,
) -> Result<()> {
    let listed = current.binary_search_by(|(n, _)| n.cmp(net)).is_ok();
    let written = match place(placement, net, listed) {
        Place::Exact => maps.exact.insert(net.octets(), rule, 0),
        Place::Trie => maps.trie.insert(&net.key(), rule, 0),
    };
    written.map_err(kernel_error(format!("adding {net} to slot {slot}")))
}

fn remove_prefix<P: Prefix>(
    maps: &mut FamilyMaps<P::Octets>,
    placement: &mut FamilyPlacement<P>,
    net: &P,
    slot: usize,
) -> Result<()> {
    let removed = if net.is_host() && !placement.overflow.remove(net) {
        placement.exact -= 1;
        maps.exact.remove(&net.octets())
    } else {
        maps.trie.remove(&net.key())
    };
    removed.map_err(kernel_error(format!("removing {net} from slot {slot}")))
}

/// Brings the prefixes inside `region` of one family and slot to `wanted`, in place.
fn write_region<P: Prefix>(
    maps: &mut FamilyMaps<P::Octets>,
    placement: &mut FamilyPlacement<P>,
    current: &mut Vec<(P, AllowRule)>,
    wanted: &[(P, AllowRule)],
    region: &P,
    inside: impl Fn(&P) -> bool,
    slot: usize,
) -> Result<ApplyReport> {
    let range = region_range(current, region, inside);
    let (upsert, remove) = diff(&current[range.clone()], wanted);
    for (net, _) in &upsert {
        net.screen_in(&maps.screen);
    }
    write_prefixes_in_place(maps, placement, current, &upsert, &remove, slot)?;
    current.splice(range, wanted.iter().copied());
    Ok(ApplyReport {
        added: upsert.len(),
        removed: remove.len(),
        took: Duration::ZERO,
    })
}

enum Place {
    Exact,
    Trie,
}

/// Where `net` goes (or already is, if `listed` in the slot): hosts to the exact-host
/// hash while it has room.
fn place<P: Prefix>(placement: &mut FamilyPlacement<P>, net: &P, listed: bool) -> Place {
    if !net.is_host() || placement.overflow.contains(net) {
        return Place::Trie;
    }
    if listed {
        return Place::Exact;
    }
    if placement.exact < P::EXACT_CAPACITY as usize {
        placement.exact += 1;
        Place::Exact
    } else {
        placement.overflow.insert(*net);
        Place::Trie
    }
}

impl Maps {
    fn take(ebpf: &mut Ebpf) -> Result<Maps> {
        let mut take = |name: &str| {
            ebpf.take_map(name).ok_or_else(|| FilterError::Kernel {
                context: "opening maps".into(),
                message: format!("the program has no map {name}"),
            })
        };
        let mut v4 = Vec::with_capacity(SLOTS);
        let mut v6 = Vec::with_capacity(SLOTS);
        for slot in 0..SLOTS {
            v4.push(FamilyMaps {
                screen: mapped_screen(take(MAP_SCREEN_V4[slot])?, MAP_SCREEN_V4[slot])?,
                exact: BpfHashMap::try_from(take(MAP_EXACT_V4[slot])?)
                    .map_err(kernel_error(MAP_EXACT_V4[slot]))?,
                trie: LpmTrie::try_from(take(MAP_ALLOW_V4[slot])?)
                    .map_err(kernel_error(MAP_ALLOW_V4[slot]))?,
            });
            v6.push(FamilyMaps {
                screen: mapped_screen(take(MAP_SCREEN_V6[slot])?, MAP_SCREEN_V6[slot])?,
                exact: BpfHashMap::try_from(take(MAP_EXACT_V6[slot])?)
                    .map_err(kernel_error(MAP_EXACT_V6[slot]))?,
                trie: LpmTrie::try_from(take(MAP_ALLOW_V6[slot])?)
                    .map_err(kernel_error(MAP_ALLOW_V6[slot]))?,
            });
        }
        let mut port_sets = Vec::with_capacity(SLOTS);
        for name in MAP_PORT_SETS {
            port_sets.push(Array::try_from(take(name)?).map_err(kernel_error(name))?);
        }
        Ok(Maps {
            v4,
            v6,
            port_sets,
            flows: BpfHashMap::try_from(take(MAP_FLOWS)?).map_err(kernel_error(MAP_FLOWS))?,
            control: Array::try_from(take(MAP_CONTROL)?).map_err(kernel_error(MAP_CONTROL))?,
            counters: PerCpuArray::try_from(take(MAP_COUNTERS)?)
                .map_err(kernel_error(MAP_COUNTERS))?,
        })
    }

    /// What a slot holds, and which of its hosts overflowed into the trie.
    fn read_slot(&self, slot: usize) -> Result<(KernelSlot, Placement)> {
        let mut list = KernelSlot::default();
        let mut placement = Placement::default();
        let (v4, v6) = (&self.v4[slot], &self.v6[slot]);
        let context = |name: &str| format!("reading {name}");
        for entry in v4.trie.iter() {
            let (key, rule) = entry.map_err(kernel_error(context(MAP_ALLOW_V4[slot])))?;
            let net = Ipv4Net::new(Ipv4Addr::from(key.data()), key.prefix_len() as u8)
                .map_err(kernel_error(context(MAP_ALLOW_V4[slot])))?;
            if net.is_host() {
                placement.v4.overflow.insert(net);
            }
            list.v4.push((net, rule));
        }
        for entry in v4.exact.iter() {
            let (octets, rule) = entry.map_err(kernel_error(context(MAP_EXACT_V4[slot])))?;
            list.v4.push((Ipv4Net::from(Ipv4Addr::from(octets)), rule));
            placement.v4.exact += 1;
        }
        for entry in v6.trie.iter() {
            let (key, rule) = entry.map_err(kernel_error(context(MAP_ALLOW_V6[slot])))?;
            let net = Ipv6Net::new(Ipv6Addr::from(key.data()), key.prefix_len() as u8)
                .map_err(kernel_error(context(MAP_ALLOW_V6[slot])))?;
            if net.is_host() {
                placement.v6.overflow.insert(net);
            }
            list.v6.push((net, rule));
        }
        for entry in v6.exact.iter() {
            let (octets, rule) = entry.map_err(kernel_error(context(MAP_EXACT_V6[slot])))?;
            list.v6.push((Ipv6Net::from(Ipv6Addr::from(octets)), rule));
            placement.v6.exact += 1;
        }
        list.v4.sort_unstable_by_key(|(net, _)| *net);
        list.v6.sort_unstable_by_key(|(net, _)| *net);
        // Port sets are rewritten whole on the next apply, and screens with every write.
        Ok((list, placement))
    }
}

fn mapped_screen(map: Map, name: &str) -> Result<MappedScreen> {
    let Map::Array(data) = map else {
        return Err(FilterError::Kernel {
            context: format!("opening {name}"),
            message: "not an array map".into(),
        });
    };
    MappedScreen::map(data).map_err(io_error(format!("mapping {name} into memory")))
}

/// The prefixes to write (new, or with a new rule) and to remove to turn `current` into
/// `wanted`; both sorted by prefix.
fn diff<N: Ord + Copy>(
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

fn key_v4(net: &Ipv4Net) -> Key<Ipv4Octets> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

fn key_v6(net: &Ipv6Net) -> Key<Ipv6Octets> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

fn egress_program_of(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    ebpf.program_mut(EGRESS_PROGRAM_NAME)
        .ok_or_else(|| FilterError::Kernel {
            context: "loading the TC egress program".into(),
            message: format!("the object has no program {EGRESS_PROGRAM_NAME}"),
        })?
        .try_into()
        .map_err(kernel_error("loading the TC egress program"))
}

/// CLOCK_BOOTTIME in nanoseconds: the clock of bpf_ktime_get_boot_ns.
fn boot_time_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|time| time.tv_sec() as u64 * 1_000_000_000 + time.tv_nsec() as u64)
        .unwrap_or(0)
}

fn program_of(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or_else(|| FilterError::Kernel {
            context: "loading the XDP program".into(),
            message: format!("the object has no program {PROGRAM_NAME}"),
        })?
        .try_into()
        .map_err(kernel_error("loading the XDP program"))
}

fn attach_new(
    program: &mut Xdp,
    interface: &str,
    wanted: XdpMode,
) -> Result<(aya::programs::xdp::XdpLinkId, AttachedMode)> {
    let attach = |program: &mut Xdp, flags, mode: AttachedMode| {
        program
            .attach(interface, flags)
            .map(|id| (id, mode))
            .map_err(kernel_error(format!(
                "attaching {mode:?} XDP to {interface}"
            )))
    };
    match wanted {
        XdpMode::Native => attach(program, KernelXdpMode::Driver, AttachedMode::Native),
        XdpMode::Generic => attach(program, KernelXdpMode::Skb, AttachedMode::Generic),
        XdpMode::Auto => match attach(program, KernelXdpMode::Driver, AttachedMode::Native) {
            Ok(attached) => Ok(attached),
            Err(error) => {
                warn!(interface, %error, "native XDP is not available; falling back to generic XDP (slower, same verdicts)");
                attach(program, KernelXdpMode::Skb, AttachedMode::Generic)
            }
        },
    }
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

/// Makes sure the pin directory exists on a bpffs (mounting one at /sys/fs/bpf if
/// needed), so that it can be locked before anything is loaded.
pub fn prepare_pin_root(pins: &Pins) -> Result<()> {
    ensure_bpffs(pins.root())?;
    fs::create_dir_all(pins.root()).map_err(io_error(format!("creating {}", pins.root().display())))
}

/// Mounts bpffs at `/sys/fs/bpf` when `pin_path` lives there and nothing is mounted yet
/// (systemd does this at boot; minimal systems and containers often don't).
fn ensure_bpffs(pin_path: &Path) -> Result<()> {
    let mut probe = pin_path.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if is_bpffs(&probe) {
        return Ok(());
    }
    let default_mount = Path::new("/sys/fs/bpf");
    if pin_path.starts_with(default_mount) && !is_bpffs(default_mount) {
        if !in_host_mount_namespace() {
            return Err(FilterError::Kernel {
                context: format!("pin_path {}", pin_path.display()),
                message: "no bpffs is mounted on /sys/fs/bpf in this mount namespace, and this daemon runs in a private one (e.g. under `ip netns exec`): a bpffs mounted here would vanish with the daemon, and the filter with it. Mount bpffs on /sys/fs/bpf in the host's namespace (`mount -t bpf bpf /sys/fs/bpf`), or start the daemon with `nsenter --net=/run/netns/NAME` instead".into(),
            });
        }
        fs::create_dir_all(default_mount).map_err(io_error("creating /sys/fs/bpf"))?;
        nix::mount::mount(
            Some("bpf"),
            default_mount,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|errno| FilterError::Io {
            context: "mounting bpffs on /sys/fs/bpf".into(),
            cause: errno.into(),
        })?;
        info!("mounted bpffs on /sys/fs/bpf");
        return Ok(());
    }
    Err(FilterError::Kernel {
        context: format!("pin_path {}", pin_path.display()),
        message: "is not on a BPF filesystem; use a path under /sys/fs/bpf or mount one with `mount -t bpf bpf DIR`".into(),
    })
}

/// Whether this process shares PID 1's mount namespace, where a mount outlives us.
fn in_host_mount_namespace() -> bool {
    match (
        fs::metadata("/proc/self/ns/mnt"),
        fs::metadata("/proc/1/ns/mnt"),
    ) {
        (Ok(ours), Ok(init)) => {
            use std::os::unix::fs::MetadataExt as _;
            ours.ino() == init.ino() && ours.dev() == init.dev()
        }
        _ => false,
    }
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|fs| fs.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Detaches the filter everywhere and removes every pin: the documented way to remove
/// allowlist from a host. Pinned links are released by unlinking their pins.
pub fn uninstall(pins: &Pins) -> Result<Vec<String>> {
    let interfaces = pins.pinned_interfaces()?;
    if pins.root().exists() {
        fs::remove_dir_all(pins.root())
            .map_err(io_error(format!("removing {}", pins.root().display())))?;
    }
    Ok(interfaces)
}

/// Which XDP mode each interface was attached in. The kernel's link info does not say,
/// so the daemon records it in `state_dir` for `status` after a takeover.
#[derive(Default, Serialize, Deserialize)]
struct AttachmentRecord(BTreeMap<String, AttachedMode>);

impl AttachmentRecord {
    const FILE: &'static str = "attachments.json";

    fn load(state_dir: &Path) -> BTreeMap<String, AttachedMode> {
        crate::durable::read_private(&state_dir.join(Self::FILE))
            .ok()
            .flatten()
            .and_then(|bytes| serde_json::from_slice::<AttachmentRecord>(&bytes).ok())
            .map(|record| record.0)
            .unwrap_or_default()
    }

    fn store(&self, state_dir: &Path) {
        let result = crate::durable::write_atomically(
            &state_dir.join(Self::FILE),
            &serde_json::to_vec_pretty(self).unwrap_or_default(),
        );
        if let Err(error) = result {
            warn!(%error, dir = %state_dir.display(), "could not record attachment modes; status may show the wrong XDP mode after a restart");
        }
    }
}
