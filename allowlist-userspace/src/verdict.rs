//! The verdict the XDP program gives a packet, worked out in userspace from the compiled
//! list it judges by. `allowlistctl check`, the lockout check and the daemon's reports
//! all ask this one function, so they can never disagree with each other; it follows the
//! program's order (mode, allow-all entry, port-scoped entry, public port).
//!
//! What it cannot know is left out on purpose: whether a packet answers a flow the host
//! opened (return traffic), is a DHCP reply or a later fragment. Those only ever let more
//! through, so a source this function says passes does pass.

use std::net::IpAddr;

use allowlist_common::Reason;

use crate::{compile::CompiledList, config::Mode};

/// Where a packet goes on this host: transport protocol (`IPPROTO_*`) and destination
/// port. `None` for a packet without ports (ICMP, say), which only an entry allowing all
/// ports admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destination {
    pub protocol: u8,
    pub port: u16,
}

impl Destination {
    pub fn tcp(port: u16) -> Destination {
        Destination {
            protocol: allowlist_common::IPPROTO_TCP,
            port,
        }
    }
}

/// The reason the program counts a packet from `source` to `destination` under; whether
/// it passes is [`Reason::drops`].
pub fn reason(
    list: &CompiledList,
    mode: Mode,
    source: IpAddr,
    destination: Option<Destination>,
) -> Reason {
    if mode == Mode::Off {
        return Reason::PassedOff;
    }
    let access = list.access_of(source);
    let listed = match (access, destination) {
        (Some(access), Some(to)) => access.allows(to.protocol, to.port),
        (Some(access), None) => access.allows_all(),
        (None, _) => false,
    };
    if listed {
        return Reason::PassedListed;
    }
    let public = destination.is_some_and(|to| {
        list.public_ports
            .iter()
            .any(|range| range.contains(to.protocol, to.port))
    });
    if public {
        return Reason::PassedPublicPort;
    }
    match (mode, access.is_some()) {
        (Mode::Enforce, true) => Reason::DroppedPortNotAllowed,
        (Mode::Enforce, false) => Reason::DroppedNotListed,
        (_, true) => Reason::MonitorPortNotAllowed,
        (_, false) => Reason::MonitorNotListed,
    }
}

/// Whether a packet from `source` to `destination` passes.
pub fn passes(
    list: &CompiledList,
    mode: Mode,
    source: IpAddr,
    destination: Option<Destination>,
) -> bool {
    !reason(list, mode, source, destination).drops()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile::Reach, ports};

    fn list() -> CompiledList {
        let entries = vec![
            ("10.0.0.0/24".parse().unwrap(), Reach::All),
            (
                "192.0.2.7/32".parse().unwrap(),
                Reach::from_ports(&ports::parse_list("443/tcp").unwrap()),
            ),
        ];
        CompiledList::compile_with_ports(entries, &ports::parse_list("80/tcp").unwrap())
            .unwrap()
            .0
    }

    #[test]
    fn a_source_listed_for_one_port_passes_only_to_that_port_or_a_public_one() {
        let list = list();
        let scoped = "192.0.2.7".parse().unwrap();
        let verdict = |to| reason(&list, Mode::Enforce, scoped, to);
        assert_eq!(verdict(Some(Destination::tcp(443))), Reason::PassedListed);
        assert_eq!(
            verdict(Some(Destination::tcp(22))),
            Reason::DroppedPortNotAllowed
        );
        assert_eq!(verdict(None), Reason::DroppedPortNotAllowed);
        assert_eq!(
            verdict(Some(Destination::tcp(80))),
            Reason::PassedPublicPort
        );
        assert_eq!(
            reason(&list, Mode::Monitor, scoped, Some(Destination::tcp(22))),
            Reason::MonitorPortNotAllowed
        );
    }

    #[test]
    fn allow_all_sources_pass_everywhere_and_unlisted_ones_by_mode() {
        let list = list();
        let listed = "10.0.0.9".parse().unwrap();
        let unlisted = "198.51.100.1".parse().unwrap();
        assert_eq!(
            reason(&list, Mode::Enforce, listed, None),
            Reason::PassedListed
        );
        assert_eq!(
            reason(&list, Mode::Enforce, unlisted, Some(Destination::tcp(22))),
            Reason::DroppedNotListed
        );
        assert_eq!(
            reason(&list, Mode::Monitor, unlisted, None),
            Reason::MonitorNotListed
        );
        assert_eq!(reason(&list, Mode::Off, unlisted, None), Reason::PassedOff);
        assert!(passes(&list, Mode::Monitor, unlisted, None));
    }
}
