//! The screen bitmaps in front of each slot's lookups (`allowlist_common::MAP_SCREEN_V4`):
//! which bits a list sets, and the kernel's bitmap mapped into the daemon's memory so a
//! whole list's bitmap is written as memory, not with one syscall per word.

use std::{
    io,
    ops::Range,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use allowlist_common::{screen_bit_v4, screen_bit_v6, SCREEN_BITS, SCREEN_WORDS};
use aya::maps::MapData;
use ipnet::{Ipv4Net, Ipv6Net};

/// The bits of a screen, as the kernel lays them out (bit `b`: word `b / 64`, `1 << b % 64`).
#[derive(Clone, PartialEq, Eq)]
pub struct ScreenBits(Vec<u64>);

impl Default for ScreenBits {
    fn default() -> Self {
        ScreenBits(vec![0; SCREEN_WORDS as usize])
    }
}

impl ScreenBits {
    pub fn of_v4<'a>(networks: impl IntoIterator<Item = &'a Ipv4Net>) -> ScreenBits {
        let mut bits = ScreenBits::default();
        for net in networks {
            bits.set(v4_bits(net));
        }
        bits
    }

    pub fn of_v6<'a>(networks: impl IntoIterator<Item = &'a Ipv6Net>) -> ScreenBits {
        let mut bits = ScreenBits::default();
        for net in networks {
            for_each_v6_bit(net, |range| bits.set(range));
        }
        bits
    }

    pub fn words(&self) -> &[u64] {
        &self.0
    }

    fn set(&mut self, bits: Range<u32>) {
        for_each_word(bits, |word, mask| self.0[word] |= mask);
    }
}

/// Calls `set(word, mask)` for each word a range of bits touches.
fn for_each_word(bits: Range<u32>, mut set: impl FnMut(usize, u64)) {
    let mut bit = bits.start;
    while bit < bits.end {
        let offset = bit % 64;
        let run = (64 - offset).min(bits.end - bit);
        let mask = if run == 64 {
            u64::MAX
        } else {
            ((1u64 << run) - 1) << offset
        };
        set((bit / 64) as usize, mask);
        bit += run;
    }
}

/// An IPv4 prefix overlaps the /24s from its own to its last.
fn v4_bits(net: &Ipv4Net) -> Range<u32> {
    let first = screen_bit_v4(net.network().octets());
    let count = 1u32 << 24u8.saturating_sub(net.prefix_len());
    first..first + count
}

/// An IPv6 prefix sets the hashed bit of each value its first 32 bits can take; a prefix
/// shorter than /20 (over 4,096 values) sets every bit rather than hashing them all.
fn for_each_v6_bit(net: &Ipv6Net, mut set: impl FnMut(Range<u32>)) {
    const WIDEST_HASHED: u8 = 20;
    if net.prefix_len() < WIDEST_HASHED {
        set(0..SCREEN_BITS);
        return;
    }
    let octets = net.network().octets();
    let first = u32::from_be_bytes([octets[0], octets[1], octets[2], octets[3]]);
    let values = 1u32 << 32u8.saturating_sub(net.prefix_len());
    for value in first..first + values {
        let bit = screen_bit_v6(value.to_be_bytes());
        set(bit..bit + 1);
    }
}

/// A screen map of the kernel, mapped shared into this process.
pub struct MappedScreen {
    words: NonNull<AtomicU64>,
    // Keeps the map (and so the mapping's object) open for as long as it is mapped.
    _map: MapData,
}

// SAFETY: the mapping is plain shared memory accessed only through atomics; nothing ties
// it to the thread that created it.
unsafe impl Send for MappedScreen {}

const SCREEN_BYTES: usize = SCREEN_WORDS as usize * 8;

impl MappedScreen {
    pub fn map(map: MapData) -> io::Result<MappedScreen> {
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: maps a BPF array created with BPF_F_MMAPABLE of exactly this size.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SCREEN_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let words = NonNull::new(address.cast()).ok_or_else(|| io::Error::other("mmap: null"))?;
        Ok(MappedScreen { words, _map: map })
    }

    fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is SCREEN_BYTES long, page aligned, and lives as long as self.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr(), SCREEN_WORDS as usize) }
    }

    /// Sets the bits of an IPv4 prefix, leaving the others as they are.
    pub fn set_v4(&self, net: &Ipv4Net) {
        self.set(v4_bits(net));
    }

    /// Sets the bits of an IPv6 prefix, leaving the others as they are.
    pub fn set_v6(&self, net: &Ipv6Net) {
        for_each_v6_bit(net, |bits| self.set(bits));
    }

    fn set(&self, bits: Range<u32>) {
        let words = self.words();
        for_each_word(bits, |word, mask| {
            words[word].fetch_or(mask, Ordering::Relaxed);
        });
    }

    /// Makes the kernel's bitmap equal to `bits`, touching only words that differ; returns
    /// how many did.
    pub fn write(&self, bits: &ScreenBits) -> usize {
        let mut changed = 0;
        for (word, &wanted) in self.words().iter().zip(bits.words()) {
            if word.load(Ordering::Relaxed) != wanted {
                word.store(wanted, Ordering::Relaxed);
                changed += 1;
            }
        }
        changed
    }
}

impl Drop for MappedScreen {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, which nothing references now.
        unsafe { libc::munmap(self.words.as_ptr().cast(), SCREEN_BYTES) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_set(bits: &ScreenBits, bit: u32) -> bool {
        bits.words()[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }

    fn ones(bits: &ScreenBits) -> u32 {
        bits.words().iter().map(|w| w.count_ones()).sum()
    }

    #[test]
    fn an_ipv4_prefix_sets_the_bits_of_the_slash_24s_it_overlaps_and_no_others() {
        let host: Ipv4Net = "192.0.2.7/32".parse().unwrap();
        let wide: Ipv4Net = "10.0.0.0/15".parse().unwrap();
        let bits = ScreenBits::of_v4([&host, &wide]);
        assert!(is_set(&bits, screen_bit_v4([192, 0, 2, 0])));
        assert!(is_set(&bits, screen_bit_v4([10, 0, 0, 0])));
        assert!(is_set(&bits, screen_bit_v4([10, 1, 255, 0])));
        assert!(!is_set(&bits, screen_bit_v4([10, 2, 0, 0])));
        assert!(!is_set(&bits, screen_bit_v4([9, 255, 255, 0])));
        assert_eq!(ones(&bits), 1 + 512);
    }

    #[test]
    fn the_default_route_sets_every_bit() {
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert_eq!(ones(&ScreenBits::of_v4([&all])), SCREEN_BITS);
        let all: Ipv6Net = "::/0".parse().unwrap();
        assert_eq!(ones(&ScreenBits::of_v6([&all])), SCREEN_BITS);
    }

    #[test]
    fn an_ipv6_prefix_sets_the_hashed_bit_of_each_of_its_first_32_bit_values() {
        let net: Ipv6Net = "2001:db8:aaaa::/48".parse().unwrap();
        let wide: Ipv6Net = "2001:db0::/29".parse().unwrap();
        let bits = ScreenBits::of_v6([&net, &wide]);
        assert!(is_set(&bits, screen_bit_v6([0x20, 0x01, 0x0d, 0xb8])));
        for last in 0xb0..=0xb7 {
            assert!(is_set(&bits, screen_bit_v6([0x20, 0x01, 0x0d, last])));
        }
        assert!(ones(&bits) <= 9);
    }
}
