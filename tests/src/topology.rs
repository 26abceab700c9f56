//! The network every end-to-end test runs on.
//!
//! ```text
//!   allowed ns                     host ns                        blocked ns
//!   eth0 10.10.1.2/24  <-veth->  to_allowed 10.10.1.1/24
//!        fd10:1::2/64                       fd10:1::1/64
//!   (hand-built frames tagged VLAN 100, from 10.10.100.2 and 10.10.100.3 to 10.10.100.1)
//!                                to_blocked 10.10.2.1/24  <-veth->  eth0 10.10.2.2/24
//!                                           fd10:2::1/64                 fd10:2::2/64
//! ```
//!
//! The daemon runs in the host namespace and guards `to_allowed` and `to_blocked`.
//! Addresses are fixed: each topology lives in its own namespaces, so they never clash.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};

use crate::frames::VlanTag;
use crate::netns::Netns;
use crate::raw::{parse_mac, send_frames, Encapsulation, FrameTap, UdpFrame};

/// One veth pair between the host and a client.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    /// The host end, where the XDP program is attached.
    pub host_dev: &'static str,
    /// The client end.
    pub client_dev: &'static str,
    pub host_v4: Ipv4Addr,
    pub client_v4: Ipv4Addr,
    pub host_v6: Ipv6Addr,
    pub client_v6: Ipv6Addr,
}

impl Link {
    pub fn host_ip(&self, v6: bool) -> IpAddr {
        if v6 {
            self.host_v6.into()
        } else {
            self.host_v4.into()
        }
    }

    pub fn client_ip(&self, v6: bool) -> IpAddr {
        if v6 {
            self.client_v6.into()
        } else {
            self.client_v4.into()
        }
    }
}

/// The VLAN path: IPv4/UDP frames tagged with VLAN 100 that the allowed client writes
/// onto its veth by hand (see [`crate::raw`]; the test kernel has no 802.1Q devices), so
/// the frames XDP sees on `to_allowed` carry the tag in the frame, as from a trunk port.
/// Nothing terminates the VLAN on the host: a packet tap on `to_allowed` shows which
/// frames XDP passed.
#[derive(Clone, Copy, Debug)]
pub struct VlanLink {
    pub vlan_id: u16,
    /// The veth the tagged frames travel on.
    pub carrier: Link,
    pub host_v4: Ipv4Addr,
    /// The VLAN address tests put on the allowlist.
    pub listed_client_v4: Ipv4Addr,
    /// A second VLAN address of the same client that tests leave off the allowlist.
    pub unlisted_client_v4: Ipv4Addr,
}

pub const ALLOWED_LINK: Link = Link {
    host_dev: "to_allowed",
    client_dev: "eth0",
    host_v4: Ipv4Addr::new(10, 10, 1, 1),
    client_v4: Ipv4Addr::new(10, 10, 1, 2),
    host_v6: Ipv6Addr::new(0xfd10, 1, 0, 0, 0, 0, 0, 1),
    client_v6: Ipv6Addr::new(0xfd10, 1, 0, 0, 0, 0, 0, 2),
};

pub const BLOCKED_LINK: Link = Link {
    host_dev: "to_blocked",
    client_dev: "eth0",
    host_v4: Ipv4Addr::new(10, 10, 2, 1),
    client_v4: Ipv4Addr::new(10, 10, 2, 2),
    host_v6: Ipv6Addr::new(0xfd10, 2, 0, 0, 0, 0, 0, 1),
    client_v6: Ipv6Addr::new(0xfd10, 2, 0, 0, 0, 0, 0, 2),
};

pub const VLAN_LINK: VlanLink = VlanLink {
    vlan_id: 100,
    carrier: ALLOWED_LINK,
    host_v4: Ipv4Addr::new(10, 10, 100, 1),
    listed_client_v4: Ipv4Addr::new(10, 10, 100, 2),
    unlisted_client_v4: Ipv4Addr::new(10, 10, 100, 3),
};

/// Three namespaces wired as in the module docs. Dropping it deletes them all.
#[derive(Debug)]
pub struct Topology {
    // Field order is drop order: clients first, so the host (and the veths' host
    // ends) go last. Any order would work, this one is just tidy.
    allowed: Netns,
    blocked: Netns,
    host: Netns,
}

impl Topology {
    pub fn new() -> Result<Self> {
        let topology = Self {
            allowed: Netns::new("a")?,
            blocked: Netns::new("b")?,
            host: Netns::new("h")?,
        };
        topology
            .wire(&topology.allowed, &ALLOWED_LINK)
            .context("wiring host<->allowed")?;
        topology
            .wire(&topology.blocked, &BLOCKED_LINK)
            .context("wiring host<->blocked")?;
        Ok(topology)
    }

    pub fn host(&self) -> &Netns {
        &self.host
    }

    pub fn allowed(&self) -> &Netns {
        &self.allowed
    }

    pub fn blocked(&self) -> &Netns {
        &self.blocked
    }

    /// The host-side interfaces the daemon guards.
    pub fn guarded_interfaces(&self) -> [&'static str; 2] {
        [ALLOWED_LINK.host_dev, BLOCKED_LINK.host_dev]
    }

    /// Turns IPv6 off in all three namespaces, for tests that compare counters exactly.
    pub fn disable_ipv6(&self) -> Result<()> {
        for netns in [&self.host, &self.allowed, &self.blocked] {
            netns.disable_ipv6()?;
        }
        Ok(())
    }

    /// Makes each client's IPv4 neighbour entries for the host permanent, so clients
    /// never send ARP again. ARP is counted apart from IP, but in `off` mode every frame
    /// counts as passed_off, and exact checks must not race with a neighbour refresh.
    pub fn pin_client_neighbours(&self) -> Result<()> {
        let host_to_allowed_mac = self.host.mac(ALLOWED_LINK.host_dev)?;
        let host_to_blocked_mac = self.host.mac(BLOCKED_LINK.host_dev)?;
        let pins = [
            (
                &self.allowed,
                ALLOWED_LINK.client_dev,
                ALLOWED_LINK.host_v4,
                &host_to_allowed_mac,
            ),
            (
                &self.blocked,
                BLOCKED_LINK.client_dev,
                BLOCKED_LINK.host_v4,
                &host_to_blocked_mac,
            ),
        ];
        for (netns, dev, host_ip, mac) in pins {
            netns.ip(&[
                "neigh",
                "replace",
                &host_ip.to_string(),
                "lladdr",
                mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ])?;
        }
        Ok(())
    }

    /// An IPv4/UDP frame from the allowed client to the host's VLAN address, carrying
    /// `tags` (outermost first), ready for [`Topology::send_vlan_frames`].
    pub fn vlan_frame(
        &self,
        source: Ipv4Addr,
        tags: Vec<VlanTag>,
        dst_port: u16,
        payload_len: usize,
    ) -> Result<UdpFrame> {
        let carrier = VLAN_LINK.carrier;
        Ok(UdpFrame {
            src_mac: parse_mac(&self.allowed.mac(carrier.client_dev)?)?,
            dst_mac: parse_mac(&self.host.mac(carrier.host_dev)?)?,
            tags,
            encapsulation: Encapsulation::None,
            src: source,
            dst: VLAN_LINK.host_v4,
            src_port: 40000,
            dst_port,
            payload_len,
        })
    }

    /// Writes `count` numbered copies of `frame` onto the allowed client's veth.
    pub fn send_vlan_frames(&self, frame: &UdpFrame, count: u64) -> Result<u64> {
        send_frames(&self.allowed, VLAN_LINK.carrier.client_dev, frame, count)
    }

    /// A tap on the host end of the VLAN carrier, recording frames to `dst_port` that
    /// XDP let through.
    pub fn vlan_tap(&self, dst_port: u16) -> Result<FrameTap> {
        FrameTap::start(&self.host, VLAN_LINK.carrier.host_dev, dst_port)
    }

    fn wire(&self, client: &Netns, link: &Link) -> Result<()> {
        // Created inside the host namespace with the peer placed straight into the
        // client's, so the fixed interface names never meet in the root namespace.
        self.host.ip(&[
            "link",
            "add",
            link.host_dev,
            "type",
            "veth",
            "peer",
            "name",
            link.client_dev,
            "netns",
            client.name(),
        ])?;
        for (netns, dev, v4, v6) in [
            (&self.host, link.host_dev, link.host_v4, link.host_v6),
            (client, link.client_dev, link.client_v4, link.client_v6),
        ] {
            netns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev])?;
            // nodad: the address is usable at once instead of after duplicate detection.
            netns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ])?;
            netns.ip(&["link", "set", dev, "up"])?;
        }
        Ok(())
    }
}
