//! The compiled lookup (coarse screen → screen bitmap → exact-host hash → LPM trie, per
//! slot) gives
//! exactly the verdict a plain reference gives, for random lists and random sources.
//!
//! The reference is brute force over the entries as the operator wrote them: a source
//! may reach a port if any entry containing it allows that port (or all ports). The
//! kernel's answer comes from the real program under `BPF_PROG_TEST_RUN`, after the
//! daemon's own compile and apply. A second reference, the longest prefix of the compiled
//! list found by scanning every prefix, pins down that the kernel's maps together are a
//! longest-prefix match over exactly that list.
//!
//! Lists are applied one after another to the same filter, so every apply after the first
//! is a diff of both slots, as in the daemon. Seeds are fixed: a failure names the seed,
//! the list and the source, and reproduces. Needs root (BPF, bpffs).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use allowlist_common::{IPPROTO_TCP, IPPROTO_UDP, MAX_EXACT_V6};
use allowlist_tests::{
    frames::{self, Ipv4Header, Ipv6Header, TEST_DST_MAC, TEST_SRC_MAC},
    rng::Rng,
    test_filter::{TestFilter, Verdict},
};
use allowlist_userspace::{
    compile::{CompiledList, Reach},
    config::Mode,
    ports::PortSpec,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// An entry as an operator lists it: a network, and the ports it may reach (all if none).
#[derive(Clone, Debug)]
struct Entry {
    network: IpNet,
    ports: Vec<PortSpec>,
}

/// What the reference says a source may reach: every entry containing it counts.
fn reference_allows(entries: &[Entry], source: IpAddr, protocol: u8, port: u16) -> bool {
    entries.iter().any(|entry| {
        entry.network.contains(&source)
            && (entry.ports.is_empty() || entry.ports.iter().any(|p| p.contains(protocol, port)))
    })
}

/// The longest compiled prefix containing `source`, found by scanning them all.
fn longest_compiled_prefix(list: &CompiledList, source: IpAddr) -> Option<&Reach> {
    match source {
        IpAddr::V4(addr) => list
            .v4
            .iter()
            .filter(|(net, _)| net.contains(&addr))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, reach)| reach),
        IpAddr::V6(addr) => list
            .v6
            .iter()
            .filter(|(net, _)| net.contains(&addr))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, reach)| reach),
    }
}

// ---------------------------------------------------------------------------------------
// Random lists and sources: clustered, so that prefixes nest and overlap and many
// sources fall near the edges of listed networks.
// ---------------------------------------------------------------------------------------

/// Ports come from a narrow range so that scopes overlap and probes hit their edges.
const PORTS: std::ops::RangeInclusive<u16> = 20..=40;

struct Generator {
    rng: Rng,
    /// Leave out the very wide prefixes, which set whole stretches of the screens: with
    /// them a missing screen bit would go unnoticed.
    narrow: bool,
    clusters_v4: Vec<u32>,
    clusters_v6: Vec<u128>,
}

impl Generator {
    fn new(seed: u64) -> Generator {
        let mut rng = Rng::new(seed);
        let clusters_v4 = (0..4)
            .map(|_| rng.next_u64() as u32 & 0xffff_0000)
            .collect();
        let clusters_v6 = (0..4)
            .map(|_| (0x2000u128 << 112 | (rng.next_u64() as u128) << 64) & !((1u128 << 80) - 1))
            .collect();
        Generator {
            rng,
            narrow: false,
            clusters_v4,
            clusters_v6,
        }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.rng.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.below(items.len() as u64) as usize]
    }

    /// An address in a cluster most of the time, anywhere otherwise.
    fn address_v4(&mut self) -> u32 {
        let random = self.rng.next_u64() as u32;
        if self.chance(85) {
            self.pick(&self.clusters_v4.clone()) | (random & 0xffff)
        } else {
            random
        }
    }

    fn address_v6(&mut self) -> u128 {
        let random = (self.rng.next_u64() as u128) << 64 | self.rng.next_u64() as u128;
        if self.chance(85) {
            self.pick(&self.clusters_v6.clone()) | (random & ((1u128 << 80) - 1))
        } else {
            random
        }
    }

    /// Hosts, networks around /24 (/64 in IPv6), wider ones, and now and then a very
    /// wide one (which sets whole stretches of the screen).
    fn prefix_len(&mut self, host: u8) -> u8 {
        let roll = self.rng.below(if self.narrow { 94 } else { 100 });
        let (low, high) = match (host, roll) {
            (_, 0..=34) => (host, host),
            (32, 35..=69) => (24, 31),
            (32, 70..=93) => (16, 23),
            (32, _) => (0, 15),
            (_, 35..=69) => (48, 127),
            (_, 70..=93) => (20, 47),
            (_, _) => (0, 19),
        };
        low + self.rng.below(u64::from(high - low) + 1) as u8
    }

    fn ports(&mut self) -> Vec<PortSpec> {
        if self.chance(60) {
            return Vec::new();
        }
        (0..1 + self.rng.below(3))
            .map(|_| {
                let first = self.port();
                let last = (first + self.rng.below(4) as u16).min(*PORTS.end());
                PortSpec {
                    protocol: self.pick(&[IPPROTO_TCP, IPPROTO_UDP]),
                    first,
                    last,
                }
            })
            .collect()
    }

    fn port(&mut self) -> u16 {
        PORTS.start() + self.rng.below(u64::from(PORTS.end() - PORTS.start()) + 1) as u16
    }

    fn list(&mut self, entries: usize) -> Vec<Entry> {
        (0..entries)
            .map(|_| {
                let network = if self.chance(60) {
                    let len = self.prefix_len(32);
                    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(self.address_v4()), len).unwrap()).trunc()
                } else {
                    let len = self.prefix_len(128);
                    IpNet::V6(Ipv6Net::new(Ipv6Addr::from(self.address_v6()), len).unwrap()).trunc()
                };
                let ports = self.ports();
                Entry { network, ports }
            })
            .collect()
    }

    /// Inside a listed network, just outside one, or anywhere (mostly in a cluster).
    fn source(&mut self, entries: &[Entry]) -> IpAddr {
        let entry = &entries[self.rng.below(entries.len() as u64) as usize];
        match (self.rng.below(10), entry.network) {
            (0..=3, IpNet::V4(net)) => {
                let host_bits = u32::MAX
                    .checked_shr(u32::from(net.prefix_len()))
                    .unwrap_or(0);
                let base = u32::from(net.network());
                IpAddr::V4(Ipv4Addr::from(
                    base | (self.rng.next_u64() as u32 & host_bits),
                ))
            }
            (0..=3, IpNet::V6(net)) => {
                let host_bits = u128::MAX
                    .checked_shr(u32::from(net.prefix_len()))
                    .unwrap_or(0);
                let base = u128::from(net.network());
                let random = (self.rng.next_u64() as u128) << 64 | self.rng.next_u64() as u128;
                IpAddr::V6(Ipv6Addr::from(base | (random & host_bits)))
            }
            (4, IpNet::V4(net)) => {
                IpAddr::V4(Ipv4Addr::from(u32::from(net.broadcast()).wrapping_add(1)))
            }
            (5, IpNet::V4(net)) => {
                IpAddr::V4(Ipv4Addr::from(u32::from(net.network()).wrapping_sub(1)))
            }
            (4, IpNet::V6(net)) => {
                IpAddr::V6(Ipv6Addr::from(u128::from(net.broadcast()).wrapping_add(1)))
            }
            (5, IpNet::V6(net)) => {
                IpAddr::V6(Ipv6Addr::from(u128::from(net.network()).wrapping_sub(1)))
            }
            (6..=7, _) => IpAddr::V4(Ipv4Addr::from(self.address_v4())),
            _ => IpAddr::V6(Ipv6Addr::from(self.address_v6())),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------

/// An Ethernet frame carrying a TCP SYN or a UDP header from `source` (port 40000) to
/// `port` of 10.99.99.99 or 2001:db8:ffff::1. Checksums are left zero: the program never
/// looks at them.
fn frame(source: IpAddr, protocol: u8, port: u16) -> Vec<u8> {
    let transport = if protocol == IPPROTO_TCP {
        frames::tcp_syn(40000, port)
    } else {
        frames::udp(40000, port, &[])
    };
    let (ether_type, packet) = match source {
        IpAddr::V4(source) => (
            frames::ETH_P_IPV4,
            Ipv4Header::new(source, Ipv4Addr::new(10, 99, 99, 99), protocol)
                .id(0x1234)
                .dont_fragment()
                .packet(&transport),
        ),
        IpAddr::V6(source) => (
            frames::ETH_P_IPV6,
            Ipv6Header::new(source, "2001:db8:ffff::1".parse().unwrap(), protocol)
                .packet(&transport),
        ),
    };
    frames::ethernet(TEST_DST_MAC, TEST_SRC_MAC, &[], ether_type, &packet)
}

// ---------------------------------------------------------------------------------------
// The specification
// ---------------------------------------------------------------------------------------

/// An enforcing filter with nothing else open: no public ports, no return traffic, no
/// DHCP, so the list alone decides.
fn enforcing_filter() -> TestFilter {
    let mut filter = TestFilter::open();
    filter.set_mode(Mode::Enforce);
    filter
}

fn compile(entries: &[Entry]) -> CompiledList {
    let (list, _) = CompiledList::compile_with_ports(entries.iter().map(reach_of), &[])
        .expect("random port scopes stay within the kernel's port-set size");
    list
}

fn reach_of(entry: &Entry) -> (IpNet, Reach) {
    (entry.network, Reach::from_ports(&entry.ports))
}

fn apply(filter: &mut TestFilter, entries: &[Entry]) -> CompiledList {
    let list = compile(entries);
    filter.filter().apply(&list).expect("applying the list");
    list
}

/// Probes `probes` sources (each with a random protocol and port) and fails on the first
/// verdict that differs from either reference.
fn assert_kernel_agrees(
    filter: &mut TestFilter,
    generator: &mut Generator,
    entries: &[Entry],
    list: &CompiledList,
    probes: usize,
    what: &str,
) -> (usize, usize) {
    let (mut passed, mut dropped) = (0, 0);
    for _ in 0..probes {
        let source = generator.source(entries);
        let protocol = generator.pick(&[IPPROTO_TCP, IPPROTO_UDP]);
        let port = generator.port();
        if assert_kernel_agrees_on(filter, entries, list, (source, protocol, port), what) {
            passed += 1;
        } else {
            dropped += 1;
        }
    }
    (passed, dropped)
}

/// Fails unless the kernel and both references agree on one packet; returns whether it
/// may pass.
fn assert_kernel_agrees_on(
    filter: &mut TestFilter,
    entries: &[Entry],
    list: &CompiledList,
    (source, protocol, port): (IpAddr, u8, u16),
    what: &str,
) -> bool {
    let expected = reference_allows(entries, source, protocol, port);
    let by_longest_prefix =
        longest_compiled_prefix(list, source).is_some_and(|reach| reach.allows(protocol, port));
    assert_eq!(
        by_longest_prefix, expected,
        "{what}: the compiled list's longest prefix disagrees with the entries for \
         {source} port {port}/{protocol}"
    );
    let verdict = filter.run(&frame(source, protocol, port));
    let containing: Vec<&Entry> = entries
        .iter()
        .filter(|entry| entry.network.contains(&source))
        .collect();
    assert_eq!(
        verdict == Verdict::Pass,
        expected,
        "{what}: the kernel said {verdict:?} for {source} port {port}/{protocol}; \
         entries containing it: {containing:?}"
    );
    expected
}

#[test]
fn the_kernel_judges_every_source_as_the_reference_does_over_random_lists() {
    let mut filter = enforcing_filter();
    let (mut passed, mut dropped) = (0, 0);
    for seed in 1..=24u64 {
        let mut generator = Generator::new(seed);
        let size = match seed % 4 {
            0 => 1 + generator.rng.below(10) as usize,
            1 | 2 => 50 + generator.rng.below(400) as usize,
            _ => 2_000 + generator.rng.below(3_000) as usize,
        };
        let entries = generator.list(size);
        let list = apply(&mut filter, &entries);
        let what = format!("seed {seed}, {size} entries");
        let (p, d) =
            assert_kernel_agrees(&mut filter, &mut generator, &entries, &list, 1_500, &what);
        passed += p;
        dropped += d;
    }
    // The probes must exercise both verdicts, or agreeing would prove nothing.
    assert!(
        passed > 5_000 && dropped > 5_000,
        "probes passed {passed} and dropped {dropped}; both should be common"
    );
}

/// One entry added, updated or removed at a time, the way the daemon handles a single
/// `allowlistctl add` or `remove`: only the changed network's region is recompiled and
/// written, in place, into the slot packets are judged by.
#[test]
fn single_changes_applied_in_place_keep_the_kernel_agreeing_with_the_reference() {
    let mut filter = enforcing_filter();
    let mut generator = Generator::new(7);
    generator.narrow = true;
    let mut entries = generator.list(300);
    let mut list = apply(&mut filter, &entries);
    let (mut passed, mut dropped) = (0, 0);
    for step in 0..300 {
        let changed = if generator.chance(60) {
            // A new network, or new ports for a listed one.
            let mut new = generator.list(1).remove(0);
            if generator.chance(20) {
                new.network = entries[generator.rng.below(entries.len() as u64) as usize].network;
            }
            entries.retain(|entry| entry.network != new.network);
            entries.push(new.clone());
            new.network
        } else {
            let index = generator.rng.below(entries.len() as u64) as usize;
            entries.swap_remove(index).network
        };
        let around = entries
            .iter()
            .filter(|entry| changed.contains(&entry.network) || entry.network.contains(&changed))
            .map(reach_of)
            .collect();
        list.recompile_region(changed, around)
            .expect("random port scopes stay within the kernel's port-set size");
        assert_eq!(
            list,
            compile(&entries),
            "step {step}: recompiling the region of {changed} differs from compiling all"
        );
        filter
            .filter()
            .apply_region(&list, changed)
            .expect("applying the change");
        let what = format!("step {step}, after changing {changed}");
        let (p, d) = assert_kernel_agrees(&mut filter, &mut generator, &entries, &list, 60, &what);
        passed += p;
        dropped += d;
    }
    assert!(
        passed > 500 && dropped > 500,
        "probes passed {passed} and dropped {dropped}; both should be common"
    );
}

/// The coarse screen rules a source out by its /20 before the screen looks at its /24.
/// Networks that sit inside one /20 (at its start or its end), fill one exactly, or span
/// several, listed alone or near each other; probed at the edges of each network and of
/// the /20s around it (the first and last address of its first and last /20, and the
/// addresses just outside them), where a coarse bit set for the wrong /20 would show.
#[test]
fn sources_at_the_edges_of_the_slash_20s_around_listed_networks_are_judged_as_the_reference_does() {
    const SLASH_20: u32 = 1 << 12;
    let mut filter = enforcing_filter();
    let (mut passed, mut dropped) = (0, 0);
    for seed in 1..=8u64 {
        let mut generator = Generator::new(seed);
        let entries: Vec<Entry> = (0..60)
            .map(|_| {
                let len = generator.pick(&[16, 18, 19, 20, 21, 22, 23, 24, 26, 28, 32]);
                let size = 1u32 << (32 - len);
                let block = generator.address_v4() & !(SLASH_20 - 1);
                // Inside a /20, at its start or flush with its end; or aligned to its own
                // size when it spans /20s.
                let network = match (size < SLASH_20, generator.chance(50)) {
                    (true, true) => block,
                    (true, false) => block + SLASH_20 - size,
                    (false, _) => block & !(size - 1),
                };
                let ports = generator.ports();
                Entry {
                    network: IpNet::V4(Ipv4Net::new(Ipv4Addr::from(network), len).unwrap()),
                    ports,
                }
            })
            .collect();
        let list = apply(&mut filter, &entries);
        for entry in &entries {
            let IpNet::V4(net) = entry.network else {
                continue;
            };
            let (first, last) = (u32::from(net.network()), u32::from(net.broadcast()));
            let (first_block, last_block) = (first & !(SLASH_20 - 1), last | (SLASH_20 - 1));
            let edges = [first_block, first, last, last_block];
            let sources = edges
                .iter()
                .flat_map(|&edge| [edge.wrapping_sub(1), edge, edge.wrapping_add(1)]);
            for source in sources {
                let packet = (
                    IpAddr::V4(Ipv4Addr::from(source)),
                    generator.pick(&[IPPROTO_TCP, IPPROTO_UDP]),
                    generator.port(),
                );
                let what = format!("seed {seed}, around {net}");
                if assert_kernel_agrees_on(&mut filter, &entries, &list, packet, &what) {
                    passed += 1;
                } else {
                    dropped += 1;
                }
            }
        }
    }
    assert!(
        passed > 1_000 && dropped > 1_000,
        "probes passed {passed} and dropped {dropped}; both should be common"
    );
}

#[test]
fn hosts_beyond_the_exact_host_capacity_are_judged_exactly_too() {
    let mut filter = enforcing_filter();
    // More IPv6 hosts (every other address from `base`) than the exact-host hash holds:
    // the rest go to the trie.
    let base: u128 = 0x2001_0db8_0000_0000_0000_0000_0000_0000;
    let host = |i: u128| Entry {
        network: IpNet::V6(Ipv6Net::new(Ipv6Addr::from(base + 2 * i), 128).unwrap()),
        ports: Vec::new(),
    };
    let hosts = MAX_EXACT_V6 as u128 + 1_000;
    let mut entries: Vec<Entry> = (0..hosts).map(host).collect();
    apply(&mut filter, &entries);
    let first_and_last = [0, hosts / 2, hosts - 1_000, hosts - 1];
    assert_listed_and_neighbour_unlisted(&mut filter, base, &first_and_last, "first apply");

    // Remove early hosts (freeing room in the hash) and add later ones: every host is
    // still judged right wherever the diff put it, and removed ones are gone.
    entries.drain(0..500);
    entries.extend((hosts..hosts + 800).map(host));
    apply(&mut filter, &entries);
    assert_listed_and_neighbour_unlisted(
        &mut filter,
        base,
        &[500, hosts / 2, hosts - 1, hosts, hosts + 799],
        "after the diff",
    );
    for removed in [0, 499] {
        let source = IpAddr::V6(Ipv6Addr::from(base + 2 * removed));
        let verdict = filter.run(&frame(source, IPPROTO_UDP, 30));
        assert_eq!(verdict, Verdict::Drop, "after the diff: removed {source}");
    }
}

/// Host number `i` (address `base + 2i`) passes and the address after it drops.
fn assert_listed_and_neighbour_unlisted(
    filter: &mut TestFilter,
    base: u128,
    hosts: &[u128],
    what: &str,
) {
    for &i in hosts {
        for (offset, wanted) in [(0, Verdict::Pass), (1, Verdict::Drop)] {
            let source = IpAddr::V6(Ipv6Addr::from(base + 2 * i + offset));
            let verdict = filter.run(&frame(source, IPPROTO_UDP, 30));
            assert_eq!(verdict, wanted, "{what}: {source} (host {i})");
        }
    }
}
