//! "Does this client get through to the host right now?", asked with a few numbered UDP
//! datagrams, for tests that check the verdict after every control command.
//!
//! UDP rather than TCP: a probe leaves no established connection behind in the host's
//! TCP table, which the daemon's lockout check reads; a TCP probe could make a later
//! `activate` or `remove` refuse because of the test's own traffic.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::Result;

use crate::netns::Netns;
use crate::process::wait_until;
use crate::topology::{Link, Topology, ALLOWED_LINK, BLOCKED_LINK};
use crate::traffic::{udp_send, UdpSink};

/// One of the topology's two clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    Allowed,
    Blocked,
}

impl Client {
    pub fn link(self) -> Link {
        match self {
            Client::Allowed => ALLOWED_LINK,
            Client::Blocked => BLOCKED_LINK,
        }
    }
}

/// What happened to a probe's datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// All arrived.
    Pass,
    /// None arrived.
    Drop,
    /// Some arrived: the verdict changed while the probe was under way.
    Partial(u64),
}

/// A UDP sink in the host namespace that judges probes from the clients.
pub struct Probe<'t> {
    topology: &'t Topology,
    sink: UdpSink,
    port: u16,
}

impl<'t> Probe<'t> {
    /// Datagrams per probe.
    pub const DATAGRAMS: u64 = 3;
    /// How long passed datagrams may take to arrive; what has not arrived by then was
    /// dropped. Passed ones arrive within a millisecond, so only drops wait this long.
    pub const WAIT: Duration = Duration::from_millis(500);

    /// Listens on `[::]:port` (IPv4 and IPv6) in the host namespace.
    pub fn start(topology: &'t Topology, port: u16) -> Result<Self> {
        let sink = UdpSink::start(
            topology.host(),
            SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
        )?;
        Ok(Self {
            topology,
            sink,
            port,
        })
    }

    fn netns(&self, client: Client) -> &Netns {
        match client {
            Client::Allowed => self.topology.allowed(),
            Client::Blocked => self.topology.blocked(),
        }
    }

    /// Sends [`Probe::DATAGRAMS`] datagrams from `client` (over IPv6 if `v6`) to the
    /// host's address on the client's link and says how many arrived.
    pub fn verdict(&self, client: Client, v6: bool) -> Verdict {
        let link = client.link();
        let source = link.client_ip(v6);
        let before = self.sink.count_from(source);
        udp_send(
            self.netns(client),
            None,
            SocketAddr::new(link.host_ip(v6), self.port),
            Self::DATAGRAMS,
            16,
        )
        .unwrap_or_else(|error| panic!("probe from {source}: {error:#}"));
        wait_until(Self::WAIT, || {
            self.sink.count_from(source) >= before + Self::DATAGRAMS
        });
        match self.sink.count_from(source) - before {
            0 => Verdict::Drop,
            n if n >= Self::DATAGRAMS => Verdict::Pass,
            n => Verdict::Partial(n),
        }
    }

    pub fn passes(&self, client: Client, v6: bool) -> bool {
        self.verdict(client, v6) == Verdict::Pass
    }

    /// The verdict for both clients over both families, named for assertion messages.
    pub fn all(&self) -> Vec<(String, Verdict)> {
        let mut verdicts = Vec::new();
        for client in [Client::Allowed, Client::Blocked] {
            for v6 in [false, true] {
                let name = format!("{} {}", client.link().client_ip(v6), client_name(client));
                verdicts.push((name, self.verdict(client, v6)));
            }
        }
        verdicts
    }

    /// Waits up to `timeout` for `client`'s probes to get `wanted`; whether they did.
    pub fn wait_for(&self, client: Client, v6: bool, wanted: Verdict, timeout: Duration) -> bool {
        wait_until(timeout, || self.verdict(client, v6) == wanted)
    }
}

fn client_name(client: Client) -> &'static str {
    match client {
        Client::Allowed => "(allowed client)",
        Client::Blocked => "(blocked client)",
    }
}
