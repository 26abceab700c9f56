//! Turns the allowlist's entries into the smallest set of prefixes the kernel needs.
//!
//! The kernel answers "is this source covered by any listed prefix?", so a duplicate or
//! a prefix inside a shorter listed one changes no verdict: both are dropped here, once,
//! instead of costing trie memory and lookup depth for every packet.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The prefixes to load into the kernel, per family, sorted and pairwise disjoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledList {
    pub v4: Vec<Ipv4Net>,
    pub v6: Vec<Ipv6Net>,
}

/// What compiling did, for the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompileReport {
    pub entries: usize,
    pub duplicates: usize,
    pub covered: usize,
    pub v4: usize,
    pub v6: usize,
}

impl CompiledList {
    /// Compiles any list of networks (host bits already cleared or not).
    pub fn compile(networks: impl IntoIterator<Item = IpNet>) -> (CompiledList, CompileReport) {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for network in networks {
            match network.trunc() {
                IpNet::V4(net) => v4.push(net),
                IpNet::V6(net) => v6.push(net),
            }
        }
        let entries = v4.len() + v6.len();
        let (v4, v4_duplicates, v4_covered) = minimise(v4, |n| n.network(), |a, b| a.contains(b));
        let (v6, v6_duplicates, v6_covered) = minimise(v6, |n| n.network(), |a, b| a.contains(b));
        let report = CompileReport {
            entries,
            duplicates: v4_duplicates + v6_duplicates,
            covered: v4_covered + v6_covered,
            v4: v4.len(),
            v6: v6.len(),
        };
        (CompiledList { v4, v6 }, report)
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Longest-prefix semantics reduced to membership: is `addr` covered by any prefix?
    pub fn covers_v4(&self, addr: Ipv4Addr) -> bool {
        covering(&self.v4, |n| n.network() <= addr, |n| n.contains(&addr))
    }

    pub fn covers_v6(&self, addr: Ipv6Addr) -> bool {
        covering(&self.v6, |n| n.network() <= addr, |n| n.contains(&addr))
    }
}

/// Sorts by (network address, prefix length) so a covering prefix comes before what it
/// covers; then every kept prefix is disjoint from the ones before it, and a later prefix
/// can only be covered by the last one kept.
fn minimise<N: Ord + Copy, A: Ord>(
    mut networks: Vec<N>,
    address: impl Fn(&N) -> A,
    contains: impl Fn(&N, &N) -> bool,
) -> (Vec<N>, usize, usize) {
    networks.sort_unstable_by(|a, b| address(a).cmp(&address(b)).then(a.cmp(b)));
    let mut kept: Vec<N> = Vec::with_capacity(networks.len());
    let (mut duplicates, mut covered) = (0, 0);
    for network in networks {
        match kept.last() {
            Some(last) if *last == network => duplicates += 1,
            Some(last) if contains(last, &network) => covered += 1,
            _ => kept.push(network),
        }
    }
    (kept, duplicates, covered)
}

/// Binary search in a sorted disjoint list: only the last prefix starting at or before
/// the address can contain it.
fn covering<N>(
    sorted: &[N],
    starts_at_or_before: impl Fn(&N) -> bool,
    contains: impl Fn(&N) -> bool,
) -> bool {
    let candidates = sorted.partition_point(starts_at_or_before);
    candidates > 0 && contains(&sorted[candidates - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn duplicates_and_covered_prefixes_are_dropped_and_counted() {
        let (list, report) = CompiledList::compile(nets(&[
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.0.0.0/8",
            "192.0.2.7/32",
            "192.0.2.0/24",
            "2001:db8::/32",
            "2001:db8:1::/48",
            "2001:db9::1/128",
        ]));
        assert_eq!(
            list.v4,
            [
                "10.0.0.0/8".parse().unwrap(),
                "192.0.2.0/24".parse().unwrap()
            ]
        );
        assert_eq!(
            list.v6,
            [
                "2001:db8::/32".parse::<Ipv6Net>().unwrap(),
                "2001:db9::1/128".parse().unwrap()
            ]
        );
        assert_eq!(
            report,
            CompileReport {
                entries: 8,
                duplicates: 1,
                covered: 3,
                v4: 2,
                v6: 2
            }
        );
    }

    #[test]
    fn host_bits_are_cleared_before_comparing() {
        let (list, report) = CompiledList::compile(nets(&["192.0.2.77/24", "192.0.2.0/24"]));
        assert_eq!(list.v4, ["192.0.2.0/24".parse().unwrap()]);
        assert_eq!(report.duplicates, 1);
    }

    #[test]
    fn sibling_prefixes_are_both_kept() {
        let (list, _) = CompiledList::compile(nets(&["10.0.0.0/9", "10.128.0.0/9", "10.0.0.0/10"]));
        assert_eq!(list.v4.len(), 2);
        assert!(list.covers_v4("10.200.0.1".parse().unwrap()));
        assert!(list.covers_v4("10.0.0.1".parse().unwrap()));
        assert!(!list.covers_v4("11.0.0.1".parse().unwrap()));
    }
}
