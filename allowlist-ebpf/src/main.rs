//! The XDP allowlist: every packet's IP source is looked up in the active allowlist and
//! the packet passes or drops according to the mode, counted under exactly one reason.
//!
//! Read top to bottom: entry point → judge (mode, parse, lookup) → count.
#![no_std]
#![no_main]

use core::mem::size_of;

use allowlist_common::{
    AllowRule, Control, Counter, Ipv4Octets, Ipv6Octets, Mode, Reason, COUNTER_SLOTS,
    MAX_ENTRIES_PER_FAMILY,
};
use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, LpmTrie, PerCpuArray},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr};

// Map names must match allowlist_common::MAP_* (the symbol name is the map name).
// All are pinned by name so a restarted daemon finds the state the program is using.
#[map]
static ALLOW_V4_0: LpmTrie<Ipv4Octets, AllowRule> = LpmTrie::pinned(MAX_ENTRIES_PER_FAMILY, 0);
#[map]
static ALLOW_V4_1: LpmTrie<Ipv4Octets, AllowRule> = LpmTrie::pinned(MAX_ENTRIES_PER_FAMILY, 0);
#[map]
static ALLOW_V6_0: LpmTrie<Ipv6Octets, AllowRule> = LpmTrie::pinned(MAX_ENTRIES_PER_FAMILY, 0);
#[map]
static ALLOW_V6_1: LpmTrie<Ipv6Octets, AllowRule> = LpmTrie::pinned(MAX_ENTRIES_PER_FAMILY, 0);
#[map]
static CONTROL: Array<Control> = Array::pinned(1, 0);
#[map]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
/// VLAN tags we look through: a customer tag, optionally inside a service tag (QinQ).
const MAX_VLAN_TAGS: usize = 2;
const VLAN_TAG_LEN: usize = 4;

const IPPROTO_ICMPV6: u8 = 58;
const ICMPV6_ROUTER_SOLICITATION: u8 = 133;
const ICMPV6_REDIRECT: u8 = 137;
/// RFC 4861 requires hosts to discard neighbour discovery not sent with hop limit 255,
/// so only on-link ND is exempt; anything else with those types is judged normally.
const ND_HOP_LIMIT: u8 = 255;

#[xdp]
pub fn allowlist(ctx: XdpContext) -> u32 {
    let reason = judge(&ctx);
    count(reason, ctx.data_end() - ctx.data());
    if reason.drops() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Where the packet's IP source could be found, if anywhere.
enum Source {
    NonIp,
    NeighbourDiscovery,
    Malformed,
    V4(Ipv4Octets),
    V6(Ipv6Octets),
}

fn judge(ctx: &XdpContext) -> Reason {
    // A missing control record cannot happen (array maps always hold their slots); if
    // it did, enforcing is the safe reading.
    let control = CONTROL.get(0).copied().unwrap_or(Control {
        mode: Mode::Enforce as u32,
        active_slot: 0,
    });
    let mode = Mode::from_raw(control.mode);
    if mode == Mode::Off {
        return Reason::PassedOff;
    }

    let listed = match source_of(ctx) {
        Source::NonIp => return Reason::PassedNonIp,
        Source::NeighbourDiscovery => return Reason::PassedExempt,
        Source::Malformed => {
            debug!(ctx, "malformed IP header");
            return match mode {
                Mode::Enforce => Reason::DroppedMalformed,
                _ => Reason::MonitorMalformed,
            };
        }
        Source::V4(addr) => is_listed_v4(control.active_slot, addr),
        Source::V6(addr) => is_listed_v6(control.active_slot, addr),
    };

    match (listed, mode) {
        (true, _) => Reason::PassedListed,
        (false, Mode::Enforce) => Reason::DroppedNotListed,
        (false, _) => Reason::MonitorNotListed,
    }
}

fn source_of(ctx: &XdpContext) -> Source {
    let Some(mut ether_type) = read_be16(ctx, 2 * 6) else {
        // Shorter than an Ethernet header: nothing IP about it.
        return Source::NonIp;
    };
    let mut offset = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        // The tag's own ether type follows its 2-byte TCI.
        let Some(inner) = read_be16(ctx, offset + 2) else {
            return Source::Malformed;
        };
        ether_type = inner;
        offset += VLAN_TAG_LEN;
    }

    match ether_type {
        ETH_P_IPV4 => ipv4_source(ctx, offset),
        ETH_P_IPV6 => ipv6_source(ctx, offset),
        _ => Source::NonIp,
    }
}

fn ipv4_source(ctx: &XdpContext, offset: usize) -> Source {
    let Some(header) = ptr_at::<Ipv4Hdr>(ctx, offset) else {
        return Source::Malformed;
    };
    // SAFETY: `header` is bounds-checked for the whole fixed header; only plain byte
    // fields are read (never the enum-typed `proto`, which packet bytes may not fit).
    let (version_ihl, total_len, src) = unsafe {
        (
            *(header as *const u8),
            u16::from_be_bytes((*header).tot_len),
            (*header).src_addr,
        )
    };
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4
        || header_len < Ipv4Hdr::LEN
        || usize::from(total_len) < header_len
        || offset + header_len > ctx.data_end() - ctx.data()
    {
        return Source::Malformed;
    }
    Source::V4(src)
}

fn ipv6_source(ctx: &XdpContext, offset: usize) -> Source {
    let Some(header) = ptr_at::<Ipv6Hdr>(ctx, offset) else {
        return Source::Malformed;
    };
    // SAFETY: bounds-checked above; only byte fields are read.
    let (version, hop_limit, src) = unsafe {
        (
            *(header as *const u8) >> 4,
            (*header).hop_limit,
            (*header).src_addr,
        )
    };
    if version != 6 {
        return Source::Malformed;
    }
    // SAFETY: next_hdr is read as the byte it is, not as network_types' IpProto enum.
    let next_header = unsafe { *((header as *const u8).add(6)) };
    if next_header == IPPROTO_ICMPV6 && hop_limit == ND_HOP_LIMIT {
        if let Some(icmp_type) = ptr_at::<u8>(ctx, offset + Ipv6Hdr::LEN) {
            // SAFETY: bounds-checked by ptr_at.
            let icmp_type = unsafe { *icmp_type };
            if (ICMPV6_ROUTER_SOLICITATION..=ICMPV6_REDIRECT).contains(&icmp_type) {
                return Source::NeighbourDiscovery;
            }
        }
    }
    Source::V6(src)
}

#[inline(always)]
fn is_listed_v4(slot: u32, addr: Ipv4Octets) -> bool {
    let key = Key::new(32, addr);
    match slot {
        0 => ALLOW_V4_0.get(&key).is_some(),
        _ => ALLOW_V4_1.get(&key).is_some(),
    }
}

#[inline(always)]
fn is_listed_v6(slot: u32, addr: Ipv6Octets) -> bool {
    let key = Key::new(128, addr);
    match slot {
        0 => ALLOW_V6_0.get(&key).is_some(),
        _ => ALLOW_V6_1.get(&key).is_some(),
    }
}

#[inline(always)]
fn count(reason: Reason, frame_len: usize) {
    if let Some(counter) = COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, so no other program instance writes it concurrently.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += frame_len as u64;
        }
    }
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn read_be16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    // SAFETY: bounds-checked by ptr_at; unaligned because headers sit at any offset.
    ptr_at::<[u8; 2]>(ctx, offset).map(|p| u16::from_be_bytes(unsafe { p.read_unaligned() }))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
