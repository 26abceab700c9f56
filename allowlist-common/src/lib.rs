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

/// The allowlist is kept twice per address family ("slots"). The program judges every
/// packet by the slot [`Control::active_slot`] names; the daemon rewrites the other
/// slot, flips the index, waits for packets in flight to finish, then brings the old
/// slot up to date. So a packet sees the whole old list or the whole new list.
pub const SLOTS: usize = 2;

/// LPM trie maps of IPv4 sources, one per slot.
/// Key: `{ prefix_len: u32 (host order), addr: [u8; 4] (network order) }` (8 bytes),
/// which is `aya::maps::lpm_trie::Key<Ipv4Octets>` / `aya_ebpf::maps::lpm_trie::Key`.
/// Value: [`AllowRule`].
pub const MAP_ALLOW_V4: [&str; SLOTS] = ["ALLOW_V4_0", "ALLOW_V4_1"];
/// LPM trie maps of IPv6 sources, one per slot. Key: `{ prefix_len: u32, addr: [u8; 16] }`
/// (20 bytes). Value: [`AllowRule`].
pub const MAP_ALLOW_V6: [&str; SLOTS] = ["ALLOW_V6_0", "ALLOW_V6_1"];
/// Array map with a single [`Control`] record at index 0.
pub const MAP_CONTROL: &str = "CONTROL";
/// Per-CPU array of [`Counter`], indexed by [`Reason`].
pub const MAP_COUNTERS: &str = "COUNTERS";

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

/// What a listed network may do. Layout: `flags: u32` (4 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowRule {
    /// Bit set of `RULE_*` flags.
    pub flags: u32,
}

/// The entry allows all traffic from its network (every entry today).
pub const RULE_ALLOW_ALL: u32 = 1;

impl AllowRule {
    pub const ALLOW_ALL: Self = Self {
        flags: RULE_ALLOW_ALL,
    };
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
/// Layout: `mode: u32` at 0, `active_slot: u32` at 4 (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// A [`Mode`] as `u32`.
    pub mode: u32,
    /// Which slot of [`MAP_ALLOW_V4`] / [`MAP_ALLOW_V6`] judges packets: 0 or 1.
    pub active_slot: u32,
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

/// Why the program passed or dropped a packet; the index into [`MAP_COUNTERS`].
/// Every packet is counted under exactly one reason, so the counters add up to the
/// traffic the interface received.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The source is on the list.
    PassedListed = 0,
    /// Not IPv4/IPv6 (ARP, LLDP, …): the allowlist is about IP sources.
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
}

/// Number of slots in [`MAP_COUNTERS`]; room is left for reasons added later so the
/// pinned map keeps its size.
pub const COUNTER_SLOTS: u32 = 32;

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::PassedListed,
        Reason::PassedNonIp,
        Reason::PassedExempt,
        Reason::PassedOff,
        Reason::DroppedNotListed,
        Reason::DroppedMalformed,
        Reason::MonitorNotListed,
        Reason::MonitorMalformed,
    ];

    /// Whether the program drops packets counted under this reason.
    #[inline(always)]
    pub const fn drops(self) -> bool {
        matches!(self, Reason::DroppedNotListed | Reason::DroppedMalformed)
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
        }
    }
}

const _: () = assert!(size_of::<AllowRule>() == 4);
const _: () = assert!(size_of::<Control>() == 8);
const _: () = assert!(size_of::<Counter>() == 16);
const _: () = assert!(LPM_KEY_V4_SIZE == 8);
const _: () = assert!(LPM_KEY_V6_SIZE == 20);
const _: () = assert!((Reason::ALL.len() as u32) <= COUNTER_SLOTS);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is repr(C), fixed-width, without padding (sizes asserted above).
    unsafe impl aya::Pod for super::AllowRule {}
    unsafe impl aya::Pod for super::Control {}
    unsafe impl aya::Pod for super::Counter {}
}
