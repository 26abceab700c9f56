//! The screen bitmaps in front of each slot's lookups (`allowlist_common::MAP_SCREEN_V4`)
//! and the coarse screens in front of them (`MAP_COARSE_SCREEN_V4`): which bits a list
//! sets, and the kernel's bitmaps mapped into the daemon's memory so a whole list's
//! bitmaps are written as memory, not with one syscall per word.
//!
//! A coarse bit is set exactly when one of the screen bits it stands for is: every range
//! of screen bits is set together with the range of coarse bits covering it.

use std::{
    io,
    ops::Range,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use allowlist_common::{
    coarse_screen_bit, screen_bit_v4, screen_bit_v6, COARSE_SCREEN_WORDS, SCREEN_BITS, SCREEN_WORDS,
};
use aya::maps::MapData;
use ipnet::{Ipv4Net, Ipv6Net};

/// The bits of a screen and of its coarse screen, as the kernel lays them out (bit `b`:
/// word `b / 64`, `1 << b % 64`).
#[derive(Clone, PartialEq, Eq)]
pub struct ScreenBits {
    screen: Vec<u64>,
    coarse: Vec<u64>,
}

impl Default for ScreenBits {
    fn default() -> Self {
        ScreenBits {
            screen: vec![0; SCREEN_WORDS as usize],
            coarse: vec![0; COARSE_SCREEN_WORDS as usize],
        }
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
        &self.screen
    }

    pub fn coarse_words(&self) -> &[u64] {
        &self.coarse
    }

    fn set(&mut self, bits: Range<u32>) {
        for_each_word(coarse_bits(&bits), |word, mask| self.coarse[word] |= mask);
        for_each_word(bits, |word, mask| self.screen[word] |= mask);
    }
}

/// The coarse bits standing for a range of screen bits.
fn coarse_bits(bits: &Range<u32>) -> Range<u32> {
    if bits.is_empty() {
        return 0..0;
    }
    coarse_screen_bit(bits.start)..coarse_screen_bit(bits.end - 1) + 1
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
    // `first` is aligned to the prefix, so `first | offset` stays within it even for the
    // last prefixes of the space (first + values would overflow for ffff:f000::/20).
    for offset in 0..values {
        let bit = screen_bit_v6((first | offset).to_be_bytes());
        set(bit..bit + 1);
    }
}

/// A screen map and its coarse screen map of the kernel, mapped shared into this process.
pub struct MappedScreen {
    screen: MappedBitmap,
    coarse: MappedBitmap,
}

impl MappedScreen {
    pub fn map(screen: MapData, coarse: MapData) -> io::Result<MappedScreen> {
        Ok(MappedScreen {
            screen: MappedBitmap::map(screen, SCREEN_WORDS as usize)?,
            coarse: MappedBitmap::map(coarse, COARSE_SCREEN_WORDS as usize)?,
        })
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
        self.coarse.set(coarse_bits(&bits));
        self.screen.set(bits);
    }

    /// Makes the kernel's bitmaps equal to `bits`, touching only words that differ;
    /// returns how many did.
    pub fn write(&self, bits: &ScreenBits) -> usize {
        self.coarse.write(bits.coarse_words()) + self.screen.write(bits.words())
    }
}

/// One mmapable array map of `u64` words, mapped shared into this process.
pub(crate) struct MappedBitmap {
    words: NonNull<AtomicU64>,
    len: usize,
    // Keeps the map (and so the mapping's object) open for as long as it is mapped.
    _map: MapData,
}

// SAFETY: the mapping is plain shared memory accessed only through atomics; nothing ties
// it to the thread that created it.
unsafe impl Send for MappedBitmap {}

impl MappedBitmap {
    /// Maps `map`, a BPF array of `len` `u64` words created with BPF_F_MMAPABLE.
    pub(crate) fn map(map: MapData, len: usize) -> io::Result<MappedBitmap> {
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: maps a BPF array created with BPF_F_MMAPABLE of exactly this size (the
        // kernel refuses a longer mapping).
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len * 8,
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
        Ok(MappedBitmap {
            words,
            len,
            _map: map,
        })
    }

    pub(crate) fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is `len` words long, page aligned, and lives as long as self.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr(), self.len) }
    }

    fn set(&self, bits: Range<u32>) {
        let words = self.words();
        for_each_word(bits, |word, mask| {
            words[word].fetch_or(mask, Ordering::Relaxed);
        });
    }

    fn write(&self, wanted: &[u64]) -> usize {
        let mut changed = 0;
        for (word, &wanted) in self.words().iter().zip(wanted) {
            if word.load(Ordering::Relaxed) != wanted {
                word.store(wanted, Ordering::Relaxed);
                changed += 1;
            }
        }
        changed
    }
}

impl Drop for MappedBitmap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, which nothing references now.
        unsafe { libc::munmap(self.words.as_ptr().cast(), self.len * 8) };
    }
}

#[cfg(test)]
mod tests {
    use allowlist_common::{COARSE_SCREEN_BITS, SCREEN_BITS_PER_COARSE_BIT};

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
        let bits = ScreenBits::of_v4([&all]);
        assert_eq!(ones(&bits), SCREEN_BITS);
        assert_eq!(coarse_ones(&bits), COARSE_SCREEN_BITS);
        let all: Ipv6Net = "::/0".parse().unwrap();
        let bits = ScreenBits::of_v6([&all]);
        assert_eq!(ones(&bits), SCREEN_BITS);
        assert_eq!(coarse_ones(&bits), COARSE_SCREEN_BITS);
    }

    #[test]
    fn the_last_ipv6_prefixes_of_the_space_set_their_bits() {
        for text in ["ffff:f000::/20", "ffff:ffff::/32", "ffff:ffff:ffff::/48"] {
            let net: Ipv6Net = text.parse().unwrap();
            let bits = ScreenBits::of_v6([&net]);
            let last = screen_bit_v6([0xff, 0xff, 0xff, 0xff]);
            assert!(is_set(&bits, last), "{text}");
            assert!(is_coarse_set(&bits, coarse_screen_bit(last)), "{text}");
        }
    }

    fn is_coarse_set(bits: &ScreenBits, bit: u32) -> bool {
        bits.coarse_words()[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }

    fn coarse_ones(bits: &ScreenBits) -> u32 {
        bits.coarse_words().iter().map(|w| w.count_ones()).sum()
    }

    fn coarse_v4(addr: [u8; 4]) -> u32 {
        coarse_screen_bit(screen_bit_v4(addr))
    }

    /// The coarse screen may only rule out what the screen rules out: each coarse bit is
    /// set exactly when one of the screen bits it stands for is.
    fn assert_coarse_is_the_or_of_its_screen_bits(bits: &ScreenBits) {
        for coarse in 0..COARSE_SCREEN_BITS {
            let first = coarse * SCREEN_BITS_PER_COARSE_BIT;
            let any = (first..first + SCREEN_BITS_PER_COARSE_BIT).any(|bit| is_set(bits, bit));
            assert_eq!(is_coarse_set(bits, coarse), any, "coarse bit {coarse}");
        }
    }

    #[test]
    fn an_ipv4_prefix_sets_the_coarse_bits_of_the_slash_20s_it_overlaps_and_no_others() {
        let inside: Ipv4Net = "192.0.2.0/24".parse().unwrap();
        let exactly: Ipv4Net = "198.51.16.0/20".parse().unwrap();
        // A /22 and a /23 that straddle the boundary between two /20s are impossible
        // (aligned prefixes); a /19 spans two, a /12 256.
        let two: Ipv4Net = "203.0.96.0/19".parse().unwrap();
        let short: Ipv4Net = "172.16.0.0/12".parse().unwrap();
        let bits = ScreenBits::of_v4([&inside, &exactly, &two, &short]);
        assert!(is_coarse_set(&bits, coarse_v4([192, 0, 2, 0])));
        assert!(
            is_coarse_set(&bits, coarse_v4([192, 0, 15, 255])),
            "same /20"
        );
        assert!(!is_coarse_set(&bits, coarse_v4([192, 0, 16, 0])));
        assert!(!is_coarse_set(&bits, coarse_v4([191, 255, 255, 255])));
        assert!(is_coarse_set(&bits, coarse_v4([198, 51, 31, 0])));
        assert!(!is_coarse_set(&bits, coarse_v4([198, 51, 32, 0])));
        assert!(!is_coarse_set(&bits, coarse_v4([198, 51, 15, 0])));
        assert!(is_coarse_set(&bits, coarse_v4([203, 0, 96, 0])));
        assert!(is_coarse_set(&bits, coarse_v4([203, 0, 127, 0])));
        assert!(!is_coarse_set(&bits, coarse_v4([203, 0, 128, 0])));
        assert!(is_coarse_set(&bits, coarse_v4([172, 31, 255, 0])));
        assert!(!is_coarse_set(&bits, coarse_v4([172, 32, 0, 0])));
        assert_eq!(coarse_ones(&bits), 1 + 1 + 2 + 256);
        assert_coarse_is_the_or_of_its_screen_bits(&bits);
    }

    #[test]
    fn the_coarse_screen_is_the_or_of_the_screen_bits_for_lists_of_every_shape() {
        let v4: Vec<Ipv4Net> = [
            "10.0.0.1/32",
            "10.0.16.0/21",
            "10.0.31.128/25",
            "100.64.0.0/10",
            "128.0.0.0/1",
            "223.255.255.0/24",
        ]
        .iter()
        .map(|net| net.parse().unwrap())
        .collect();
        assert_coarse_is_the_or_of_its_screen_bits(&ScreenBits::of_v4(&v4));
        let v6: Vec<Ipv6Net> = ["2001:db8::/32", "2001:db0::/29", "2a00::/16", "fe80::1/128"]
            .iter()
            .map(|net| net.parse().unwrap())
            .collect();
        assert_coarse_is_the_or_of_its_screen_bits(&ScreenBits::of_v6(&v6));
    }

    #[test]
    fn a_slash_1_sets_half_the_coarse_screen() {
        let half: Ipv4Net = "0.0.0.0/1".parse().unwrap();
        let bits = ScreenBits::of_v4([&half]);
        assert_eq!(coarse_ones(&bits), COARSE_SCREEN_BITS / 2);
        assert!(is_coarse_set(&bits, coarse_v4([127, 255, 255, 255])));
        assert!(!is_coarse_set(&bits, coarse_v4([128, 0, 0, 0])));
    }

    #[test]
    fn an_empty_list_sets_no_bit() {
        let bits = ScreenBits::of_v4([]);
        assert_eq!((ones(&bits), coarse_ones(&bits)), (0, 0));
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
