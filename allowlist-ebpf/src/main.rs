//! The XDP allowlist: every packet's IP source is looked up in the active allowlist and
//! the packet passes or drops according to the mode, counted under exactly one reason.
//! A TC egress program (at the end) remembers the flows the host opens, so their
//! replies pass without their senders being listed.
//!
//! Read top to bottom: entry point → judge (mode, parse, lookup, ports, replies) → count.
#![no_std]
#![no_main]
// Atomic read-modify-write of a map value: core's atomic types offer none for BPF.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod parse;

// The crate's library target is there for allowlist-userspace's build script (lib.rs).
use allowlist_ebpf as _;

use core::intrinsics::{atomic_or, AtomicOrdering};

use allowlist_common::{coarse_screen_bit, COARSE_SCREEN_WORDS};
use allowlist_common::{remote_filter_bit, REMOTE_FILTER_WORDS};
use allowlist_common::{
    screen_bit_v4, screen_bit_v6, AllowRule, Control, Counter, FlowKey, FlowState, FragmentKey,
    Ipv4Octets, Ipv6Octets, LayoutStamp, Mode, PortSet, Reason, Revert, BPF_F_MMAPABLE,
    BPF_F_NO_PREALLOC, COUNTER_SLOTS, FEATURE_DHCP_CLIENT, FEATURE_PASS_ENCAPSULATED,
    FEATURE_RETURN_TRAFFIC, FEATURE_REVERT_PENDING, FRAGMENT_IDLE_NS, ICMP_IDLE_NS, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, MAX_ENTRIES_PER_FAMILY, MAX_EXACT_V4, MAX_EXACT_V6,
    MAX_FLOWS, MAX_FRAGMENT_TRAINS, MAX_PORT_SETS, PUBLIC_PORT_SET, RULE_ALLOW_ALL, RULE_PORTS,
    SCREEN_WORDS, TCP_IDLE_NS, UDP_IDLE_NS,
};
use allowlist_common::{
    DropAdmission, DroppedSourceKey, DroppedSourceStats, ADMISSION_WINDOW_JIFFIES,
    DEFAULT_DROPPED_SOURCES, FEATURE_RECORD_DROPS, NEW_DROPPED_SOURCES_PER_WINDOW,
};
use allowlist_common::{EntryHits, MAX_COUNTED_ENTRIES};
use allowlist_common::{RecentDrop, RECENT_DROP_SLOTS};
use allowlist_common::{COUNTER_BLOCKS, MAX_COUNTED_IFINDEX};
use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK},
    helpers::{bpf_jiffies64, bpf_ktime_get_boot_ns, bpf_skb_load_bytes, bpf_xdp_load_bytes},
    macros::{classifier, map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use parse::{Frame, IpHeader, Network, Transport, FIRST_FRAGMENT, LATER_FRAGMENT};

// Map names must match allowlist_common::MAP_* (the symbol name is the map name).
// All are pinned by name so a restarted daemon finds the state the program is using.
#[map]
static COARSE_V4_0: Array<u64> = Array::pinned(COARSE_SCREEN_WORDS, BPF_F_MMAPABLE);
#[map]
static COARSE_V4_1: Array<u64> = Array::pinned(COARSE_SCREEN_WORDS, BPF_F_MMAPABLE);
#[map]
static COARSE_V6_0: Array<u64> = Array::pinned(COARSE_SCREEN_WORDS, BPF_F_MMAPABLE);
#[map]
static COARSE_V6_1: Array<u64> = Array::pinned(COARSE_SCREEN_WORDS, BPF_F_MMAPABLE);
#[map]
static SCREEN_V4_0: Array<u64> = Array::pinned(SCREEN_WORDS, BPF_F_MMAPABLE);
#[map]
static SCREEN_V4_1: Array<u64> = Array::pinned(SCREEN_WORDS, BPF_F_MMAPABLE);
#[map]
static SCREEN_V6_0: Array<u64> = Array::pinned(SCREEN_WORDS, BPF_F_MMAPABLE);
#[map]
static SCREEN_V6_1: Array<u64> = Array::pinned(SCREEN_WORDS, BPF_F_MMAPABLE);
#[map]
static EXACT_V4_0: HashMap<Ipv4Octets, AllowRule> =
    HashMap::pinned(MAX_EXACT_V4, BPF_F_NO_PREALLOC);
#[map]
static EXACT_V4_1: HashMap<Ipv4Octets, AllowRule> =
    HashMap::pinned(MAX_EXACT_V4, BPF_F_NO_PREALLOC);
#[map]
static EXACT_V6_0: HashMap<Ipv6Octets, AllowRule> =
    HashMap::pinned(MAX_EXACT_V6, BPF_F_NO_PREALLOC);
#[map]
static EXACT_V6_1: HashMap<Ipv6Octets, AllowRule> =
    HashMap::pinned(MAX_EXACT_V6, BPF_F_NO_PREALLOC);
#[map]
static ALLOW_V4_0: LpmTrie<Ipv4Octets, AllowRule> = LpmTrie::pinned(MAX_ENTRIES_PER_FAMILY, 0);
#[map]
static ALLOW_V4_1: LpmTrie<Ipv4Octets, AllowRule> = LpmTrie::pinned(MAX_ENTRIES_PER_FAMILY, 0);
#[map]
static ALLOW_V6_0: LpmTrie<Ipv6Octets, AllowRule> = LpmTrie::pinned(MAX_ENTRIES_PER_FAMILY, 0);
#[map]
static ALLOW_V6_1: LpmTrie<Ipv6Octets, AllowRule> = LpmTrie::pinned(MAX_ENTRIES_PER_FAMILY, 0);
#[map]
static PORT_SETS_0: Array<PortSet> = Array::pinned(MAX_PORT_SETS, 0);
#[map]
static PORT_SETS_1: Array<PortSet> = Array::pinned(MAX_PORT_SETS, 0);
#[map]
static CONTROL: Array<Control> = Array::pinned(1, 0);
#[map]
static REVERT: Array<Revert> = Array::pinned(1, 0);
/// Read and written by the daemon only (see `LayoutStamp`).
#[map]
static LAYOUT: Array<LayoutStamp> = Array::pinned(1, 0);
#[map]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(COUNTER_SLOTS * COUNTER_BLOCKS, 0);
#[map]
static IFINDEX_BLOCKS: Array<u32> = Array::pinned(MAX_COUNTED_IFINDEX, 0);
/// Read and written by the daemon only, during upgrades (see `MAP_CARRIED`).
#[map]
static CARRIED: PerCpuArray<Counter> = PerCpuArray::pinned(COUNTER_SLOTS, 0);
#[map]
static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::pinned(MAX_FLOWS, 0);
#[map]
static REMOTES: Array<u64> = Array::pinned(2 * REMOTE_FILTER_WORDS, BPF_F_MMAPABLE);
#[map]
static FRAGMENTS: LruHashMap<FragmentKey, FlowState> = LruHashMap::pinned(MAX_FRAGMENT_TRAINS, 0);
/// What each listed prefix admitted, by its rule's hit counter.
#[map]
static ENTRY_HITS: PerCpuArray<EntryHits> = PerCpuArray::pinned(MAX_COUNTED_ENTRIES, 0);
/// Sources dropped (or that monitor would drop); the daemon sets the capacity at load.
#[map]
static DROPPED_SOURCES: LruPerCpuHashMap<DroppedSourceKey, DroppedSourceStats> =
    LruPerCpuHashMap::pinned(DEFAULT_DROPPED_SOURCES, 0);
/// New sources each CPU recorded this second (see `allowlist_common::MAP_DROP_ADMISSION`).
#[map]
static DROP_ADMISSION: PerCpuArray<DropAdmission> = PerCpuArray::pinned(1, 0);
#[map]
static CLOCK_PROBE: Array<u64> = Array::pinned(1, 0);
#[map]
static RECENT_DROPS: PerCpuArray<RecentDrop> = PerCpuArray::pinned(RECENT_DROP_SLOTS, 0);

const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;
const DHCPV6_SERVER_PORT: u16 = 547;
const DHCPV6_CLIENT_PORT: u16 = 546;

impl Frame for XdpContext {
    fn start(&self) -> usize {
        self.data()
    }
    fn end(&self) -> usize {
        self.data_end()
    }
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let mut buffer = [0u8; N];
        // SAFETY: the helper writes at most N bytes into `buffer`.
        let result = unsafe {
            bpf_xdp_load_bytes(
                self.ctx,
                offset as u32,
                buffer.as_mut_ptr().cast(),
                N as u32,
            )
        };
        (result == 0).then_some(buffer)
    }
}

impl Frame for TcContext {
    fn start(&self) -> usize {
        self.data()
    }
    fn end(&self) -> usize {
        self.data_end()
    }
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let mut buffer = [0u8; N];
        // SAFETY: the helper writes at most N bytes into `buffer`. (aya's load_bytes
        // clamps the length at run time, which the verifier cannot prove non-zero.)
        let result = unsafe {
            bpf_skb_load_bytes(
                self.skb.skb as *const _,
                offset as u32,
                buffer.as_mut_ptr().cast(),
                N as u32,
            )
        };
        (result == 0).then_some(buffer)
    }
}

#[xdp]
pub fn allowlist(ctx: XdpContext) -> u32 {
    let reason = judge(&ctx);
    count(&ctx, reason);
    if reason.drops() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

fn judge(ctx: &XdpContext) -> Reason {
    // A missing control record cannot happen (array maps always hold their slots); if
    // it did, enforcing is the safe reading.
    let mut control = CONTROL.get(0).copied().unwrap_or(Control {
        mode: Mode::Enforce as u32,
        active_slot: 0,
        features: 0,
        remote_generation: 0,
    });
    if control.features & FEATURE_REVERT_PENDING != 0 {
        control = revert_if_due(control);
    }
    let mode = Mode::from_raw(control.mode);
    if mode == Mode::Off {
        return Reason::PassedOff;
    }

    let ip = match parse::network(ctx) {
        Network::NonIp => return Reason::PassedNonIp,
        Network::NeighbourDiscovery => return Reason::PassedExempt,
        Network::Malformed => {
            debug!(ctx, "malformed IP header");
            return by_mode(mode, Reason::DroppedMalformed, Reason::MonitorMalformed);
        }
        // IP behind a third VLAN tag, in a PPPoE session or under MPLS labels has no
        // source we can judge: passing it would let anyone through who wraps their
        // packets, so it is judged like an unlisted source unless the operator opted out.
        Network::Encapsulated => {
            if control.features & FEATURE_PASS_ENCAPSULATED != 0 {
                return Reason::PassedEncapsulated;
            }
            return by_mode(
                mode,
                Reason::DroppedEncapsulated,
                Reason::MonitorEncapsulated,
            );
        }
        Network::Ip(ip) => ip,
    };

    // The common case stops here: a source listed for everything.
    let rule = lookup(control.active_slot, &ip);
    if rule.flags & RULE_ALLOW_ALL != 0 {
        count_hit(ctx, rule);
        return Reason::PassedListed;
    }

    // Everything else depends on the transport header.
    let transport = parse::transport(ctx, &ip);
    if let Some(reason) = admit_by_ports(&control, &ip, &transport, rule) {
        if reason == Reason::PassedListed {
            count_hit(ctx, rule);
        }
        if transport.fragment == FIRST_FRAGMENT {
            remember_fragment_train(&ip, &transport);
        }
        return reason;
    }
    if transport.fragment == LATER_FRAGMENT && fragment_train_admitted(&ip, &transport) {
        return Reason::PassedFragment;
    }
    let reason = if rule.flags & RULE_PORTS != 0 {
        by_mode(
            mode,
            Reason::DroppedPortNotAllowed,
            Reason::MonitorPortNotAllowed,
        )
    } else {
        by_mode(mode, Reason::DroppedNotListed, Reason::MonitorNotListed)
    };
    if control.features & FEATURE_RECORD_DROPS != 0 {
        record_dropped_source(ctx, &ip, reason);
    }
    reason
}

/// Counts a packet the rule's prefix admitted, for `allowlistctl list` (per CPU, no
/// atomics; the index comes with the rule, so this is one array access).
#[inline(always)]
fn count_hit(ctx: &XdpContext, rule: AllowRule) {
    let counter = rule.hit_counter();
    if counter == 0 {
        return;
    }
    if let Some(hits) = ENTRY_HITS.get_ptr_mut(counter) {
        // SAFETY: this CPU's slot; no other program run writes it now. A helper without
        // arguments.
        unsafe {
            (*hits).packets += 1;
            (*hits).bytes += (ctx.data_end() - ctx.data()) as u64;
            (*hits).last_hit_jiffies = bpf_jiffies64();
        }
    }
}

/// The drop path's one update: who was dropped (or would be), where and why, for
/// `allowlistctl top`. Per CPU, so no atomics. A source that keeps sending stays in its
/// slot of RECENT_DROPS (an array: no hashing of the key by the kernel, no lock); the
/// source it displaces moves on into the LRU table DROPPED_SOURCES.
#[inline(always)]
fn record_dropped_source(ctx: &XdpContext, ip: &IpHeader, reason: Reason) {
    let key = DroppedSourceKey {
        source: ip.source,
        ifindex: ctx.ingress_ifindex() as u32,
        reason: reason as u32,
    };
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    // The tick count: one load (the verifier inlines it), where a clock helper call would
    // cost more than the rest of recording. A tick's resolution is plenty for "last seen".
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_jiffies64() };
    let Some(slot) = RECENT_DROPS.get_ptr_mut(RecentDrop::slot_of(&key)) else {
        return;
    };
    // SAFETY: this CPU's slot; no other program run writes it now.
    let slot = unsafe { &mut *slot };
    if slot.stats.packets != 0 && slot.key == key {
        slot.stats.packets += 1;
        slot.stats.bytes += bytes;
        slot.stats.last_seen_jiffies = now;
        return;
    }
    if slot.stats.packets != 0 {
        move_to_table(&slot.key, &slot.stats, now);
    }
    slot.key = key;
    slot.stats = DroppedSourceStats {
        packets: 1,
        bytes,
        last_seen_jiffies: now,
    };
}

/// Adds what a slot of RECENT_DROPS counted to the source's entry in DROPPED_SOURCES, or
/// makes it one if this window's admissions allow. While they are spent (a flood), a
/// one-packet source skips the table: see MAP_DROP_ADMISSION.
#[inline(always)]
fn move_to_table(key: &DroppedSourceKey, counted: &DroppedSourceStats, now: u64) {
    let Some(admission) = DROP_ADMISSION.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; no other program run writes it now.
    let admission = unsafe { &mut *admission };
    if now.wrapping_sub(admission.window_start_jiffies) >= ADMISSION_WINDOW_JIFFIES {
        admission.window_start_jiffies = now;
        admission.admitted = 0;
    }
    let flooding = admission.admitted >= NEW_DROPPED_SOURCES_PER_WINDOW;
    if flooding && counted.packets == 1 {
        return;
    }
    if let Some(stats) = DROPPED_SOURCES.get_ptr_mut(key) {
        // SAFETY: this CPU's value of the entry; no other program run writes it now.
        unsafe {
            (*stats).packets += counted.packets;
            (*stats).bytes += counted.bytes;
            (*stats).last_seen_jiffies = counted.last_seen_jiffies;
        }
    } else if !flooding {
        admission.admitted += 1;
        let _ = DROPPED_SOURCES.insert(key, counted, 0);
    }
}

/// Commit-confirm in the kernel: a change made with `--confirm` that nobody confirmed by
/// its deadline is undone here, by the first packet after the deadline, so it reverts
/// even when the daemon was killed or userspace hangs. Every CPU that gets here writes
/// the same record, so racing packets agree.
#[inline(always)]
fn revert_if_due(control: Control) -> Control {
    let Some(revert) = REVERT.get_ptr_mut(0) else {
        return control;
    };
    // SAFETY: the pointer is to the map's single element, valid for the program's run.
    let revert = unsafe { &mut *revert };
    // SAFETY: a helper without arguments.
    if unsafe { bpf_ktime_get_boot_ns() } < revert.deadline_ns {
        return control;
    }
    let reverted = Control {
        mode: revert.mode,
        features: control.features & !FEATURE_REVERT_PENDING,
        ..control
    };
    if let Some(record) = CONTROL.get_ptr_mut(0) {
        // SAFETY: as above, the control map's single element.
        unsafe { *record = reverted };
    }
    revert.fired = 1;
    reverted
}

/// The ways a packet passes without an allow-all entry for its source: a port its
/// (port-scoped) entry allows, a reply to a flow the host opened, a DHCP reply to the
/// host's client, a public port.
fn admit_by_ports(
    control: &Control,
    ip: &IpHeader,
    transport: &Transport,
    rule: AllowRule,
) -> Option<Reason> {
    if !transport.has_ports {
        return None;
    }
    let (source_port, destination_port) = (transport.source_port, transport.destination_port);
    if rule.flags & RULE_PORTS != 0
        && port_set_allows(
            control.active_slot,
            rule.port_set,
            transport.protocol,
            destination_port,
        )
    {
        return Some(Reason::PassedListed);
    }
    if control.features & FEATURE_RETURN_TRAFFIC != 0
        && is_reply(control, ip, transport, source_port, destination_port)
    {
        return Some(Reason::PassedReturnTraffic);
    }
    if control.features & FEATURE_DHCP_CLIENT != 0
        && transport.protocol == IPPROTO_UDP
        && matches!(
            (source_port, destination_port),
            (DHCP_SERVER_PORT, DHCP_CLIENT_PORT) | (DHCPV6_SERVER_PORT, DHCPV6_CLIENT_PORT)
        )
    {
        return Some(Reason::PassedExempt);
    }
    if port_set_allows(
        control.active_slot,
        PUBLIC_PORT_SET,
        transport.protocol,
        destination_port,
    ) {
        return Some(Reason::PassedPublicPort);
    }
    None
}

#[inline(always)]
fn by_mode(mode: Mode, enforced: Reason, monitored: Reason) -> Reason {
    match mode {
        Mode::Enforce => enforced,
        _ => monitored,
    }
}

/// The rule of the longest listed prefix containing the source; flags 0 if none.
/// Coarse screen, screen, then exact hosts, then the trie (see `allowlist_common::SLOTS`):
/// most unlisted sources stop at the coarse screen (in cache) or the screen, and listed
/// hosts at the hash, so neither pays the trie's depth. (A plain value, not an Option: the verifier rejects LLVM's spills
/// of the undefined payload of a None.)
///
/// Each slot's maps get call sites of their own: the verifier turns a lookup into an
/// inlined load (arrays) or a direct call only where the call site always sees the same
/// map; a site that may see either slot's map stays an indirect helper call.
#[inline(always)]
fn lookup(slot: u32, ip: &IpHeader) -> AllowRule {
    if ip.is_v6 {
        let first_32_bits = [ip.source[0], ip.source[1], ip.source[2], ip.source[3]];
        let bit = screen_bit_v6(first_32_bits);
        let key = ip.source;
        match slot {
            0 => lookup_in(
                &COARSE_V6_0,
                &SCREEN_V6_0,
                &EXACT_V6_0,
                &ALLOW_V6_0,
                bit,
                key,
                128,
            ),
            _ => lookup_in(
                &COARSE_V6_1,
                &SCREEN_V6_1,
                &EXACT_V6_1,
                &ALLOW_V6_1,
                bit,
                key,
                128,
            ),
        }
    } else {
        let source = ip.source_v4();
        let bit = screen_bit_v4(source);
        match slot {
            0 => lookup_in(
                &COARSE_V4_0,
                &SCREEN_V4_0,
                &EXACT_V4_0,
                &ALLOW_V4_0,
                bit,
                source,
                32,
            ),
            _ => lookup_in(
                &COARSE_V4_1,
                &SCREEN_V4_1,
                &EXACT_V4_1,
                &ALLOW_V4_1,
                bit,
                source,
                32,
            ),
        }
    }
}

/// [`lookup`] in one slot's maps for one family.
#[inline(always)]
fn lookup_in<K: Copy>(
    coarse: &Array<u64>,
    screen: &Array<u64>,
    exact: &HashMap<K, AllowRule>,
    trie: &LpmTrie<K, AllowRule>,
    screen_bit: u32,
    source: K,
    bits: u32,
) -> AllowRule {
    if !screened_in(coarse, coarse_screen_bit(screen_bit)) || !screened_in(screen, screen_bit) {
        return AllowRule::default();
    }
    // SAFETY: plain data, replaced only after packets in flight are done with it.
    let found = match unsafe { exact.get(source) } {
        Some(rule) => Some(rule),
        None => trie.get(Key::new(bits, source)),
    };
    found.copied().unwrap_or_default()
}

/// Whether a screen bitmap's `bit` is set: some listed prefix may contain the source.
#[inline(always)]
fn screened_in(screen: &Array<u64>, bit: u32) -> bool {
    screen
        .get(bit / 64)
        .is_some_and(|word| word & (1u64 << (bit % 64)) != 0)
}

#[inline(always)]
fn port_set_allows(slot: u32, set: u32, protocol: u8, port: u16) -> bool {
    // A call site per slot's map, as in `lookup`, so the lookup is an inlined load.
    let found = match slot {
        0 => PORT_SETS_0.get(set),
        _ => PORT_SETS_1.get(set),
    };
    found.is_some_and(|set| set.allows(protocol, port))
}

/// Whether the packet answers a flow the host opened and used recently.
fn is_reply(
    control: &Control,
    ip: &IpHeader,
    transport: &Transport,
    source_port: u16,
    destination_port: u16,
) -> bool {
    if !may_have_flow(control.remote_generation, &ip.source) {
        return false;
    }
    let protocol = transport.protocol;
    let (remote_port, local_port) = match protocol {
        IPPROTO_TCP | IPPROTO_UDP => (source_port, destination_port),
        IPPROTO_ICMP if transport.icmp_type == parse::ICMP_ECHO_REPLY => (0, destination_port),
        IPPROTO_ICMPV6 if transport.icmp_type == parse::ICMPV6_ECHO_REPLY => (0, destination_port),
        _ => return false,
    };
    let key = FlowKey {
        remote: ip.source,
        local: ip.destination,
        remote_port,
        local_port,
        protocol,
        _pad: [0; 3],
    };
    // SAFETY: the value is plain data; a concurrent refresh can only make it newer.
    let Some(state) = (unsafe { FLOWS.get(key) }) else {
        return false;
    };
    let idle = match protocol {
        IPPROTO_TCP => TCP_IDLE_NS,
        IPPROTO_UDP => UDP_IDLE_NS,
        _ => ICMP_IDLE_NS,
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    now.saturating_sub(state.last_seen_ns) <= idle
}

/// Whether the flow table may hold a flow with `remote`: its bit in the remote filter's
/// generation in use (see `allowlist_common::MAP_REMOTES`).
#[inline(always)]
fn may_have_flow(generation: u32, remote: &Ipv6Octets) -> bool {
    let bit = remote_filter_bit(remote);
    let word = (generation & 1) * REMOTE_FILTER_WORDS + bit / 64;
    REMOTES
        .get(word)
        .is_some_and(|word| word & (1u64 << (bit % 64)) != 0)
}

/// Sets `remote`'s bit in both generations of the remote filter, before its flow is
/// recorded, so no reply finds the flow without finding the bit. Written only when
/// missing, so the words stay shared in every CPU's cache.
#[inline(always)]
fn mark_remote(remote: &Ipv6Octets) {
    let bit = remote_filter_bit(remote);
    let mask = 1u64 << (bit % 64);
    for generation in 0..2 {
        let Some(word) = REMOTES.get_ptr_mut(generation * REMOTE_FILTER_WORDS + bit / 64) else {
            return;
        };
        // SAFETY: a valid, aligned map value pointer; other CPUs and the daemon change
        // this word only through atomics too.
        unsafe {
            if word.read_volatile() & mask == 0 {
                atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(word, mask);
            }
        }
    }
}

fn fragment_key(ip: &IpHeader, transport: &Transport) -> FragmentKey {
    FragmentKey {
        source: ip.source,
        destination: ip.destination,
        id: transport.fragment_id,
        protocol: transport.protocol,
        _pad: [0; 3],
    }
}

fn remember_fragment_train(ip: &IpHeader, transport: &Transport) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let _ = FRAGMENTS.insert(
        fragment_key(ip, transport),
        FlowState { last_seen_ns: now },
        0,
    );
}

fn fragment_train_admitted(ip: &IpHeader, transport: &Transport) -> bool {
    // SAFETY: plain data, as above.
    let Some(state) = (unsafe { FRAGMENTS.get(fragment_key(ip, transport)) }) else {
        return false;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    now.saturating_sub(state.last_seen_ns) <= FRAGMENT_IDLE_NS
}

/// Counts the packet in its interface's block of counters. The block comes from an array
/// indexed by interface index (one bounds check and a load), not a hash.
#[inline(always)]
fn count(ctx: &XdpContext, reason: Reason) {
    let block = IFINDEX_BLOCKS
        .get(ctx.ingress_ifindex() as u32)
        .copied()
        .filter(|block| *block < COUNTER_BLOCKS)
        .unwrap_or(0);
    if let Some(counter) = COUNTERS.get_ptr_mut(block * COUNTER_SLOTS + reason as u32) {
        // SAFETY: per-CPU slot, so no other program instance writes it concurrently.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += (ctx.data_end() - ctx.data()) as u64;
        }
    }
}

/// Writes the kernel's tick count into CLOCK_PROBE, for the daemon to put the stamps of
/// hits and drops on the wall clock. Run with BPF_PROG_TEST_RUN, never attached.
#[xdp]
pub fn read_jiffies(_ctx: XdpContext) -> u32 {
    if let Some(jiffies) = CLOCK_PROBE.get_ptr_mut(0) {
        // SAFETY: the map's single element; a helper without arguments.
        unsafe { *jiffies = bpf_jiffies64() };
    }
    xdp_action::XDP_PASS
}

/// TC egress: remembers the flows the host opens, so their replies pass at XDP. Never
/// changes or drops what the host sends.
#[classifier]
pub fn track_flows(ctx: TcContext) -> i32 {
    let tracking = CONTROL
        .get(0)
        .is_some_and(|control| control.features & FEATURE_RETURN_TRAFFIC != 0);
    if tracking {
        track(&ctx);
    }
    TC_ACT_OK
}

fn track(ctx: &TcContext) {
    let Network::Ip(ip) = parse::network(ctx) else {
        return;
    };
    let transport = parse::transport(ctx, &ip);
    if !transport.has_ports {
        return;
    }
    let (source_port, destination_port) = (transport.source_port, transport.destination_port);
    let protocol = transport.protocol;
    // Only these open a flow; any other packet the host sends on a known flow keeps it
    // alive. A TCP flow opens with the host's SYN, so serving an inbound connection
    // never makes its client a "reply" source.
    let (remote_port, local_port, opens) = match protocol {
        IPPROTO_TCP => (
            destination_port,
            source_port,
            transport.tcp_flags & (parse::TCP_SYN | parse::TCP_ACK) == parse::TCP_SYN,
        ),
        IPPROTO_UDP => (destination_port, source_port, true),
        IPPROTO_ICMP if transport.icmp_type == parse::ICMP_ECHO_REQUEST => {
            (0, destination_port, true)
        }
        IPPROTO_ICMPV6 if transport.icmp_type == parse::ICMPV6_ECHO_REQUEST => {
            (0, destination_port, true)
        }
        _ => return,
    };
    let key = FlowKey {
        remote: ip.destination,
        local: ip.source,
        remote_port,
        local_port,
        protocol,
        _pad: [0; 3],
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if let Some(state) = FLOWS.get_ptr_mut(key) {
        // Also for a known flow: one the daemon carried or seeded has its bit already,
        // but a missing bit must never outlive the next packet the host sends.
        mark_remote(&key.remote);
        // SAFETY: a valid map value pointer; a racing writer stores a similar time.
        unsafe { (*state).last_seen_ns = now };
    } else if opens {
        mark_remote(&key.remote);
        let _ = FLOWS.insert(key, FlowState { last_seen_ns: now }, 0);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
