//! IP the filter cannot see into — behind a third VLAN tag, in a PPPoE session, under an
//! MPLS label — has no source to judge. Enforcing drops it, from listed sources too, and
//! counts it as `dropped_encapsulated`; `encapsulated_ip = "pass"` lets it through,
//! counted as `passed_encapsulated`. ARP passes either way.
//!
//! The frames are written by hand onto the allowed client's veth (see
//! `allowlist_tests::raw`) and a packet tap on the host end shows which got past XDP.

use std::net::IpAddr;
use std::time::Duration;

use allowlist_tests::{
    arp_request, raw::parse_mac, send_raw_frames, ConfigBuilder, Counter, Daemon, EncapsulatedIp,
    Encapsulation, FrameTap, Stats, Topology, UdpFrame, VlanTag, VLAN_LINK,
};

/// One destination port per kind of frame, each watched by its own tap, so that frames
/// from the same (listed) source are told apart.
const PLAIN_PORT: u16 = 7010;
const THREE_TAGS_PORT: u16 = 7011;
const PPPOE_PORT: u16 = 7012;
const MPLS_PORT: u16 = 7013;
const FRAMES: u64 = 10;
const ARP_FRAMES: u64 = 5;
/// Long enough for a passed frame to arrive; what has not arrived by then was dropped.
const SETTLE: Duration = Duration::from_millis(300);
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(3);

/// The VLAN source every frame comes from is listed: only the encapsulation can drop it.
fn config(topology: &Topology) -> ConfigBuilder {
    ConfigBuilder::allowed_client_v4(topology).allow(
        format!("{}/32", VLAN_LINK.listed_client_v4),
        "allowed client on VLAN 100",
    )
}

/// A frame of one kind, its tap, and the name it is reported by.
struct Kind {
    name: &'static str,
    frame: UdpFrame,
    tap: FrameTap,
}

impl Kind {
    fn arrived(&self) -> u64 {
        self.tap.count_from(IpAddr::from(self.frame.src))
    }

    fn wait_for(&self, count: u64) -> bool {
        self.tap
            .wait_for(IpAddr::from(self.frame.src), count, ARRIVAL_TIMEOUT)
    }
}

struct Frames {
    /// One 802.1Q tag, looked through: judged by its (listed) source.
    plain: Kind,
    /// A third VLAN tag, a PPPoE session carrying IPv4, an MPLS label over IPv4.
    encapsulated: [Kind; 3],
    arp: Vec<u8>,
}

impl Frames {
    fn new(topology: &Topology) -> Frames {
        let kind = |name, port, tags: Vec<VlanTag>, encapsulation| {
            let frame = topology
                .vlan_frame(VLAN_LINK.listed_client_v4, tags, port, 64)
                .unwrap();
            Kind {
                name,
                frame: UdpFrame {
                    encapsulation,
                    ..frame
                },
                tap: topology.vlan_tap(port).unwrap(),
            }
        };
        let vlan = VLAN_LINK.vlan_id;
        let client_mac = parse_mac(
            &topology
                .allowed()
                .mac(VLAN_LINK.carrier.client_dev)
                .unwrap(),
        )
        .unwrap();
        Frames {
            plain: kind(
                "one 802.1Q tag",
                PLAIN_PORT,
                vec![VlanTag::dot1q(vlan)],
                Encapsulation::None,
            ),
            encapsulated: [
                kind(
                    "three VLAN tags",
                    THREE_TAGS_PORT,
                    vec![
                        VlanTag::dot1ad(7),
                        VlanTag::dot1q(vlan),
                        VlanTag::legacy_qinq(8),
                    ],
                    Encapsulation::None,
                ),
                kind(
                    "PPPoE session",
                    PPPOE_PORT,
                    Vec::new(),
                    Encapsulation::PppoeSession { session_id: 0x1234 },
                ),
                kind(
                    "MPLS",
                    MPLS_PORT,
                    Vec::new(),
                    Encapsulation::Mpls { label: 1000 },
                ),
            ],
            // From an address no list holds: ARP passes whatever its sender.
            arp: arp_request(client_mac, VLAN_LINK.unlisted_client_v4, VLAN_LINK.host_v4),
        }
    }

    /// Sends every kind of frame [`FRAMES`] times and the ARP request [`ARP_FRAMES`]
    /// times; returns what the encapsulated frames add up to.
    fn send(&self, topology: &Topology) -> Counter {
        let mut encapsulated = Counter::default();
        for kind in &self.encapsulated {
            topology.send_vlan_frames(&kind.frame, FRAMES).unwrap();
            encapsulated.packets += FRAMES;
            encapsulated.bytes += FRAMES * kind.frame.frame_len() as u64;
        }
        topology
            .send_vlan_frames(&self.plain.frame, FRAMES)
            .unwrap();
        let arps = vec![self.arp.clone(); ARP_FRAMES as usize];
        send_raw_frames(
            topology.allowed(),
            VLAN_LINK.carrier.client_dev,
            [0xff; 6],
            &arps,
        )
        .unwrap();
        encapsulated
    }

    /// Waits for the plain frames and the ARP requests (sent last) to have arrived.
    fn wait_for_controls(&self, plain: u64, arp: u64) {
        assert!(
            self.plain.wait_for(plain),
            "{} from a listed source: {:?}",
            self.plain.name,
            self.plain.tap.record_from(self.plain.frame.src.into())
        );
        let tap = &self.plain.tap;
        let sender = VLAN_LINK.unlisted_client_v4;
        assert!(
            tap.wait_for_arp(sender, arp, ARRIVAL_TIMEOUT),
            "ARP from {sender}: {} of {arp} arrived",
            tap.arp_count_from(sender)
        );
    }
}

fn assert_counted(counted: &Stats, reason: &str, expected: Counter) {
    assert_eq!(counted.get(reason), expected, "{reason}: {counted:?}");
}

#[test]
fn enforce_drops_ip_it_cannot_see_into_and_passes_it_with_encapsulated_ip_pass() {
    let topology = Topology::new().unwrap();
    // IPv6 chatter on the carrier veth would blur the exact counts below.
    topology.disable_ipv6().unwrap();
    let config = config(&topology);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let frames = Frames::new(&topology);
    let plain = Counter {
        packets: FRAMES,
        bytes: FRAMES * frames.plain.frame.frame_len() as u64,
    };

    // The default, encapsulated_ip = "drop": none of them arrives, ARP does.
    let before = daemon.stats();
    let encapsulated = frames.send(&topology);
    frames.wait_for_controls(FRAMES, ARP_FRAMES);
    std::thread::sleep(SETTLE);
    for kind in &frames.encapsulated {
        assert_eq!(kind.arrived(), 0, "{} got through", kind.name);
    }
    let counted = daemon.stats().since(&before);
    assert_counted(&counted, "dropped_encapsulated", encapsulated);
    assert_counted(&counted, "passed_encapsulated", Counter::default());
    assert_counted(&counted, "passed_listed", plain);
    assert!(
        counted.get("passed_non_ip").packets >= ARP_FRAMES,
        "ARP not counted: {counted:?}"
    );

    // The operator opts out: `check` accepts the key, `reload` applies it, and the same
    // frames arrive, counted as passed_encapsulated.
    let passing = config.clone().encapsulated_ip(EncapsulatedIp::Pass);
    daemon.write_config(&passing);
    let check = daemon
        .files()
        .run_daemon_to_exit(
            topology.host(),
            daemon.binaries(),
            &["check"],
            Duration::from_secs(15),
        )
        .unwrap();
    assert!(
        check.status.success(),
        "`allowlistd check` refused encapsulated_ip = \"pass\": {}",
        String::from_utf8_lossy(&check.stderr)
    );
    daemon.reload();

    let before = daemon.stats();
    let encapsulated = frames.send(&topology);
    frames.wait_for_controls(2 * FRAMES, 2 * ARP_FRAMES);
    for kind in &frames.encapsulated {
        assert!(
            kind.wait_for(FRAMES),
            "{} with encapsulated_ip = \"pass\": {:?}",
            kind.name,
            kind.tap.record_from(kind.frame.src.into())
        );
    }
    std::thread::sleep(SETTLE);
    for kind in &frames.encapsulated {
        assert_eq!(kind.arrived(), FRAMES, "{}", kind.name);
    }
    let counted = daemon.stats().since(&before);
    assert_counted(&counted, "passed_encapsulated", encapsulated);
    assert_counted(&counted, "dropped_encapsulated", Counter::default());
    assert_counted(&counted, "passed_listed", plain);
    assert!(
        counted.get("passed_non_ip").packets >= ARP_FRAMES,
        "ARP not counted: {counted:?}"
    );
}
