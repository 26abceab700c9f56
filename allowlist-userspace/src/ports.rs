//! Destination-port scopes: `"22/tcp"`, `"5985-5986/tcp"`, `"53/udp"`.

use std::{fmt, str::FromStr};

use allowlist_common::{PortRange, IPPROTO_TCP, IPPROTO_UDP, MAX_PORT_RANGES};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A range of destination ports of one protocol, as operators write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub protocol: u8,
    pub first: u16,
    pub last: u16,
}

impl PortSpec {
    pub fn contains(&self, protocol: u8, port: u16) -> bool {
        self.protocol == protocol && self.first <= port && port <= self.last
    }

    pub fn to_kernel(self) -> PortRange {
        PortRange {
            protocol: self.protocol,
            _pad: [0; 3],
            first: self.first,
            last: self.last,
        }
    }
}

pub fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        _ => "?",
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocol = protocol_name(self.protocol);
        if self.first == self.last {
            write!(f, "{}/{protocol}", self.first)
        } else {
            write!(f, "{}-{}/{protocol}", self.first, self.last)
        }
    }
}

impl FromStr for PortSpec {
    type Err = String;

    fn from_str(given: &str) -> Result<Self, Self::Err> {
        let usage = || {
            format!("invalid port {given:?}: expected PORT/PROTOCOL or FIRST-LAST/PROTOCOL with protocol tcp or udp, e.g. 22/tcp, 5985-5986/tcp, 53/udp")
        };
        let (ports, protocol) = given.trim().split_once('/').ok_or_else(usage)?;
        let protocol = match protocol.to_ascii_lowercase().as_str() {
            "tcp" => IPPROTO_TCP,
            "udp" => IPPROTO_UDP,
            _ => return Err(usage()),
        };
        let (first, last) = match ports.split_once('-') {
            Some((first, last)) => (first, last),
            None => (ports, ports),
        };
        let port = |text: &str| text.trim().parse::<u16>().ok().filter(|port| *port > 0);
        match (port(first), port(last)) {
            (Some(first), Some(last)) if first <= last => Ok(PortSpec {
                protocol,
                first,
                last,
            }),
            _ => Err(usage()),
        }
    }
}

impl Serialize for PortSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Parses a comma-separated list: "22/tcp,5985-5986/tcp".
pub fn parse_list(given: &str) -> Result<Vec<PortSpec>, String> {
    given
        .split(',')
        .filter(|part| !part.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// The union of port ranges, sorted, with overlapping and adjacent ranges merged.
pub fn union(ranges: impl IntoIterator<Item = PortSpec>) -> Vec<PortSpec> {
    let mut sorted: Vec<PortSpec> = ranges.into_iter().collect();
    sorted.sort();
    let mut merged: Vec<PortSpec> = Vec::with_capacity(sorted.len());
    for range in sorted {
        match merged.last_mut() {
            Some(last)
                if last.protocol == range.protocol
                    && u32::from(range.first) <= u32::from(last.last) + 1 =>
            {
                last.last = last.last.max(range.last);
            }
            _ => merged.push(range),
        }
    }
    merged
}

/// Refuses a port list that, merged, needs more ranges than the kernel holds per source.
pub fn check_kernel_fit(ports: &[PortSpec]) -> Result<(), String> {
    let merged = union(ports.iter().copied());
    if fits_kernel(&merged) {
        return Ok(());
    }
    Err(format!(
        "these ports make {} separate ranges; the kernel holds at most {MAX_PORT_RANGES} per source. Merge adjacent ports into ranges (5985-5986/tcp), or list the network without ports",
        merged.len()
    ))
}

/// Whether a merged set fits the kernel's fixed-size port set.
pub fn fits_kernel(merged: &[PortSpec]) -> bool {
    merged.len() <= MAX_PORT_RANGES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs_parse_and_print() {
        let spec: PortSpec = "5985-5986/TCP".parse().unwrap();
        assert_eq!(
            spec,
            PortSpec {
                protocol: IPPROTO_TCP,
                first: 5985,
                last: 5986
            }
        );
        assert_eq!(spec.to_string(), "5985-5986/tcp");
        assert_eq!("53/udp".parse::<PortSpec>().unwrap().to_string(), "53/udp");
        for bad in ["22", "22/icmp", "0/tcp", "70000/tcp", "30-20/tcp", "x/tcp"] {
            assert!(bad.parse::<PortSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn union_merges_overlapping_and_adjacent_ranges_per_protocol() {
        let merged = union(parse_list("22/tcp,20-21/tcp,443/tcp,25-30/tcp,53/udp,22/udp").unwrap());
        let shown: Vec<String> = merged.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["20-22/tcp", "25-30/tcp", "443/tcp", "22/udp", "53/udp"]
        );
    }
}
