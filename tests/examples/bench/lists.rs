//! The allowlists the benchmarks load, and sources inside and outside them.
//!
//! Every list is generated from a fixed seed, so every run (and every tool compared in one
//! run) sees the same prefixes. Lists are already minimal (no duplicates, nothing covered
//! by a shorter prefix): the N of a figure is the number of prefixes the kernel holds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use allowlist_userspace::compile::CompiledList;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

pub use allowlist_tests::rng::Rng;

/// Which shape of list a figure uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// IPv4 host addresses, consecutive from 16.0.0.0: the "dense /32 keys" of the
    /// published LPM trie figures.
    V4Dense,
    /// IPv4 networks of mixed prefix lengths (mostly /24, some /32 and shorter),
    /// scattered over 1.0.0.0–223.255.255.255.
    V4Mixed,
    /// IPv4 networks shaped like the cloud providers' published ranges: mostly /20–/24
    /// (some /16–/19 and longer), clustered in a few hundred blocks ([`clustered_v4`]).
    V4Clustered,
    /// IPv6 networks of mixed prefix lengths (/32–/64 and /128), scattered over 2000::/3.
    V6Mixed,
}

impl Shape {
    pub const ALL: [Shape; 4] = [
        Shape::V4Dense,
        Shape::V4Mixed,
        Shape::V4Clustered,
        Shape::V6Mixed,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Shape::V4Dense => "v4_dense32",
            Shape::V4Mixed => "v4_mixed",
            Shape::V4Clustered => "v4_clustered",
            Shape::V6Mixed => "v6_mixed",
        }
    }
}

/// A list and two sources to judge against it.
pub struct BenchList {
    pub list: CompiledList,
    /// Inside a listed network.
    pub listed: IpAddr,
    /// Covered by no listed network.
    pub unlisted: IpAddr,
}

pub fn build(shape: Shape, entries: usize, seed: u64) -> BenchList {
    let mut rng = Rng::new(seed ^ entries as u64);
    match shape {
        Shape::V4Dense => {
            let base = u32::from(Ipv4Addr::new(16, 0, 0, 0));
            let hosts = (0..entries as u32)
                .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(base + i), 32).expect("valid /32")));
            BenchList {
                list: CompiledList::compile(hosts).0,
                listed: Ipv4Addr::from(base + entries as u32 / 2).into(),
                // Right after the last key: it shares the longest prefix with the list.
                unlisted: Ipv4Addr::from(base + entries as u32).into(),
            }
        }
        Shape::V4Mixed | Shape::V4Clustered => {
            let list = if shape == Shape::V4Mixed {
                mixed_v4(entries, &mut rng)
            } else {
                clustered_v4(entries, &mut rng)
            };
            let listed = listed_v4(&list, &mut rng).into();
            let unlisted = unlisted_v4(&list, &mut rng).into();
            BenchList {
                list,
                listed,
                unlisted,
            }
        }
        Shape::V6Mixed => {
            let list = exactly(entries, &mut rng, |rng| IpNet::V6(random_v6_net(rng)));
            let (net, _) = list.v6[rng.below(list.v6.len() as u64) as usize];
            let host_bits = 128 - u32::from(net.prefix_len());
            let offset = if host_bits == 0 {
                0
            } else {
                u128::from(rng.next_u64()) & (u128::MAX >> (128 - host_bits.min(64)))
            };
            let listed = Ipv6Addr::from(u128::from(net.network()) | offset);
            let unlisted = loop {
                let candidate = random_v6(&mut rng);
                if !list.covers_v6(candidate) {
                    break candidate;
                }
            };
            BenchList {
                list,
                listed: listed.into(),
                unlisted: unlisted.into(),
            }
        }
    }
}

/// IPv4 networks of mixed lengths, roughly as in routing tables and real allowlists.
pub fn mixed_v4(entries: usize, rng: &mut Rng) -> CompiledList {
    exactly(entries, rng, |rng| IpNet::V4(random_v4_net(rng)))
}

/// Blocks a provider-shaped list is laid out in.
const CLUSTERS: usize = 300;

/// IPv4 networks shaped like a cloud provider's published ranges: runs of networks in
/// [`CLUSTERS`] blocks, with lengths mostly /20–/24 (1% /16–/19, 20% /20–/22, 60%
/// /23–/24, 19% /25–/29), each aligned to its size and followed by a random gap of up to
/// a quarter of its size. Laid out in address order, never overlapping, so the list has
/// exactly `entries` prefixes, built in one pass (drawing networks at random and dropping
/// covered ones saturates the clusters at 1M). Block *i* starts at a random place in the
/// first quarter of the *i*th of [`CLUSTERS`] equal shares of 1.0.0.0–223.255.255.255 (a
/// block that runs into the next one pushes it on): about 1,300 addresses per entry, so
/// 1M entries fill about a third of each share, 100k a thirtieth.
pub fn clustered_v4(entries: usize, rng: &mut Rng) -> CompiledList {
    const FIRST: u64 = 0x0100_0000; // 1.0.0.0
    const END: u64 = 0xe000_0000; // 224.0.0.0
    let share = (END - FIRST) / CLUSTERS as u64;
    let mut networks = Vec::with_capacity(entries);
    let mut cursor = FIRST;
    for block in 0..CLUSTERS {
        let start = FIRST + block as u64 * share + rng.below(share / 4);
        cursor = cursor.max(start);
        // Entries spread evenly over the blocks, the remainder one each to the first.
        let count = entries / CLUSTERS + usize::from(block < entries % CLUSTERS);
        let mut placed = 0;
        while placed < count {
            let prefix_len: u8 = match rng.below(100) {
                0 => 16 + rng.below(4) as u8,
                1..=20 => 20 + rng.below(3) as u8,
                21..=80 => 23 + rng.below(2) as u8,
                _ => 25 + rng.below(5) as u8,
            };
            let size = 1u64 << (32 - prefix_len);
            let at = cursor.div_ceil(size) * size;
            assert!(
                at + size <= END,
                "clustered_v4({entries}): the blocks ran past 224.0.0.0; make the gaps smaller"
            );
            cursor = at + size + rng.below(size / 4 + 1);
            let net = Ipv4Net::new(Ipv4Addr::from(at as u32), prefix_len).expect("valid length");
            if net.contains(&KEPT_OUT) || KEPT_OUT.contains(&net) {
                continue;
            }
            networks.push(IpNet::V4(net));
            placed += 1;
        }
    }
    let (list, _) = CompiledList::compile(networks);
    assert_eq!(list.v4.len(), entries, "clustered_v4: networks overlap");
    list
}

/// An address inside a randomly chosen listed IPv4 network.
pub fn listed_v4(list: &CompiledList, rng: &mut Rng) -> Ipv4Addr {
    let (net, _) = list.v4[rng.below(list.v4.len() as u64) as usize];
    let size = 1u64 << (32 - u32::from(net.prefix_len()));
    Ipv4Addr::from(u32::from(net.network()) + rng.below(size) as u32)
}

/// A random IPv4 address (1.0.0.0–223.255.255.255) that no listed network covers.
pub fn unlisted_v4(list: &CompiledList, rng: &mut Rng) -> Ipv4Addr {
    loop {
        let candidate = random_v4(rng);
        if !list.covers_v4(candidate) {
            return candidate;
        }
    }
}

/// A random address in 1.0.0.0–223.255.255.255 (no multicast or reserved), outside
/// [`KEPT_OUT`].
fn random_v4(rng: &mut Rng) -> Ipv4Addr {
    const FIRST: u32 = 0x0100_0000; // 1.0.0.0
    const END: u32 = 0xe000_0000; // 224.0.0.0
    loop {
        let address = Ipv4Addr::from(FIRST + rng.below(u64::from(END - FIRST)) as u32);
        if !KEPT_OUT.contains(&address) {
            return address;
        }
    }
}

/// TEST-NET-3, kept out of every generated list and source, so the benchmarks can add
/// an address from it as a new entry.
pub const KEPT_OUT: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(203, 0, 113, 0), 24);

fn random_v4_net(rng: &mut Rng) -> Ipv4Net {
    loop {
        let net = draw_v4_net(rng);
        if !net.contains(&KEPT_OUT) && !KEPT_OUT.contains(&net) {
            return net;
        }
    }
}

fn draw_v4_net(rng: &mut Rng) -> Ipv4Net {
    // Percent of entries per prefix length.
    let prefix_len = match rng.below(100) {
        0..=49 => 24,
        50..=64 => 32,
        65..=74 => 23,
        75..=82 => 22,
        83..=89 => 20 + rng.below(2) as u8,
        90 => 16 + rng.below(4) as u8,
        _ => 25 + rng.below(6) as u8,
    };
    Ipv4Net::new(random_v4(rng), prefix_len)
        .expect("valid prefix length")
        .trunc()
}

fn random_v6(rng: &mut Rng) -> Ipv6Addr {
    // 2000::/3: the global unicast space.
    let high = (rng.next_u64() >> 3) | (1 << 61);
    Ipv6Addr::from((u128::from(high) << 64) | u128::from(rng.next_u64()))
}

fn random_v6_net(rng: &mut Rng) -> Ipv6Net {
    let prefix_len = match rng.below(100) {
        0..=29 => 48,
        30..=54 => 56,
        55..=74 => 64,
        75..=89 => 128,
        _ => 32 + rng.below(16) as u8,
    };
    Ipv6Net::new(random_v6(rng), prefix_len)
        .expect("valid prefix length")
        .trunc()
}

/// Draws networks until the compiled list holds exactly `entries` of them, dropping
/// surplus ones at random (not the highest, so the list stays spread over the space).
fn exactly(entries: usize, rng: &mut Rng, mut draw: impl FnMut(&mut Rng) -> IpNet) -> CompiledList {
    let mut networks: Vec<IpNet> = Vec::with_capacity(entries);
    let mut list = CompiledList::default();
    while list.v4.len() + list.v6.len() < entries {
        let missing = entries - (list.v4.len() + list.v6.len());
        networks.extend((0..missing + missing / 8 + 1).map(|_| draw(rng)));
        list = CompiledList::compile(networks.iter().copied()).0;
        networks = list
            .v4
            .iter()
            .map(|(n, _)| IpNet::V4(*n))
            .chain(list.v6.iter().map(|(n, _)| IpNet::V6(*n)))
            .collect();
    }
    while networks.len() > entries {
        let victim = rng.below(networks.len() as u64) as usize;
        networks.swap_remove(victim);
    }
    CompiledList::compile(networks).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clustered_lists_have_exactly_their_size_and_leave_most_of_the_space_empty() {
        for seed in 0..8 {
            for entries in [10, 1_000, 100_000, 1_000_000] {
                let list = clustered_v4(entries, &mut Rng::new(seed ^ entries as u64));
                assert_eq!(list.v4.len(), entries);
            }
        }
        let list = clustered_v4(100_000, &mut Rng::new(7));
        let slash8s: std::collections::BTreeSet<u8> = list
            .v4
            .iter()
            .map(|(net, _)| net.network().octets()[0])
            .collect();
        assert!(slash8s.len() < 224, "{} /8s", slash8s.len());
        let mut rng = Rng::new(8);
        let unlisted = (0..1000)
            .filter(|_| !list.covers_v4(random_v4(&mut rng)))
            .count();
        assert!(unlisted > 900, "{unlisted} of 1000 random sources unlisted");
    }
}
