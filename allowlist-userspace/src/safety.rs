//! "Would this change lock someone out?" — checked before activate, remove and
//! import --replace, so an operator cannot cut off their own session by accident.
//!
//! The people at risk are the caller (its SSH client address and the local port of its
//! session, which the CLI passes from `SSH_CONNECTION`) and everyone with an established
//! TCP connection to a port this host listens on (sshd, a database, …), read from
//! /proc/net/tcp{,6} of the daemon's network namespace, which is the namespace of the
//! interfaces it protects. Each is judged by [`crate::verdict`] for the port their
//! traffic really goes to, so an entry listing them for other ports does not count.

use std::{collections::BTreeSet, fmt, fs, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::{
    compile::CompiledList,
    config::Mode,
    verdict::{self, Destination},
};

/// Someone whose traffic a change would start dropping.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AtRisk {
    pub address: IpAddr,
    /// The local TCP port their traffic goes to, when known; without it only an entry
    /// allowing all ports counts as keeping them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// e.g. "your SSH session", "established TCP connection to local port 22".
    pub why: String,
}

impl fmt::Display for AtRisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.address, self.why)
    }
}

/// The kernel's verdict inputs: the list and the mode.
pub struct Verdicts<'a> {
    pub list: &'a CompiledList,
    pub mode: Mode,
}

impl Verdicts<'_> {
    /// Whether `person`'s TCP traffic to their local port passes.
    pub fn passes(&self, person: &AtRisk) -> bool {
        verdict::passes(
            self.list,
            self.mode,
            person.address,
            person.port.map(Destination::tcp),
        )
    }
}

/// The people whose traffic passes `before` and would be dropped `after`.
pub fn cut_off(before: &Verdicts, after: &Verdicts, people: &[AtRisk]) -> Vec<AtRisk> {
    let mut cut: Vec<AtRisk> = people
        .iter()
        .filter(|person| before.passes(person) && !after.passes(person))
        .cloned()
        .collect();
    cut.sort();
    cut.dedup_by(|a, b| a.address == b.address && a.port == b.port);
    cut
}

/// The caller (its address and the local port of its session, when known) plus the
/// peers of inbound TCP connections. Addresses of this host itself are left out unless
/// `lo` is protected: their packets never cross a filtered interface.
pub fn people_at_risk(
    caller: Option<IpAddr>,
    caller_port: Option<u16>,
    loopback_protected: bool,
) -> Vec<AtRisk> {
    let local = local_addresses();
    let is_this_host = |address: &IpAddr| {
        !loopback_protected && (address.is_loopback() || local.contains(address))
    };
    let mut people: Vec<AtRisk> = caller
        .map(unmap)
        .filter(|address| !is_this_host(address))
        .map(|address| AtRisk {
            address,
            port: caller_port,
            why: match caller_port {
                Some(port) => format!("your SSH session to local port {port}"),
                None => "your SSH session".into(),
            },
        })
        .into_iter()
        .collect();
    for (address, port) in inbound_tcp_peers() {
        if is_this_host(&address) {
            continue;
        }
        people.push(AtRisk {
            address,
            port: Some(port),
            why: format!("established TCP connection to local port {port}"),
        });
    }
    people
}

/// Remote address and local port of ESTABLISHED TCP connections to LISTENing ports.
pub fn inbound_tcp_peers() -> Vec<(IpAddr, u16)> {
    let mut listening = BTreeSet::new();
    let mut established = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for socket in text.lines().skip(1).filter_map(parse_proc_tcp_line) {
            match socket.state {
                TCP_LISTEN => {
                    listening.insert(socket.local_port);
                }
                TCP_ESTABLISHED => established.push(socket),
                _ => {}
            }
        }
    }
    established
        .into_iter()
        .filter(|socket| listening.contains(&socket.local_port))
        .map(|socket| (unmap(socket.remote), socket.local_port))
        .collect()
}

pub(crate) const TCP_ESTABLISHED: u8 = 0x01;
pub(crate) const TCP_LISTEN: u8 = 0x0A;

pub(crate) struct ProcTcpSocket {
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    pub state: u8,
}

/// Parses `sl local_address rem_address st …` where addresses are the kernel's raw
/// 32-bit words in hex (so byte-swapped on little-endian hosts) and ports are hex.
pub(crate) fn parse_proc_tcp_line(line: &str) -> Option<ProcTcpSocket> {
    let mut fields = line.split_whitespace().skip(1);
    let (local, local_port) = fields.next()?.split_once(':')?;
    let (remote, remote_port) = fields.next()?.split_once(':')?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    Some(ProcTcpSocket {
        local: parse_proc_address(local)?,
        local_port: u16::from_str_radix(local_port, 16).ok()?,
        remote: parse_proc_address(remote)?,
        remote_port: u16::from_str_radix(remote_port, 16).ok()?,
        state,
    })
}

fn parse_proc_address(hex: &str) -> Option<IpAddr> {
    let words: Option<Vec<u32>> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok())
        .collect();
    let bytes: Vec<u8> = words?.into_iter().flat_map(u32::to_ne_bytes).collect();
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// IPv4 clients of IPv6 sockets appear as ::ffff:a.b.c.d; the filter sees them as IPv4.
pub(crate) fn unmap(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

fn local_addresses() -> BTreeSet<IpAddr> {
    nix::ifaddrs::getifaddrs()
        .map(|addresses| {
            addresses
                .filter_map(|interface| interface.address)
                .filter_map(|address| {
                    address
                        .as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_parse_with_byte_swapped_addresses() {
        let line = "   0: 0201A8C0:0016 0A01A8C0:D431 01 00000000:00000000 02:000AE3DA 00000000     0        0 12345 4 0000000000000000 20 4 30 10 -1";
        let socket = parse_proc_tcp_line(line).unwrap();
        assert_eq!(socket.local_port, 22);
        assert_eq!(socket.state, TCP_ESTABLISHED);
        assert_eq!(socket.remote, "192.168.1.10".parse::<IpAddr>().unwrap());
        let v6 = "   1: 00000000000000000000000001000000:0016 B80D0120000000000000000001000000:C350 01 0";
        assert_eq!(
            parse_proc_tcp_line(v6).unwrap().remote,
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn only_people_who_pass_now_and_would_not_after_are_cut_off() {
        let (list, _) = CompiledList::compile(["10.0.0.0/24".parse().unwrap()]);
        let empty = CompiledList::default();
        let people = [
            AtRisk {
                address: "10.0.0.5".parse().unwrap(),
                port: Some(22),
                why: "a".into(),
            },
            AtRisk {
                address: "192.0.2.1".parse().unwrap(),
                port: Some(22),
                why: "b".into(),
            },
        ];
        let monitor = Verdicts {
            list: &list,
            mode: Mode::Monitor,
        };
        let enforce = Verdicts {
            list: &list,
            mode: Mode::Enforce,
        };
        let cut = cut_off(&monitor, &enforce, &people);
        assert_eq!(
            cut.iter()
                .map(|p| p.address.to_string())
                .collect::<Vec<_>>(),
            ["192.0.2.1"]
        );
        let enforce_empty = Verdicts {
            list: &empty,
            mode: Mode::Enforce,
        };
        assert_eq!(
            cut_off(&enforce, &enforce_empty, &people).len(),
            1,
            "192.0.2.1 was already dropped"
        );
    }

    #[test]
    fn a_session_whose_source_is_listed_only_for_other_ports_is_cut_off_by_enforcing() {
        let https_only =
            crate::compile::Reach::from_ports(&crate::ports::parse_list("443/tcp").unwrap());
        let (list, _) =
            CompiledList::compile_with_ports([("192.0.2.7/32".parse().unwrap(), https_only)], &[])
                .unwrap();
        let ssh = AtRisk {
            address: "192.0.2.7".parse().unwrap(),
            port: Some(22),
            why: "your SSH session to local port 22".into(),
        };
        let https = AtRisk {
            port: Some(443),
            ..ssh.clone()
        };
        let monitor = Verdicts {
            list: &list,
            mode: Mode::Monitor,
        };
        let enforce = Verdicts {
            list: &list,
            mode: Mode::Enforce,
        };
        assert_eq!(cut_off(&monitor, &enforce, &[ssh.clone(), https]), [ssh]);
    }

    #[test]
    fn ipv4_mapped_addresses_are_judged_as_ipv4() {
        assert_eq!(
            unmap("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }
}
