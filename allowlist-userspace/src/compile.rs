//! Turns the allowlist's entries into the smallest set of prefixes the kernel needs, each
//! with the access its longest match must grant.
//!
//! The kernel looks up only the longest listed prefix containing a source, so every
//! prefix here already carries the union of what all entries containing it allow — a
//! port-scoped /32 inside an allow-all /24 allows all. Folding that here, once, keeps
//! the per-packet path to one lookup. A prefix that adds nothing to what a shorter one
//! containing it grants (a duplicate, or covered) is left out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::ports::{self, PortSpec};

/// What a listed network may reach.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reach {
    All,
    /// Destination ports, merged and sorted ([`ports::union`]).
    Ports(Vec<PortSpec>),
}

impl Reach {
    pub fn from_ports(ports: &[PortSpec]) -> Reach {
        if ports.is_empty() {
            Reach::All
        } else {
            Reach::Ports(ports::union(ports.iter().copied()))
        }
    }

    fn union(&self, other: &Reach) -> Reach {
        match (self, other) {
            (Reach::Ports(a), Reach::Ports(b)) => {
                Reach::Ports(ports::union(a.iter().chain(b).copied()))
            }
            _ => Reach::All,
        }
    }

    pub fn allows_all(&self) -> bool {
        *self == Reach::All
    }

    pub fn allows(&self, protocol: u8, port: u16) -> bool {
        match self {
            Reach::All => true,
            Reach::Ports(ranges) => ranges.iter().any(|range| range.contains(protocol, port)),
        }
    }
}

/// The prefixes to load into the kernel, per family, sorted by (address, length).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledList {
    pub v4: Vec<(Ipv4Net, Reach)>,
    pub v6: Vec<(Ipv6Net, Reach)>,
    /// Ports any source may reach (`public_ports`), merged.
    pub public_ports: Vec<PortSpec>,
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

/// A folded port set larger than the kernel's fixed-size one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{network}: the entries covering it allow {ranges} separate port ranges; the kernel holds at most {max} per source. Merge ranges or list the network without ports")]
pub struct TooManyPortRanges {
    pub network: String,
    pub ranges: usize,
    pub max: usize,
}

impl CompiledList {
    /// Compiles allow-all networks (host bits cleared or not).
    pub fn compile(networks: impl IntoIterator<Item = IpNet>) -> (CompiledList, CompileReport) {
        Self::compile_with_ports(
            networks.into_iter().map(|network| (network, Reach::All)),
            &[],
        )
        .expect("allow-all entries have no port sets")
    }

    pub fn compile_with_ports(
        entries: impl IntoIterator<Item = (IpNet, Reach)>,
        public_ports: &[PortSpec],
    ) -> Result<(CompiledList, CompileReport), TooManyPortRanges> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (network, access) in entries {
            match network.trunc() {
                IpNet::V4(net) => v4.push((net, access)),
                IpNet::V6(net) => v6.push((net, access)),
            }
        }
        let entries = v4.len() + v6.len();
        let (v4, v4_duplicates, v4_covered) = fold(v4, |a, b| a.contains(b))?;
        let (v6, v6_duplicates, v6_covered) = fold(v6, |a, b| a.contains(b))?;
        let public_ports = ports::union(public_ports.iter().copied());
        if !ports::fits_kernel(&public_ports) {
            return Err(TooManyPortRanges {
                network: "public_ports".into(),
                ranges: public_ports.len(),
                max: allowlist_common::MAX_PORT_RANGES,
            });
        }
        let report = CompileReport {
            entries,
            duplicates: v4_duplicates + v6_duplicates,
            covered: v4_covered + v6_covered,
            v4: v4.len(),
            v6: v6.len(),
        };
        Ok((
            CompiledList {
                v4,
                v6,
                public_ports,
            },
            report,
        ))
    }

    /// Recompiles only the prefixes inside `region`, after entries inside it (or `region`
    /// itself) changed. `around` must hold every entry inside or containing `region`
    /// ([`crate::allowlist::Allowlist::entries_around`]). A prefix's compiled reach
    /// depends only on the entries containing it, so nothing outside `region` changes,
    /// and one change to a list of millions costs what the region holds. On error the
    /// list is unchanged.
    pub fn recompile_region(
        &mut self,
        region: IpNet,
        around: Vec<(IpNet, Reach)>,
    ) -> Result<(), TooManyPortRanges> {
        match region.trunc() {
            IpNet::V4(region) => recompile_family(
                &mut self.v4,
                region,
                around,
                |net| match net {
                    IpNet::V4(net) => Some(net),
                    IpNet::V6(_) => None,
                },
                |a, b| a.contains(b),
            )?,
            IpNet::V6(region) => recompile_family(
                &mut self.v6,
                region,
                around,
                |net| match net {
                    IpNet::V6(net) => Some(net),
                    IpNet::V4(_) => None,
                },
                |a, b| a.contains(b),
            )?,
        }
        Ok(())
    }

    /// Refuses a list the kernel's maps cannot hold: more prefixes per family than its
    /// tries do, or more distinct port sets than its port-set arrays.
    pub fn check_kernel_limits(&self) -> Result<(), String> {
        let max = allowlist_common::MAX_ENTRIES_PER_FAMILY as usize;
        for (family, len) in [("IPv4", self.v4.len()), ("IPv6", self.v6.len())] {
            if len > max {
                return Err(format!(
                    "{len} {family} prefixes after compiling; the kernel holds at most {max} per family"
                ));
            }
        }
        let sets: std::collections::HashSet<&[PortSpec]> = self
            .v4
            .iter()
            .map(|(_, reach)| reach)
            .chain(self.v6.iter().map(|(_, reach)| reach))
            .filter_map(|reach| match reach {
                Reach::Ports(ranges) => Some(ranges.as_slice()),
                Reach::All => None,
            })
            .collect();
        // One more for the public ports.
        let max_sets = allowlist_common::MAX_PORT_SETS as usize - 1;
        if sets.len() > max_sets {
            return Err(format!(
                "{} distinct port scopes; the kernel holds at most {max_sets}. Give entries the same ports where you can",
                sets.len()
            ));
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// The access of the longest listed prefix containing `addr`, as the kernel finds it.
    pub fn access_of(&self, addr: IpAddr) -> Option<&Reach> {
        match addr {
            IpAddr::V4(v4) => longest_match(&self.v4, 32, |len| {
                Ipv4Net::new(v4, len).map(|n| n.trunc()).ok()
            }),
            IpAddr::V6(v6) => longest_match(&self.v6, 128, |len| {
                Ipv6Net::new(v6, len).map(|n| n.trunc()).ok()
            }),
        }
    }

    /// Whether any listed prefix contains `addr` (whatever ports it allows).
    pub fn covers_v4(&self, addr: Ipv4Addr) -> bool {
        self.access_of(IpAddr::V4(addr)).is_some()
    }

    pub fn covers_v6(&self, addr: Ipv6Addr) -> bool {
        self.access_of(IpAddr::V6(addr)).is_some()
    }
}

/// The range of `sorted` (by address, then length) holding the prefixes inside `region`:
/// they start at `region` itself and run while inside it.
pub fn region_range<N: Ord, T>(
    sorted: &[(N, T)],
    region: &N,
    inside: impl Fn(&N) -> bool,
) -> std::ops::Range<usize> {
    let start = sorted.partition_point(|(net, _)| net < region);
    let len = sorted[start..]
        .iter()
        .take_while(|(net, _)| inside(net))
        .count();
    start..start + len
}

/// One family's part of [`CompiledList::recompile_region`]: folds the entries of that
/// family (`family` picks them, `contains` is its prefix containment) and splices the folded prefixes inside `region` into
/// `sorted` in place of the old ones.
fn recompile_family<N: Ord + Copy + std::fmt::Display>(
    sorted: &mut Vec<(N, Reach)>,
    region: N,
    around: Vec<(IpNet, Reach)>,
    family: impl Fn(IpNet) -> Option<N>,
    contains: fn(&N, &N) -> bool,
) -> Result<(), TooManyPortRanges> {
    let entries = around
        .into_iter()
        .filter_map(|(net, reach)| Some((family(net.trunc())?, reach)))
        .collect();
    let (folded, _, _) = fold(entries, contains)?;
    let inside = |net: &N| contains(&region, net);
    let range = region_range(sorted, &region, inside);
    sorted.splice(range, folded.into_iter().filter(|(net, _)| inside(net)));
    Ok(())
}

/// Tries each prefix length from the longest: at most 33 or 129 binary searches.
fn longest_match<N: Ord>(
    sorted: &[(N, Reach)],
    max_len: u8,
    prefix: impl Fn(u8) -> Option<N>,
) -> Option<&Reach> {
    (0..=max_len).rev().find_map(|len| {
        let candidate = prefix(len)?;
        sorted
            .binary_search_by(|(net, _)| net.cmp(&candidate))
            .ok()
            .map(|index| &sorted[index].1)
    })
}

/// The kept prefixes with their reach, and how many were duplicates and covered.
type Folded<N> = (Vec<(N, Reach)>, usize, usize);

/// Sorted by (address, length), a prefix comes after every prefix containing it, so a
/// stack of the kept prefixes containing the current one gives what it inherits.
fn fold<N: Ord + Copy + std::fmt::Display>(
    mut entries: Vec<(N, Reach)>,
    contains: impl Fn(&N, &N) -> bool,
) -> Result<Folded<N>, TooManyPortRanges> {
    entries.sort();
    let mut duplicates = 0;
    let mut merged: Vec<(N, Reach)> = Vec::with_capacity(entries.len());
    for (net, access) in entries {
        match merged.last_mut() {
            Some((last, last_access)) if *last == net => {
                duplicates += 1;
                *last_access = last_access.union(&access);
            }
            _ => merged.push((net, access)),
        }
    }
    let mut covered = 0;
    let mut kept: Vec<(N, Reach)> = Vec::with_capacity(merged.len());
    let mut ancestors: Vec<usize> = Vec::new();
    for (net, own) in merged {
        while let Some(&top) = ancestors.last() {
            if contains(&kept[top].0, &net) {
                break;
            }
            ancestors.pop();
        }
        let inherited = ancestors.last().map(|&top| &kept[top].1);
        let effective = match inherited {
            Some(inherited) => inherited.union(&own),
            None => own,
        };
        if inherited == Some(&effective) {
            covered += 1;
            continue;
        }
        if let Reach::Ports(ranges) = &effective {
            if !ports::fits_kernel(ranges) {
                return Err(TooManyPortRanges {
                    network: net.to_string(),
                    ranges: ranges.len(),
                    max: allowlist_common::MAX_PORT_RANGES,
                });
            }
        }
        ancestors.push(kept.len());
        kept.push((net, effective));
    }
    Ok((kept, duplicates, covered))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ports(list: &str) -> Reach {
        Reach::from_ports(&ports::parse_list(list).unwrap())
    }

    fn v4(list: &CompiledList) -> Vec<String> {
        list.v4
            .iter()
            .map(|(net, access)| format!("{net} {access:?}"))
            .collect()
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
        assert_eq!(v4(&list), ["10.0.0.0/8 All", "192.0.2.0/24 All"]);
        assert_eq!(list.v6.len(), 2);
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
        assert_eq!(v4(&list), ["192.0.2.0/24 All"]);
        assert_eq!(report.duplicates, 1);
    }

    #[test]
    fn a_port_scoped_prefix_inside_an_allow_all_one_does_not_narrow_it() {
        let entries = vec![
            ("10.0.0.0/24".parse().unwrap(), Reach::All),
            ("10.0.0.7/32".parse().unwrap(), ports("22/tcp")),
        ];
        let (list, report) = CompiledList::compile_with_ports(entries, &[]).unwrap();
        assert_eq!(v4(&list), ["10.0.0.0/24 All"]);
        assert_eq!(report.covered, 1);
        assert_eq!(
            list.access_of("10.0.0.7".parse().unwrap()),
            Some(&Reach::All)
        );
    }

    #[test]
    fn nested_port_scopes_combine_and_the_longest_match_carries_the_union() {
        let entries = vec![
            ("10.0.0.0/24".parse().unwrap(), ports("443/tcp")),
            ("10.0.0.7/32".parse().unwrap(), ports("22/tcp")),
            ("10.0.0.8/32".parse().unwrap(), ports("443/tcp")),
            ("10.0.0.9/32".parse().unwrap(), ports("22/tcp")),
            ("10.0.0.9/32".parse().unwrap(), ports("5985-5986/tcp")),
        ];
        let (list, report) = CompiledList::compile_with_ports(entries, &[]).unwrap();
        let seven = list.access_of("10.0.0.7".parse().unwrap()).unwrap();
        assert!(seven.allows(6, 22) && seven.allows(6, 443) && !seven.allows(6, 80));
        let nine = list.access_of("10.0.0.9".parse().unwrap()).unwrap();
        assert!(nine.allows(6, 5986) && nine.allows(6, 443) && !nine.allows(17, 22));
        assert_eq!(
            list.access_of("10.0.0.8".parse().unwrap()),
            Some(&ports("443/tcp")),
            "the /24 decides"
        );
        assert_eq!((report.duplicates, report.covered), (1, 1));
        assert!(list.access_of("10.0.1.1".parse().unwrap()).is_none());
    }

    #[test]
    fn sibling_prefixes_are_both_kept() {
        let (list, _) = CompiledList::compile(nets(&["10.0.0.0/9", "10.128.0.0/9", "10.0.0.0/10"]));
        assert_eq!(list.v4.len(), 2);
        assert!(list.covers_v4("10.200.0.1".parse().unwrap()));
        assert!(list.covers_v4("10.0.0.1".parse().unwrap()));
        assert!(!list.covers_v4("11.0.0.1".parse().unwrap()));
    }

    #[test]
    fn too_many_port_ranges_for_one_source_is_an_error_naming_it() {
        let scattered: Vec<String> = (1..=17).map(|i| format!("{}/tcp", i * 10)).collect();
        let entries = vec![("10.0.0.7/32".parse().unwrap(), ports(&scattered.join(",")))];
        let error = CompiledList::compile_with_ports(entries, &[]).unwrap_err();
        assert_eq!(error.network, "10.0.0.7/32");
    }
}
