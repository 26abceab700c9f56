//! "Would this change lock someone out?" — checked before activate, remove, import and
//! changes that narrow an entry, so an operator cannot cut off a session by accident.
//!
//! The people at risk are the caller (its SSH client address and the local port of its
//! session, which the CLI passes from `SSH_CONNECTION`) and everyone with an established
//! TCP connection to a port this host listens on (sshd, a database, …; see
//! [`crate::sockets`]). Each is judged by [`crate::verdict`] for the port their
//! traffic really goes to, so an entry listing them for other ports does not count.

use std::{collections::BTreeSet, fmt, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::{
    compile::CompiledList,
    config::Mode,
    sockets,
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
        .map(sockets::unmap)
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
    for (address, port) in sockets::inbound_tcp_peers() {
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
}
