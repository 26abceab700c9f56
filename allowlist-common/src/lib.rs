//! Everything that crosses the boundary between the XDP program and userspace.
//!
//! Each type here is read by the kernel side and written (or summed) by the daemon, so
//! both sides must agree on its exact bytes: every type is `#[repr(C)]`, made of
//! fixed-width fields with no padding, and its size is asserted at compile time.
//! Changing a layout is a breaking change for pinned maps: a daemon taking over maps
//! pinned by an older version would misread them.
#![no_std]

use core::mem::size_of;

/// Name of the XDP program in the object file and of its pin under `pin_path`.
pub const PROGRAM_NAME: &str = "allowlist";

/// Version of everything pinned with the program: which maps there are, their types,
/// key and value layouts, capacities and flags, and what their values mean. Bump
/// [`RELEASED_LAYOUT`] with any such change (a unit test in allowlist-userspace fails until
/// you do): a daemon never takes maps pinned in another layout as its own, it builds its
/// own beside them and switches the interfaces over (see
/// `allowlist-userspace/src/filter/layout.rs`). Layout 1 is every version before layouts
/// were stamped.
///
/// Test builds set `ALLOWLIST_TEST_LAYOUT` to get [`NEXT_TEST_LAYOUT`] (with
/// [`COUNTER_SLOTS`] grown), so the upgrade tests move between two real layouts; `cargo
/// xtask package` refuses to build with it set.
pub const LAYOUT_VERSION: u32 = match option_env!("ALLOWLIST_TEST_LAYOUT") {
    None => RELEASED_LAYOUT,
    Some(_) => NEXT_TEST_LAYOUT,
};

/// The layout of released builds.
pub const RELEASED_LAYOUT: u32 = 5;

/// The test build's layout: a number no released layout will reach, so a test build's
/// pins are never mistaken for a real later version's.
pub const NEXT_TEST_LAYOUT: u32 = 1000 + RELEASED_LAYOUT;

/// Array map with a single [`LayoutStamp`]: which layout the maps beside it are in and
/// whether they are live. The program never reads it.
pub const MAP_LAYOUT: &str = "LAYOUT";

/// Says what a directory of pinned maps is, in a format that never changes, so that every
/// version can read any other's. Layout: `version: u32` at 0, `state: u32` at 4,
/// `writer: [u8; 56]` at 8 (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayoutStamp {
    /// The [`LAYOUT_VERSION`] of the maps; 0 while they are being built.
    pub version: u32,
    /// [`LAYOUT_BUILDING`] or [`LAYOUT_LIVE`].
    pub state: u32,
    /// Who wrote them, e.g. `allowlistd 0.1.0`, NUL-padded UTF-8.
    pub writer: [u8; 56],
}

/// The maps are being filled; no interface may depend on them yet, and a crash leaves
/// them for the next start to finish or discard.
pub const LAYOUT_BUILDING: u32 = 0;
/// Every interface runs the program that uses these maps: they are the filter.
pub const LAYOUT_LIVE: u32 = 1;

impl Default for LayoutStamp {
    fn default() -> Self {
        LayoutStamp {
            version: 0,
            state: LAYOUT_BUILDING,
            writer: [0; 56],
        }
    }
}

/// The allowlist is kept twice per address family ("slots"). The program judges every
/// packet by the slot [`Control::active_slot`] names; the daemon rewrites the other
/// slot, flips the index, waits for packets in flight to finish, then brings the old
/// slot up to date. So a packet sees the whole old list or the whole new list.
///
/// Within a slot a source is judged in four steps, each exact: the coarse screen
/// ([`MAP_COARSE_SCREEN_V4`], small enough to stay in cache) and then the screen bitmap
/// ([`MAP_SCREEN_V4`]) rule out sources no listed prefix overlaps; the exact-host hash
/// ([`MAP_EXACT_V4`]) answers for listed hosts; the LPM trie ([`MAP_ALLOW_V4`]) answers
/// for everything else.
pub const SLOTS: usize = 2;

/// LPM trie maps of IPv4 sources, one per slot: every listed prefix that is not in
/// [`MAP_EXACT_V4`] (hosts are there, up to its capacity).
/// Key: `{ prefix_len: u32 (host order), addr: [u8; 4] (network order) }` (8 bytes),
/// which is `aya::maps::lpm_trie::Key<Ipv4Octets>` / `aya_ebpf::maps::lpm_trie::Key`.
/// Value: [`AllowRule`].
pub const MAP_ALLOW_V4: [&str; SLOTS] = ["ALLOW_V4_0", "ALLOW_V4_1"];
/// LPM trie maps of IPv6 sources, one per slot. Key: `{ prefix_len: u32, addr: [u8; 16] }`
/// (20 bytes). Value: [`AllowRule`].
pub const MAP_ALLOW_V6: [&str; SLOTS] = ["ALLOW_V6_0", "ALLOW_V6_1"];
/// Array map with a single [`Control`] record at index 0.
pub const MAP_CONTROL: &str = "CONTROL";
/// Per-CPU array like [`MAP_COUNTERS`], written by the daemon only: during an upgrade, the
/// older layout's counters as they were when carried over into this layout's, so that
/// what the old program counts until the switch can be added afterwards, by this start
/// or, after a crash, the next.
pub const MAP_CARRIED: &str = "CARRIED";

/// Per-CPU array of [`Counter`]: [`COUNTER_BLOCKS`] blocks of [`COUNTER_SLOTS`], one
/// per attached interface ([`MAP_IFINDEX_BLOCKS`] says which), indexed within a block by
/// [`Reason`]: index = `block × COUNTER_SLOTS + reason`. Each packet is counted once, in
/// its interface's block, so the totals are the sum over blocks. Block 0 is what no
/// attached interface owns: counts carried over from an older layout, those of
/// interfaces since detached, and those of interfaces beyond the blocks or the index range. Layouts 1 and 2 had a single block.
pub const MAP_COUNTERS: &str = "COUNTERS";

/// Array of `u32` indexed by interface index (ifindex): the block of [`MAP_COUNTERS`] the
/// interface's packets are counted in, written by the daemon before it attaches to the
/// interface. 0 (the default) is the block of no attached interface; interface indices
/// from [`MAX_COUNTED_IFINDEX`] up are counted there too. An array rather than a hash so
/// the per-packet lookup is a bounds check and a load.
pub const MAP_IFINDEX_BLOCKS: &str = "IFINDEX_BLOCKS";

/// Blocks of [`MAP_COUNTERS`]: block 0 plus one per attached interface, so up to 63
/// interfaces are counted apart. Never changes across layouts, so any version can fold
/// another's counters: an older layout's block size is its map's length divided by this.
pub const COUNTER_BLOCKS: u32 = 64;

/// Capacity of [`MAP_IFINDEX_BLOCKS`]: interface indices below it are counted per
/// interface (a host's indices stay far below unless it created 65,536 devices).
pub const MAX_COUNTED_IFINDEX: u32 = 65_536;
/// LRU hash of flows the host opened: [`FlowKey`] → [`FlowState`]. Written by the TC
/// egress program (and seeded by the daemon), read by XDP to pass replies.
pub const MAP_FLOWS: &str = "FLOWS";
/// Per-slot arrays of [`PortSet`], indexed by [`AllowRule::port_set`]; index
/// [`PUBLIC_PORT_SET`] holds the ports open to every source.
pub const MAP_PORT_SETS: [&str; SLOTS] = ["PORT_SETS_0", "PORT_SETS_1"];
/// Array map with a single [`Revert`] at index 0: what the program switches back to on
/// its own when a change made with `--confirm` is not confirmed in time.
pub const MAP_REVERT: &str = "REVERT";
/// LRU hash of IP fragment trains whose first fragment passed: [`FragmentKey`] → [`FlowState`].
/// Later fragments carry no ports, so they pass if their train's first fragment did.
pub const MAP_FRAGMENTS: &str = "FRAGMENTS";

/// Hash maps of the listed IPv4 hosts (/32), one per slot, in front of the trie: a hit
/// is the longest possible match, so it decides without walking the trie.
/// Key: `[u8; 4]` (network order). Value: [`AllowRule`].
pub const MAP_EXACT_V4: [&str; SLOTS] = ["EXACT_V4_0", "EXACT_V4_1"];
/// Hash maps of the listed IPv6 hosts (/128), one per slot. Key: `[u8; 16]`. Value:
/// [`AllowRule`].
pub const MAP_EXACT_V6: [&str; SLOTS] = ["EXACT_V6_0", "EXACT_V6_1"];
/// Per-slot bitmaps screening IPv4 sources before any lookup: bit
/// [`screen_bit_v4`]`(source)` is set iff some listed prefix overlaps the source's /24.
/// A clear bit means "listed nowhere", decided with one read of a cache-friendly array.
/// Array of `u64` words ([`SCREEN_WORDS`]), bit `b` in word `b / 64` at `1 << (b % 64)`;
/// mmapable, so the daemon writes it as memory.
pub const MAP_SCREEN_V4: [&str; SLOTS] = ["SCREEN_V4_0", "SCREEN_V4_1"];
/// The IPv6 counterpart: bit [`screen_bit_v6`] of the source's first 32 bits (a hash:
/// IPv6 allocations are /32 or longer, so their first 32 bits tell them apart).
pub const MAP_SCREEN_V6: [&str; SLOTS] = ["SCREEN_V6_0", "SCREEN_V6_1"];

/// Per-slot first-level screens, consulted before [`MAP_SCREEN_V4`]: bit
/// [`coarse_screen_bit`]`(screen_bit_v4(source))` is set iff some listed prefix overlaps
/// the source's /20, that is iff any of the [`SCREEN_BITS_PER_COARSE_BIT`] screen bits it
/// stands for is set. At 128 KiB it stays in the CPU's cache where the 2 MiB screen does
/// not, so a random unlisted source is mostly ruled out without a cache or TLB miss.
/// Same word layout as the screen; mmapable, written by the daemon beside it.
pub const MAP_COARSE_SCREEN_V4: [&str; SLOTS] = ["COARSE_V4_0", "COARSE_V4_1"];
/// The IPv6 counterpart, over [`screen_bit_v6`]: each bit stands for 16 hashed screen bits.
pub const MAP_COARSE_SCREEN_V6: [&str; SLOTS] = ["COARSE_V6_0", "COARSE_V6_1"];

/// How many screen bits one coarse screen bit stands for: 16 consecutive /24s, a /20.
pub const SCREEN_BITS_PER_COARSE_BIT: u32 = 1 << COARSE_SCREEN_SHIFT;
const COARSE_SCREEN_SHIFT: u32 = 4;
/// Bits in each coarse screen: one per IPv4 /20 (128 KiB per bitmap).
pub const COARSE_SCREEN_BITS: u32 = SCREEN_BITS / SCREEN_BITS_PER_COARSE_BIT;
/// `u64` words in each coarse screen.
pub const COARSE_SCREEN_WORDS: u32 = COARSE_SCREEN_BITS / 64;

/// The coarse screen bit standing for a screen bit (either family's).
#[inline(always)]
pub const fn coarse_screen_bit(screen_bit: u32) -> u32 {
    screen_bit >> COARSE_SCREEN_SHIFT
}

/// Bits in each screen bitmap: one per IPv4 /24 (2 MiB per bitmap).
pub const SCREEN_BITS: u32 = 1 << 24;
/// `u64` words in each screen bitmap.
pub const SCREEN_WORDS: u32 = SCREEN_BITS / 64;

/// Screen bit of an IPv4 source (network order): its /24.
#[inline(always)]
pub const fn screen_bit_v4(addr: [u8; 4]) -> u32 {
    u32::from_be_bytes(addr) >> 8
}

/// Screen bit of an IPv6 source, from its first 32 bits (network order): a
/// multiplicative hash onto [`SCREEN_BITS`], so neighbouring allocations spread out.
#[inline(always)]
pub const fn screen_bit_v6(first_32_bits: [u8; 4]) -> u32 {
    u32::from_be_bytes(first_32_bits).wrapping_mul(0x9E37_79B1) >> 8
}

/// Capacity of each [`MAP_EXACT_V4`] map. Hosts beyond it go to the trie, which keeps
/// the verdict exact and only costs them the trie walk. A hash map's bucket array is
/// sized by its capacity up front (16 bytes per bucket), so this is a memory trade-off.
pub const MAX_EXACT_V4: u32 = 1 << 20;
/// Capacity of each [`MAP_EXACT_V6`] map.
pub const MAX_EXACT_V6: u32 = 1 << 18;

/// `BPF_F_NO_PREALLOC`: hash map entries are allocated as they are added.
pub const BPF_F_NO_PREALLOC: u32 = 1;
/// `BPF_F_MMAPABLE`: an array map userspace can mmap.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Capacity of [`MAP_FLOWS`]. When full, the least recently used flow is evicted.
pub const MAX_FLOWS: u32 = 65_536;
/// Array of `u64` words (`BPF_F_MMAPABLE`): two generations of [`REMOTE_FILTER_WORDS`]
/// words each, the first at word 0. Bit [`remote_filter_bit`]`(remote)` of a generation is
/// set for every remote address the flow table may hold a flow with, so the XDP program
/// looks a source up in [`MAP_FLOWS`] only when its bit in the generation
/// [`Control::remote_generation`] names is set: a flood from sources the host never
/// talked to skips the flow table. False positives cost a lookup, never a verdict.
///
/// The egress program sets a flow's bit in both generations before it records the flow
/// (the daemon likewise when it seeds or carries flows), so a bit is never missing for a
/// flow in the table. The daemon rebuilds the generation not in use from the flow table
/// (clear it, wait out the program runs in flight, set the bits of live flows) and then
/// switches [`Control::remote_generation`] to it, so bits of flows that ended do not pile
/// up.
pub const MAP_REMOTES: &str = "REMOTES";
/// Bits in each generation of [`MAP_REMOTES`] (128 KiB each): with [`MAX_FLOWS`] flows
/// at most, under 7 % of random sources find their bit set.
pub const REMOTE_FILTER_BITS: u32 = 1 << 20;
/// `u64` words in each generation of [`MAP_REMOTES`].
pub const REMOTE_FILTER_WORDS: u32 = REMOTE_FILTER_BITS / 64;

/// The [`MAP_REMOTES`] bit of a remote address (as [`FlowKey::remote`] holds it): the
/// address's four 32-bit words folded by xor, times a large odd constant, top 20 bits.
#[inline(always)]
pub const fn remote_filter_bit(remote: &Ipv6Octets) -> u32 {
    let mut folded = 0u32;
    let mut word = 0;
    while word < 4 {
        let at = word * 4;
        folded ^= u32::from_ne_bytes([remote[at], remote[at + 1], remote[at + 2], remote[at + 3]]);
        word += 1;
    }
    folded.wrapping_mul(0x9E37_79B1) >> (32 - 20)
}

/// Capacity of [`MAP_FRAGMENTS`].
pub const MAX_FRAGMENT_TRAINS: u32 = 4_096;
/// Capacity of each [`MAP_PORT_SETS`] array.
pub const MAX_PORT_SETS: u32 = 4_096;
/// Port ranges one [`PortSet`] can hold (after merging adjacent ranges).
pub const MAX_PORT_RANGES: usize = 16;
/// [`MAP_PORT_SETS`] index of the public ports (`public_ports` in the config).
pub const PUBLIC_PORT_SET: u32 = 0;

/// Idle time after which a tracked flow no longer admits replies, by protocol; every
/// packet the host sends on the flow starts it again. Close to conntrack's defaults for
/// established TCP (shortened: the table is small), UDP streams and ICMP.
pub const TCP_IDLE_NS: u64 = 2 * 3600 * 1_000_000_000;
pub const UDP_IDLE_NS: u64 = 180 * 1_000_000_000;
pub const ICMP_IDLE_NS: u64 = 30 * 1_000_000_000;
/// How long a fragment train admits further fragments after its first one.
pub const FRAGMENT_IDLE_NS: u64 = 30 * 1_000_000_000;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Capacity of each LPM trie. Tries are not preallocated: memory follows the entries
/// actually stored, so a high cap costs nothing until it is used.
pub const MAX_ENTRIES_PER_FAMILY: u32 = 2_000_000;

/// An IPv4 address in network byte order, the data part of an IPv4 LPM key.
pub type Ipv4Octets = [u8; 4];
/// An IPv6 address in network byte order, the data part of an IPv6 LPM key.
pub type Ipv6Octets = [u8; 16];

/// Size of an IPv4 LPM key as the kernel sees it: prefix length + address.
pub const LPM_KEY_V4_SIZE: usize = size_of::<u32>() + size_of::<Ipv4Octets>();
/// Size of an IPv6 LPM key as the kernel sees it: prefix length + address.
pub const LPM_KEY_V6_SIZE: usize = size_of::<u32>() + size_of::<Ipv6Octets>();

/// What a listed network may do. Layout: `flags: u32` at 0, `port_set: u32` at 4 (8 bytes).
/// `flags` holds the `RULE_*` bits below [`RULE_HIT_SHIFT`] and the prefix's hit counter
/// above ([`AllowRule::hit_counter`]).
///
/// The compile step folds overlapping entries into each prefix's rule (a port-scoped /32
/// inside an allow-all /24 allows all), so the longest match alone decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowRule {
    /// Bit set of `RULE_*` flags.
    pub flags: u32,
    /// With [`RULE_PORTS`]: index into the slot's [`MAP_PORT_SETS`] array.
    pub port_set: u32,
}

/// The entry allows all traffic from its network.
pub const RULE_ALLOW_ALL: u32 = 1;
/// The entry allows only the destination ports of its port set.
pub const RULE_PORTS: u32 = 2;

impl AllowRule {
    pub const ALLOW_ALL: Self = Self {
        flags: RULE_ALLOW_ALL,
        port_set: 0,
    };
}

/// A range of destination ports of one protocol, inclusive.
/// Layout: `protocol: u8` at 0, padding to 4, `first: u16` at 4, `last: u16` at 6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    /// An `IPPROTO_*` value (TCP, UDP).
    pub protocol: u8,
    pub _pad: [u8; 3],
    pub first: u16,
    pub last: u16,
}

/// The ports a rule allows. Layout: `len: u32` at 0, `_pad` at 4, `ranges` at 8
/// (8 + 16 × 8 = 136 bytes). Only the first `len` ranges count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSet {
    pub len: u32,
    pub _pad: u32,
    pub ranges: [PortRange; MAX_PORT_RANGES],
}

impl PortSet {
    /// Whether `protocol`/`port` is in the set. A bounded loop the verifier accepts.
    #[inline(always)]
    pub fn allows(&self, protocol: u8, port: u16) -> bool {
        let mut i = 0;
        while i < MAX_PORT_RANGES {
            if i as u32 >= self.len {
                return false;
            }
            let range = &self.ranges[i];
            if range.protocol == protocol && range.first <= port && port <= range.last {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// A flow as the replies see it. IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d).
/// For ICMP echo, `local_port` is the echo identifier and `remote_port` is 0.
/// Layout: `remote` at 0, `local` at 16, `remote_port` at 32, `local_port` at 34 (host
/// order), `protocol` at 36, padding to 40.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub remote: Ipv6Octets,
    pub local: Ipv6Octets,
    pub remote_port: u16,
    pub local_port: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// When a flow (or fragment train) last saw a packet the host sent, in
/// `bpf_ktime_get_boot_ns` nanoseconds. Layout: `last_seen_ns: u64` (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    pub last_seen_ns: u64,
}

/// A train of fragments of one datagram. Layout: `source` at 0, `destination` at 16,
/// `id: u32` at 32 (IPv4's 16-bit id widened), `protocol` at 36, padding to 40.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentKey {
    pub source: Ipv6Octets,
    pub destination: Ipv6Octets,
    pub id: u32,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// What the program does with packets that are not exempt.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Everything passes and nothing is parsed. Zero, so a freshly created control map
    /// is inert until the daemon has filled the lists and chosen a mode.
    Off = 0,
    /// Everything passes; packets that enforce would drop are counted as such.
    Monitor = 1,
    /// Listed sources pass, everything else from IP is dropped.
    Enforce = 2,
}

impl Mode {
    /// Decodes the raw value the program reads. Unknown values mean enforce: a
    /// corrupted control record must never open the host.
    #[inline(always)]
    pub const fn from_raw(raw: u32) -> Self {
        match raw {
            0 => Mode::Off,
            1 => Mode::Monitor,
            _ => Mode::Enforce,
        }
    }
}

/// The record the program reads once per packet.
/// Layout: `mode: u32` at 0, `active_slot: u32` at 4, `features: u32` at 8,
/// `remote_generation: u32` at 12 (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// A [`Mode`] as `u32`.
    pub mode: u32,
    /// Which slot of the per-slot maps (screens, exact hashes, tries, port sets) judges
    /// packets: 0 or 1.
    pub active_slot: u32,
    /// Bit set of `FEATURE_*`.
    pub features: u32,
    /// Which generation of [`MAP_REMOTES`] the program reads: 0 or 1.
    pub remote_generation: u32,
}

/// Replies to flows the host opened pass (`return_traffic = true`).
pub const FEATURE_RETURN_TRAFFIC: u32 = 1;
/// DHCP client replies (UDP 67→68, DHCPv6 547→546) pass.
pub const FEATURE_DHCP_CLIENT: u32 = 2;
/// IP the parser cannot see into (a third VLAN tag, PPPoE session, MPLS) passes, counted
/// as [`Reason::PassedEncapsulated`], instead of being judged by the mode
/// (`encapsulated_ip = "pass"`).
pub const FEATURE_PASS_ENCAPSULATED: u32 = 4;

/// A change made with `--confirm` is waiting for confirmation: the program reads
/// [`MAP_REVERT`] and, once its deadline has passed, reverts the mode itself. This is what
/// makes commit-confirm hold when the daemon is killed or userspace hangs. Only while this
/// bit is set does a packet pay for the extra lookup.
pub const FEATURE_REVERT_PENDING: u32 = 8;

/// The mode to go back to if a change made with `--confirm` is not confirmed by
/// `deadline_ns`. Layout: `deadline_ns: u64` at 0, `mode: u32` at 8, `fired: u32` at 12
/// (16 bytes).
///
/// The first packet judged at or after the deadline writes `mode` into the control
/// record, clears [`FEATURE_REVERT_PENDING`] there and sets `fired`, so a daemon that
/// was not running can tell on its next start that the kernel reverted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Revert {
    /// `bpf_ktime_get_boot_ns` (CLOCK_BOOTTIME) time of the deadline.
    pub deadline_ns: u64,
    /// A [`Mode`] as `u32`.
    pub mode: u32,
    /// 1 once the program has reverted; the daemon writes 0 when it arms a new deadline.
    pub fired: u32,
}

/// Packets and bytes counted for one [`Reason`] on one CPU.
/// Layout: `packets: u64` at 0, `bytes: u64` at 8 (16 bytes). Bytes are whole frames
/// as XDP sees them: Ethernet header included, FCS excluded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Why the program passed or dropped a packet; the index into a block of [`MAP_COUNTERS`].
/// Every packet is counted under exactly one reason, so the counters add up to the
/// traffic the interface received.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The source is on the list.
    PassedListed = 0,
    /// Not IPv4/IPv6 (ARP, LLDP, PPPoE discovery and PPP link control, …): the
    /// allowlist is about IP sources.
    PassedNonIp = 1,
    /// IPv6 neighbour discovery (ICMPv6 133–137, hop limit 255), which IPv6 needs to work.
    PassedExempt = 2,
    /// Mode is off.
    PassedOff = 3,
    /// Enforce: the source is not on the list.
    DroppedNotListed = 4,
    /// Enforce: the IP header is truncated or malformed, so its source cannot be trusted.
    DroppedMalformed = 5,
    /// Monitor: enforce would have dropped this packet (source not listed); passed.
    MonitorNotListed = 6,
    /// Monitor: enforce would have dropped this malformed packet; passed.
    MonitorMalformed = 7,
    /// A reply to a flow the host opened (or a later fragment of an admitted datagram).
    PassedReturnTraffic = 8,
    /// To a port in `public_ports`, from any source.
    PassedPublicPort = 9,
    /// A later fragment of a datagram whose first fragment passed (it carries no ports).
    PassedFragment = 12,
    /// Enforce: the source is listed, but only for other ports.
    DroppedPortNotAllowed = 10,
    /// Monitor: enforce would have dropped this packet (port not allowed); passed.
    MonitorPortNotAllowed = 11,
    /// Enforce: IP the parser cannot see into — behind a third VLAN tag, in a PPPoE
    /// session or under MPLS labels — so its source cannot be judged.
    DroppedEncapsulated = 13,
    /// Monitor: enforce would have dropped this encapsulated IP packet; passed.
    MonitorEncapsulated = 14,
    /// Encapsulated IP, passed because the operator opted out of dropping it
    /// ([`FEATURE_PASS_ENCAPSULATED`]).
    PassedEncapsulated = 15,
}

/// Counters in each block of [`MAP_COUNTERS`]; room is left for reasons added later so the
/// pinned map keeps its size. A reason's value never changes meaning (new reasons take
/// new values), so an upgrade carries counters over slot by slot.
pub const COUNTER_SLOTS: u32 = match option_env!("ALLOWLIST_TEST_LAYOUT") {
    None => 32,
    Some(_) => 48,
};

impl Reason {
    pub const ALL: [Reason; 16] = [
        Reason::PassedListed,
        Reason::PassedNonIp,
        Reason::PassedExempt,
        Reason::PassedOff,
        Reason::DroppedNotListed,
        Reason::DroppedMalformed,
        Reason::MonitorNotListed,
        Reason::MonitorMalformed,
        Reason::PassedReturnTraffic,
        Reason::PassedPublicPort,
        Reason::PassedFragment,
        Reason::DroppedPortNotAllowed,
        Reason::MonitorPortNotAllowed,
        Reason::DroppedEncapsulated,
        Reason::MonitorEncapsulated,
        Reason::PassedEncapsulated,
    ];

    /// Whether the program drops packets counted under this reason.
    #[inline(always)]
    pub const fn drops(self) -> bool {
        matches!(
            self,
            Reason::DroppedNotListed
                | Reason::DroppedMalformed
                | Reason::DroppedPortNotAllowed
                | Reason::DroppedEncapsulated
        )
    }

    /// Stable name used in `allowlistctl stats` and its JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassedListed => "passed_listed",
            Reason::PassedNonIp => "passed_non_ip",
            Reason::PassedExempt => "passed_exempt",
            Reason::PassedOff => "passed_off",
            Reason::DroppedNotListed => "dropped_not_listed",
            Reason::DroppedMalformed => "dropped_malformed",
            Reason::MonitorNotListed => "monitor_would_drop",
            Reason::MonitorMalformed => "monitor_malformed",
            Reason::PassedReturnTraffic => "passed_return_traffic",
            Reason::PassedPublicPort => "passed_public_port",
            Reason::PassedFragment => "passed_fragment",
            Reason::DroppedPortNotAllowed => "dropped_port_not_allowed",
            Reason::MonitorPortNotAllowed => "monitor_port_not_allowed",
            Reason::DroppedEncapsulated => "dropped_encapsulated",
            Reason::MonitorEncapsulated => "monitor_encapsulated",
            Reason::PassedEncapsulated => "passed_encapsulated",
        }
    }
}

const _: () = assert!(size_of::<AllowRule>() == 8);
const _: () = assert!(size_of::<Control>() == 16);
const _: () = assert!(size_of::<Revert>() == 16);
const _: () = assert!(size_of::<LayoutStamp>() == 64);
const _: () = assert!(size_of::<PortRange>() == 8);
const _: () = assert!(size_of::<PortSet>() == 8 + 8 * MAX_PORT_RANGES);
const _: () = assert!(size_of::<FlowKey>() == 40);
const _: () = assert!(size_of::<FlowState>() == 8);
const _: () = assert!(size_of::<FragmentKey>() == 40);
const _: () = assert!(size_of::<Counter>() == 16);
const _: () = assert!(LPM_KEY_V4_SIZE == 8);
const _: () = assert!(SCREEN_BITS.is_multiple_of(64));
const _: () = assert!(COARSE_SCREEN_BITS.is_multiple_of(64));
const _: () = assert!(LPM_KEY_V6_SIZE == 20);
const _: () = assert!((Reason::ALL.len() as u32) <= COUNTER_SLOTS);
const _: () = assert!(COUNTER_SLOTS.checked_mul(COUNTER_BLOCKS).is_some());

// ---- Dropped sources (issue 13: `allowlistctl top`) -------------------------------------
// A block of its own so that it merges apart from the layout changes of other work.

/// LRU per-CPU hash of the sources the program dropped, or would have dropped in monitor
/// mode, because they are not listed or not for that port: [`DroppedSourceKey`] →
/// [`DroppedSourceStats`] (one value per CPU; the daemon folds them). Only the drop path
/// writes it (one update per dropped packet), and only while [`FEATURE_RECORD_DROPS`] is
/// set. Bounded: when full, the kernel evicts the least recently updated source, so a
/// source that keeps sending stays, and a flood of one-packet random sources evicts no
/// more than any LRU must. Its capacity is set by the daemon when it creates the map
/// (`dropped_sources` in the config).
pub const MAP_DROPPED_SOURCES: &str = "DROPPED_SOURCES";
/// Capacity of [`MAP_DROPPED_SOURCES`] when the config does not say.
pub const DEFAULT_DROPPED_SOURCES: u32 = 4_096;
/// Largest capacity the config may give [`MAP_DROPPED_SOURCES`]. Its values are per CPU
/// and preallocated, so it takes about `capacity × (CPUs × 24 + 100)` bytes: 65,536
/// sources on 64 CPUs are about 100 MiB.
pub const MAX_DROPPED_SOURCES: u32 = 65_536;
/// The program records dropped and would-be-dropped sources in [`MAP_DROPPED_SOURCES`].
pub const FEATURE_RECORD_DROPS: u32 = 16;

/// A dropped source as [`MAP_DROPPED_SOURCES`] keys it: the same source on another
/// interface or for another reason is another entry. IPv4 sources are IPv4-mapped
/// (::ffff:a.b.c.d). Layout: `source` at 0, `ifindex: u32` at 16, `reason: u32` (a
/// [`Reason`]) at 20 (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DroppedSourceKey {
    pub source: Ipv6Octets,
    /// The interface the packets arrived on.
    pub ifindex: u32,
    /// A [`Reason`] as `u32`: one of the not-listed and port-not-allowed reasons, dropped
    /// or monitored.
    pub reason: u32,
}

/// What one CPU saw of a dropped source. Layout: `packets: u64` at 0, `bytes: u64` at 8,
/// `last_seen_jiffies: u64` at 16 (24 bytes): the kernel's tick count, as for
/// [`EntryHits`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DroppedSourceStats {
    pub packets: u64,
    pub bytes: u64,
    pub last_seen_jiffies: u64,
}

impl Reason {
    /// Whether the program records the source of packets counted under this reason in
    /// [`MAP_DROPPED_SOURCES`]: sources judged and found wanting. Malformed and
    /// encapsulated packets have no source worth trusting or seeing.
    #[inline(always)]
    pub const fn records_source(self) -> bool {
        matches!(
            self,
            Reason::DroppedNotListed
                | Reason::DroppedPortNotAllowed
                | Reason::MonitorNotListed
                | Reason::MonitorPortNotAllowed
        )
    }
}

/// Per-CPU array with one [`DropAdmission`]: how many new sources this CPU put into
/// [`MAP_DROPPED_SOURCES`] in the current window of [`ADMISSION_WINDOW_JIFFIES`] kernel
/// ticks. Inserting into an LRU is what a drop costs most (an eviction, per-CPU values to
/// clear), so new sources enter at most [`NEW_DROPPED_SOURCES_PER_WINDOW`] a window per
/// CPU, and a flood of random sources cannot flush the table faster than that. While a
/// CPU's window is spent (a flood), a source displaced from its slot of
/// [`MAP_RECENT_DROPS`] with a single packet is not looked up in the table either: that
/// lookup is what a flood of one-packet sources would cost, and such a source is either
/// new (not admitted anyway) or loses that one packet from its count.
pub const MAP_DROP_ADMISSION: &str = "DROP_ADMISSION";
/// New sources one CPU records per window at most; the rest of that window's new sources
/// are dropped and counted by reason, but not recorded.
pub const NEW_DROPPED_SOURCES_PER_WINDOW: u64 = 256;
/// The admission window in kernel ticks (jiffies, read with one load): 256 ticks are
/// 0.26 s to 2.56 s by the kernel's HZ (1000 to 100), so 100 to 1,000 new sources a
/// second per CPU.
pub const ADMISSION_WINDOW_JIFFIES: u64 = 256;

/// Layout: `window_start_jiffies: u64` at 0, `admitted: u64` at 8 (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropAdmission {
    pub window_start_jiffies: u64,
    pub admitted: u64,
}

/// Per-CPU array of [`RECENT_DROP_SLOTS`] [`RecentDrop`]s in front of
/// [`MAP_DROPPED_SOURCES`]: a direct-mapped cache, so that a source that keeps sending
/// costs an array slot's update per packet instead of a hash lookup. A source lands in
/// the slot its key hashes to ([`RecentDrop::slot_of`]); the one it displaces moves into
/// [`MAP_DROPPED_SOURCES`] (added to its entry there, or admitted as a new one). The
/// daemon reads both and adds them up, wherever a source is, so the hash is not part of
/// the layout: a source in another slot than its hash says is still counted.
pub const MAP_RECENT_DROPS: &str = "RECENT_DROPS";
/// Slots of [`MAP_RECENT_DROPS`] per CPU (a power of two).
pub const RECENT_DROP_SLOTS: u32 = 1024;

/// One slot of [`MAP_RECENT_DROPS`]: a source and what this CPU counted of it since it
/// took the slot. Empty while `stats.packets` is 0. Layout: `key` at 0 (24 bytes),
/// `stats` at 24 (24 bytes): 48 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentDrop {
    pub key: DroppedSourceKey,
    pub stats: DroppedSourceStats,
}

impl RecentDrop {
    /// The slot of `key`: a multiplicative hash of its words (Fibonacci hashing), cheap
    /// enough for every dropped packet.
    #[inline(always)]
    pub fn slot_of(key: &DroppedSourceKey) -> u32 {
        let s = &key.source;
        let word = |i: usize| u32::from_ne_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
        let mixed = word(0)
            ^ word(4)
            ^ word(8)
            ^ word(12).rotate_left(7)
            ^ key.ifindex.rotate_left(13)
            ^ key.reason.rotate_left(27);
        mixed.wrapping_mul(0x9E37_79B1) >> (32 - RECENT_DROP_SLOTS.trailing_zeros())
    }
}

const _: () = assert!(RECENT_DROP_SLOTS.is_power_of_two());
const _: () = assert!(size_of::<RecentDrop>() == 48);
const _: () = assert!(size_of::<DropAdmission>() == 16);
const _: () = assert!(size_of::<DroppedSourceKey>() == 24);
const _: () = assert!(size_of::<DroppedSourceStats>() == 24);
const _: () = assert!(DEFAULT_DROPPED_SOURCES <= MAX_DROPPED_SOURCES);
// ---- end of dropped sources -------------------------------------------------------------

// ---- Hits per entry (issue 13: `allowlistctl list` hits) ---------------------------------
// A block of its own so that it merges apart from the layout changes of other work.

/// Per-CPU array of [`EntryHits`]: what each listed prefix admitted. Indexed by the hit
/// counter of the prefix's rule ([`AllowRule::hit_counter`], in the bits of
/// [`AllowRule::flags`] from [`RULE_HIT_SHIFT`] up), which the daemon gives each listed
/// network for as long as it is listed, in both slots alike, so counts survive list
/// swaps and (the map is pinned, and the counter read back from the rules) restarts.
/// Counter 0 counts nothing: rules of prefixes beyond [`MAX_COUNTED_ENTRIES`] carry it.
pub const MAP_ENTRY_HITS: &str = "ENTRY_HITS";
/// Listed prefixes whose hits are counted (counter 0 is not used). Per CPU and
/// preallocated: `MAX_COUNTED_ENTRIES × CPUs × 24` bytes (25 MiB on 64 CPUs).
pub const MAX_COUNTED_ENTRIES: u32 = 16_384;
/// [`AllowRule::flags`] holds the rule's hit counter from this bit up; the `RULE_*` bits
/// are below it.
pub const RULE_HIT_SHIFT: u32 = 16;

impl AllowRule {
    /// The index into [`MAP_ENTRY_HITS`] of the prefix this rule belongs to; 0: none.
    #[inline(always)]
    pub const fn hit_counter(&self) -> u32 {
        self.flags >> RULE_HIT_SHIFT
    }

    /// This rule, counting its hits at `counter` (0: not counted).
    pub const fn with_hit_counter(self, counter: u32) -> Self {
        Self {
            flags: (self.flags & ((1 << RULE_HIT_SHIFT) - 1)) | (counter << RULE_HIT_SHIFT),
            ..self
        }
    }
}

/// What one CPU admitted for one listed prefix. Layout: `packets: u64` at 0, `bytes: u64`
/// at 8, `last_hit_jiffies: u64` at 16 (24 bytes): the kernel's tick count
/// (`bpf_jiffies64`, which the verifier turns into one load; a clock helper call would
/// cost the listed path more than the rest of counting), put on the wall clock by the
/// daemon through [`MAP_CLOCK_PROBE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryHits {
    pub packets: u64,
    pub bytes: u64,
    pub last_hit_jiffies: u64,
}

/// Name of the XDP program that only writes the kernel's tick count (jiffies) into
/// [`MAP_CLOCK_PROBE`]: the daemon runs it with `BPF_PROG_TEST_RUN` to learn "now" on the
/// clock the filter stamps hits and drops with. Never attached.
pub const CLOCK_PROBE_PROGRAM: &str = "read_jiffies";
/// Array map with one `u64`: the jiffies [`CLOCK_PROBE_PROGRAM`] last read.
pub const MAP_CLOCK_PROBE: &str = "CLOCK_PROBE";

const _: () = assert!(size_of::<EntryHits>() == 24);
const _: () = assert!(MAX_COUNTED_ENTRIES < (1 << (32 - RULE_HIT_SHIFT)));
const _: () = assert!(RULE_ALLOW_ALL < (1 << RULE_HIT_SHIFT) && RULE_PORTS < (1 << RULE_HIT_SHIFT));
// ---- end of hits per entry --------------------------------------------------------------

#[cfg(feature = "user")]
mod pod {
    // Each type is repr(C), fixed-width, without padding: the sizes asserted above.
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AllowRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Control {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Revert {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LayoutStamp {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortSet {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FragmentKey {}
    // SAFETY: as above (dropped sources).
    unsafe impl aya::Pod for super::DroppedSourceKey {}
    // SAFETY: as above (dropped sources).
    unsafe impl aya::Pod for super::DroppedSourceStats {}
    // SAFETY: as above (dropped sources).
    unsafe impl aya::Pod for super::DropAdmission {}
    // SAFETY: as above (hits per entry).
    unsafe impl aya::Pod for super::EntryHits {}
    // SAFETY: as above (recent dropped sources: two such structs, no padding).
    unsafe impl aya::Pod for super::RecentDrop {}
}
