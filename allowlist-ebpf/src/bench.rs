//! Helper XDP programs for `cargo xtask bench`, never loaded by the daemon.
//!
//! - `noop`: returns XDP_PASS and touches nothing; the floor of per-packet cost under
//!   `BPF_PROG_TEST_RUN`.
//! - `drop_all`: counts the packet and drops it; the floor of the drop-rate benchmark
//!   (the cheapest thing any XDP program can do).
//! - `read_drop`: reads the IPv4 source address, counts the packet and drops it; the
//!   floor any filter has to pay for (it must read the source, and on veth that read is
//!   a cache miss on a page another core just wrote), which `drop_all` skips.
//! - `generate`: the traffic generator. Run with `BPF_F_TEST_XDP_LIVE_FRAMES` on one end
//!   of a veth pair, it writes the next source address from `SOURCES` into the template
//!   frame, fixes the IPv4 checksum and returns XDP_TX, which test_run turns into a
//!   redirect out of that veth, so the frame arrives at the peer as if from a wire.
#![no_std]
#![no_main]

// The benchmark helpers share the crate's dependencies but use only aya-ebpf.
use {allowlist_common as _, allowlist_ebpf as _, aya_log_ebpf as _};

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// Source addresses the generator cycles through (IPv4, network byte order); the
/// benchmark fills them. A power of two, so the index is a mask.
const SOURCE_SLOTS: u32 = 1 << 16;

#[map]
static SOURCES: Array<[u8; 4]> = Array::with_max_entries(SOURCE_SLOTS, 0);
/// Index 0: frames generated on this CPU so far.
#[map]
static SEQUENCE: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
/// Index 0: packets `drop_all` or `read_drop` dropped on this CPU (one is attached at a
/// time, and the benchmark counts the difference over a sample).
#[map]
static DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;
const IPV4_CHECKSUM_AT: usize = ETH_HLEN + 10;
const IPV4_SOURCE_AT: usize = ETH_HLEN + 12;

#[xdp]
pub fn noop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn drop_all(_ctx: XdpContext) -> u32 {
    if let Some(count) = DROPPED.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *count += 1 };
    }
    xdp_action::XDP_DROP
}

/// Index 0 on this CPU: how many sources `read_drop` saw equal to the previous one. Kept
/// so the read of the source has an effect the compiler cannot remove.
#[map]
static SAME_SOURCE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// Index 0 on this CPU: the last source `read_drop` read.
#[map]
static LAST_SOURCE: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn read_drop(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + ETH_HLEN + IPV4_HLEN > ctx.data_end() {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: the whole IPv4 header was bounds-checked above; a volatile read so the load
    // from the frame happens even though only a comparison depends on it.
    // Read as bytes: the address is not 4-byte aligned in the frame.
    let source = u32::from_ne_bytes(unsafe {
        core::ptr::read_volatile((start + IPV4_SOURCE_AT) as *const [u8; 4])
    });
    if let (Some(last), Some(same)) = (LAST_SOURCE.get_ptr_mut(0), SAME_SOURCE.get_ptr_mut(0)) {
        // SAFETY: per-CPU slots, no concurrent writer.
        unsafe {
            if *last == source {
                *same += 1;
            }
            *last = source;
        }
    }
    if let Some(count) = DROPPED.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *count += 1 };
    }
    xdp_action::XDP_DROP
}

#[xdp]
pub fn generate(ctx: XdpContext) -> u32 {
    match next_source(&ctx) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_ABORTED,
    }
}

/// Rewrites the template frame (Ethernet + 20-byte IPv4 header) with the next source.
#[inline(always)]
fn next_source(ctx: &XdpContext) -> Option<()> {
    let start = ctx.data();
    if start + ETH_HLEN + IPV4_HLEN > ctx.data_end() {
        return None;
    }
    let sequence = SEQUENCE.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot, no concurrent writer.
    let n = unsafe {
        let n = *sequence;
        *sequence = n.wrapping_add(1);
        n
    };
    let source = *SOURCES.get(n & (SOURCE_SLOTS - 1))?;
    let header = (start + ETH_HLEN) as *mut u8;
    // SAFETY: the whole IPv4 header was bounds-checked above.
    unsafe {
        let source_at = (start + IPV4_SOURCE_AT) as *mut [u8; 4];
        source_at.write_unaligned(source);
        let checksum_at = (start + IPV4_CHECKSUM_AT) as *mut [u8; 2];
        checksum_at.write_unaligned([0, 0]);
        let mut sum: u32 = 0;
        for word in 0..IPV4_HLEN / 2 {
            let at = header.add(word * 2);
            sum += u32::from(u16::from_be_bytes([*at, *at.add(1)]));
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        checksum_at.write_unaligned((!(sum as u16)).to_be_bytes());
    }
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
