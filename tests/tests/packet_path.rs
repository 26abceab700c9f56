//! Packet-level specification of the XDP program, run through `BPF_PROG_TEST_RUN`.
//!
//! Every test loads the real program with its own maps pinned under a unique
//! `/sys/fs/bpf/alpkt-<pid>-<n>` (removed on drop, also when the test fails), hands it
//! hand-built Ethernet frames and checks both the verdict and the one counter the packet
//! was accounted under. `TestFilter::judge` also checks, for every single frame, that
//! exactly one reason counted it, with one packet and exactly the frame's length in bytes.
//!
//! Needs root (BPF, bpffs).

use std::net::{Ipv4Addr, Ipv6Addr};

use allowlist_common::{coarse_screen_bit, MAP_COARSE_SCREEN_V4, MAP_COARSE_SCREEN_V6};
use allowlist_common::{
    screen_bit_v4, screen_bit_v6, AllowRule, Control, Counter, Ipv4Octets, Ipv6Octets, Reason,
    FEATURE_PASS_ENCAPSULATED, MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_CONTROL, MAP_EXACT_V4, MAP_EXACT_V6,
    MAP_SCREEN_V4, MAP_SCREEN_V6,
};
use allowlist_tests::frames::{
    self, Ipv4Header, Ipv6Header, VlanTag, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV4,
    ETH_P_IPV6, ETH_P_LLDP, ETH_P_MPLS_MULTICAST, ETH_P_MPLS_UNICAST, ETH_P_PPPOE_DISCOVERY,
    ETH_P_PPPOE_SESSION, ETH_P_QINQ_LEGACY, IPPROTO_ICMPV6, IPPROTO_NONE, IPPROTO_UDP,
    PPPOE_HEADER_LEN, PPP_CHAP, PPP_IPCP, PPP_IPV4, PPP_IPV6, PPP_IPV6CP, PPP_LCP, PPP_PAP,
    TEST_DST_MAC, TEST_SRC_MAC,
};
use allowlist_tests::test_filter::{delta, TestFilter, Verdict};
use allowlist_userspace::config::Mode;
use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData};

use Verdict::{Drop, Pass};

/// The list most tests enforce: one host and one network per family.
const LIST: &[&str] = &[
    "192.0.2.10/32",
    "198.51.100.0/24",
    "2001:db8::10/128",
    "2001:db8:aaaa::/48",
];

const LISTED_V4_HOST: &str = "192.0.2.10";
const LISTED_V4_IN_NET: &str = "198.51.100.77";
const UNLISTED_V4: &str = "192.0.2.11";
const UNLISTED_V4_NEXT_TO_NET: &str = "198.51.101.1";
const LISTED_V6_HOST: &str = "2001:db8::10";
const LISTED_V6_IN_NET: &str = "2001:db8:aaaa:1234::99";
const UNLISTED_V6: &str = "2001:db8::11";
const UNLISTED_V6_NEXT_TO_NET: &str = "2001:db8:aaab::1";

/// A filter with `LIST` applied, in `mode`.
fn with_list(mode: Mode) -> TestFilter {
    let mut filter = TestFilter::open();
    filter.apply(LIST);
    filter.set_mode(mode);
    filter
}

// ---------------------------------------------------------------------------------------
// Frames, built with the harness's builders. Checksums are left zero: the program never
// looks at them.
// ---------------------------------------------------------------------------------------

/// Every TPID a VLAN tag may carry.
const VLAN_TPIDS: [u16; 3] = [ETH_P_8021Q, ETH_P_8021AD, ETH_P_QINQ_LEGACY];

const PPPOE_PADI: u8 = 0x09;
const PPPOE_PADS: u8 = 0x65;

const ETH_LEN: usize = frames::ETHERNET_HEADER_LEN;
const IPV4_LEN: usize = frames::IPV4_HEADER_LEN;
const IPV6_LEN: usize = frames::IPV6_HEADER_LEN;

const ICMPV6_ECHO_REQUEST: u8 = 128;
const ND_ROUTER_SOLICIT: u8 = 133;
const ND_ROUTER_ADVERT: u8 = 134;
const ND_NEIGHBOUR_SOLICIT: u8 = 135;
const ND_NEIGHBOUR_ADVERT: u8 = 136;
const ND_REDIRECT: u8 = 137;

fn v4(addr: &str) -> Ipv4Addr {
    addr.parse().unwrap()
}

fn v6(addr: &str) -> Ipv6Addr {
    addr.parse().unwrap()
}

/// Ethernet header, then one 4-byte tag per TPID in `tags` (outermost first, VLAN ids
/// 100, 101, ...), then `ether_type` and `payload`.
fn ethernet(tags: &[u16], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let tags: Vec<VlanTag> = (100..)
        .zip(tags)
        .map(|(vid, &tpid)| VlanTag { tpid, vid })
        .collect();
    frames::ethernet(TEST_DST_MAC, TEST_SRC_MAC, &tags, ether_type, payload)
}

/// IPv4/UDP header to 10.99.99.99 (IHL from the options, which must be whole words)
/// with `payload`; total length = header + payload.
fn ipv4(src: Ipv4Addr, options: &[u8], payload: &[u8]) -> Vec<u8> {
    Ipv4Header::new(src, v4("10.99.99.99"), IPPROTO_UDP)
        .id(0x1234)
        .dont_fragment()
        .options(options)
        .packet(payload)
}

/// IPv6 header to 2001:db8:ffff::1 with `payload`; payload length = payload.
fn ipv6(src: Ipv6Addr, next_header: u8, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    Ipv6Header::new(src, v6("2001:db8:ffff::1"), next_header)
        .hop_limit(hop_limit)
        .packet(payload)
}

/// A UDP datagram from port 40000 to 53.
fn udp(payload: &[u8]) -> Vec<u8> {
    frames::udp(40000, 53, payload)
}

/// ICMPv6 message of `icmp_type`, code 0, with a 20-byte body (the size of a neighbour
/// solicitation's reserved word + target address).
fn icmpv6(icmp_type: u8) -> Vec<u8> {
    frames::icmp(icmp_type, 0, [0; 4], &v6("fe80::1").octets())
}

/// An untagged UDP/IPv4 frame from `src`.
fn udp4(src: &str) -> Vec<u8> {
    tagged_udp4(&[], src)
}

fn tagged_udp4(tags: &[u16], src: &str) -> Vec<u8> {
    ethernet(tags, ETH_P_IPV4, &ipv4(v4(src), &[], &udp(b"allowlist")))
}

/// An untagged UDP/IPv6 frame from `src`.
fn udp6(src: &str) -> Vec<u8> {
    tagged_udp6(&[], src)
}

fn tagged_udp6(tags: &[u16], src: &str) -> Vec<u8> {
    ethernet(
        tags,
        ETH_P_IPV6,
        &ipv6(v6(src), IPPROTO_UDP, 64, &udp(b"allowlist")),
    )
}

fn icmp6(src: &str, icmp_type: u8, hop_limit: u8) -> Vec<u8> {
    ethernet(
        &[],
        ETH_P_IPV6,
        &ipv6(v6(src), IPPROTO_ICMPV6, hop_limit, &icmpv6(icmp_type)),
    )
}

/// An ARP request (who has 192.0.2.1, tell 203.0.113.5).
fn arp() -> Vec<u8> {
    let request = frames::arp_request(TEST_SRC_MAC, v4("203.0.113.5"), v4("192.0.2.1"));
    ethernet(&[], ETH_P_ARP, &request)
}

/// An LLDP frame (chassis id, port id, TTL, end).
fn lldp() -> Vec<u8> {
    let body = [
        0x02, 0x07, 0x04, 0x02, 0, 0, 0, 0, 0x02, // chassis id: MAC
        0x04, 0x03, 0x07, b'p', b'1', // port id: local
        0x06, 0x02, 0x00, 0x78, // TTL 120
        0x00, 0x00, // end
    ];
    let mut frame = ethernet(&[], ETH_P_LLDP, &body);
    frame[..6].copy_from_slice(&[0x01, 0x80, 0xc2, 0, 0, 0x0e]);
    frame
}

/// A PPPoE session frame (behind `tags`) whose PPP frame is `ppp_protocol` + `payload`.
fn pppoe_session(tags: &[u16], ppp_protocol: u16, payload: &[u8]) -> Vec<u8> {
    let session = frames::pppoe_session(0x1234, ppp_protocol, payload);
    ethernet(tags, ETH_P_PPPOE_SESSION, &session)
}

fn pppoe_udp4(tags: &[u16], src: &str) -> Vec<u8> {
    pppoe_session(tags, PPP_IPV4, &ipv4(v4(src), &[], &udp(b"allowlist")))
}

fn pppoe_udp6(tags: &[u16], src: &str) -> Vec<u8> {
    pppoe_session(
        tags,
        PPP_IPV6,
        &ipv6(v6(src), IPPROTO_UDP, 64, &udp(b"allowlist")),
    )
}

/// A PPP link or network control message (LCP, IPCP, …): Configure-Request, id 1,
/// one 4-byte option.
fn ppp_control(ppp_protocol: u16) -> Vec<u8> {
    pppoe_session(&[], ppp_protocol, &[1, 1, 0, 8, 1, 4, 0x05, 0xd4])
}

/// A PPPoE discovery packet of `code` (PADI, PADO, …) with an empty Service-Name tag.
fn pppoe_discovery(code: u8) -> Vec<u8> {
    ethernet(
        &[],
        ETH_P_PPPOE_DISCOVERY,
        &[0x11, code, 0, 0, 0, 4, 0x01, 0x01, 0, 0],
    )
}

/// An MPLS frame of `ether_type` (unicast, multicast) behind `tags`: one label (bottom
/// of stack, TTL 64), then `payload`.
fn mpls(tags: &[u16], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    ethernet(tags, ether_type, &frames::mpls(1000, payload))
}

/// The frames that carry IP where the program cannot see it, from listed and unlisted
/// sources: behind a third VLAN tag, in a PPPoE session, under an MPLS label.
fn encapsulated_frames() -> Vec<Vec<u8>> {
    let three_tags = [ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q];
    let ipv4_packet = ipv4(v4(LISTED_V4_HOST), &[], &udp(b"allowlist"));
    vec![
        tagged_udp4(&three_tags, LISTED_V4_HOST),
        tagged_udp6(&three_tags, UNLISTED_V6),
        pppoe_udp4(&[], UNLISTED_V4),
        pppoe_udp6(&[], LISTED_V6_HOST),
        mpls(&[], ETH_P_MPLS_UNICAST, &ipv4_packet),
        mpls(&[], ETH_P_MPLS_MULTICAST, &ipv4_packet),
    ]
}

/// `frame` with its IPv4 header's version/IHL byte replaced (untagged frames).
fn with_version_ihl(mut frame: Vec<u8>, version: u8, ihl: u8) -> Vec<u8> {
    frame[ETH_LEN] = version << 4 | ihl;
    frame
}

/// `frame` with its IPv4 header's total length replaced (untagged frames).
fn with_total_len(mut frame: Vec<u8>, total_len: u16) -> Vec<u8> {
    frame[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&total_len.to_be_bytes());
    frame
}

// ---------------------------------------------------------------------------------------
// Enforce: the source decides
// ---------------------------------------------------------------------------------------

#[test]
fn enforce_passes_ipv4_source_listed_as_a_host_and_drops_its_unlisted_neighbour() {
    let mut filter = with_list(Mode::Enforce);
    assert_eq!(
        filter.judge(&udp4(LISTED_V4_HOST)),
        (Pass, Reason::PassedListed)
    );
    assert_eq!(
        filter.judge(&udp4(UNLISTED_V4)),
        (Drop, Reason::DroppedNotListed)
    );
    assert_eq!(
        filter.judge(&udp4("203.0.113.5")),
        (Drop, Reason::DroppedNotListed)
    );
}

#[test]
fn enforce_passes_ipv4_sources_inside_a_listed_slash_24_and_drops_those_just_outside() {
    let mut filter = with_list(Mode::Enforce);
    for src in ["198.51.100.0", LISTED_V4_IN_NET, "198.51.100.255"] {
        assert_eq!(
            filter.judge(&udp4(src)),
            (Pass, Reason::PassedListed),
            "{src}"
        );
    }
    for src in ["198.51.99.255", UNLISTED_V4_NEXT_TO_NET] {
        assert_eq!(
            filter.judge(&udp4(src)),
            (Drop, Reason::DroppedNotListed),
            "{src}"
        );
    }
}

#[test]
fn enforce_passes_ipv6_source_listed_as_a_host_and_drops_its_unlisted_neighbour() {
    let mut filter = with_list(Mode::Enforce);
    assert_eq!(
        filter.judge(&udp6(LISTED_V6_HOST)),
        (Pass, Reason::PassedListed)
    );
    assert_eq!(
        filter.judge(&udp6(UNLISTED_V6)),
        (Drop, Reason::DroppedNotListed)
    );
}

#[test]
fn enforce_passes_ipv6_sources_inside_a_listed_slash_48_and_drops_those_just_outside() {
    let mut filter = with_list(Mode::Enforce);
    for src in [
        "2001:db8:aaaa::",
        LISTED_V6_IN_NET,
        "2001:db8:aaaa:ffff:ffff:ffff:ffff:ffff",
    ] {
        assert_eq!(
            filter.judge(&udp6(src)),
            (Pass, Reason::PassedListed),
            "{src}"
        );
    }
    for src in ["2001:db8:aaa9:ffff::1", UNLISTED_V6_NEXT_TO_NET] {
        assert_eq!(
            filter.judge(&udp6(src)),
            (Drop, Reason::DroppedNotListed),
            "{src}"
        );
    }
}

#[test]
fn enforce_judges_by_the_source_address_not_the_destination() {
    let mut filter = TestFilter::open();
    // Only the fixed destination of every frame built here is listed.
    filter.apply(&["10.99.99.99/32", "2001:db8:ffff::1/128"]);
    filter.set_mode(Mode::Enforce);
    assert_eq!(
        filter.judge(&udp4(UNLISTED_V4)),
        (Drop, Reason::DroppedNotListed)
    );
    assert_eq!(
        filter.judge(&udp6(UNLISTED_V6)),
        (Drop, Reason::DroppedNotListed)
    );
    assert_eq!(
        filter.judge(&udp4("10.99.99.99")),
        (Pass, Reason::PassedListed)
    );
}

#[test]
fn enforce_does_not_let_an_ipv4_entry_cover_its_ipv4_mapped_ipv6_address() {
    let mut filter = with_list(Mode::Enforce);
    assert_eq!(
        filter.judge(&udp6("::ffff:192.0.2.10")),
        (Drop, Reason::DroppedNotListed)
    );
}

/// `activate --confirm` keeps its deadline in the kernel: until then enforce judges, and
/// the first packet after it finds the mode reverted, judges by the reverted mode, and
/// leaves a mark the next daemon reads.
#[test]
fn the_first_packet_after_an_unconfirmed_deadline_reverts_the_mode_in_the_kernel() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut filter = with_list(Mode::Monitor);
    filter.set_mode_with_revert(Mode::Enforce, Mode::Monitor, now + 3600);
    assert_eq!(
        filter.judge(&udp4(UNLISTED_V4)),
        (Drop, Reason::DroppedNotListed),
        "before the deadline"
    );
    assert_eq!(filter.filter().reverted_in_kernel().unwrap(), None);

    filter.set_mode_with_revert(Mode::Enforce, Mode::Monitor, now.saturating_sub(1));
    assert_eq!(
        filter.judge(&udp4(UNLISTED_V4)),
        (Pass, Reason::MonitorNotListed),
        "the packet after the deadline"
    );
    assert_eq!(
        filter.filter().reverted_in_kernel().unwrap(),
        Some(Mode::Monitor)
    );
    assert_eq!(filter.filter().mode(), Mode::Monitor);
    assert_eq!(
        filter.judge(&udp4(UNLISTED_V4)),
        (Pass, Reason::MonitorNotListed),
        "and every packet after it"
    );
    assert_eq!(
        filter.judge(&udp4(LISTED_V4_HOST)),
        (Pass, Reason::PassedListed)
    );
}

// ---------------------------------------------------------------------------------------
// VLAN tags
// ---------------------------------------------------------------------------------------

#[test]
fn one_8021q_tag_is_looked_through_to_the_ip_source() {
    let mut filter = with_list(Mode::Enforce);
    let tags = [ETH_P_8021Q];
    assert_eq!(
        filter.judge(&tagged_udp4(&tags, LISTED_V4_HOST)),
        (Pass, Reason::PassedListed)
    );
    assert_eq!(
        filter.judge(&tagged_udp4(&tags, UNLISTED_V4)),
        (Drop, Reason::DroppedNotListed)
    );
    assert_eq!(
        filter.judge(&tagged_udp6(&tags, LISTED_V6_IN_NET)),
        (Pass, Reason::PassedListed)
    );
    assert_eq!(
        filter.judge(&tagged_udp6(&tags, UNLISTED_V6)),
        (Drop, Reason::DroppedNotListed)
    );
}

#[test]
fn qinq_8021ad_outer_and_8021q_inner_tags_are_looked_through_to_the_ip_source() {
    let mut filter = with_list(Mode::Enforce);
    let tags = [ETH_P_8021AD, ETH_P_8021Q];
    assert_eq!(
        filter.judge(&tagged_udp4(&tags, LISTED_V4_IN_NET)),
        (Pass, Reason::PassedListed)
    );
    assert_eq!(
        filter.judge(&tagged_udp4(&tags, UNLISTED_V4)),
        (Drop, Reason::DroppedNotListed)
    );
    assert_eq!(
        filter.judge(&tagged_udp6(&tags, LISTED_V6_HOST)),
        (Pass, Reason::PassedListed)
    );
    assert_eq!(
        filter.judge(&tagged_udp6(&tags, UNLISTED_V6_NEXT_TO_NET)),
        (Drop, Reason::DroppedNotListed)
    );
}

#[test]
fn two_8021q_tags_and_a_lone_8021ad_tag_are_looked_through_too() {
    let mut filter = with_list(Mode::Enforce);
    for tags in [&[ETH_P_8021Q, ETH_P_8021Q][..], &[ETH_P_8021AD][..]] {
        assert_eq!(
            filter.judge(&tagged_udp4(tags, LISTED_V4_HOST)),
            (Pass, Reason::PassedListed),
            "{tags:04x?}"
        );
        assert_eq!(
            filter.judge(&tagged_udp4(tags, UNLISTED_V4)),
            (Drop, Reason::DroppedNotListed),
            "{tags:04x?}"
        );
    }
}

#[test]
fn vlan_tag_cut_off_before_its_ether_type_is_malformed() {
    let mut filter = with_list(Mode::Enforce);
    // Ethernet header with TPID 0x8100, then only the 2-byte TCI.
    let frame = ethernet(&[], ETH_P_8021Q, &[0x00, 0x64]);
    assert_eq!(frame.len(), 16);
    assert_eq!(filter.judge(&frame), (Drop, Reason::DroppedMalformed));
    // QinQ whose inner tag is cut after its TCI.
    let frame = ethernet(&[ETH_P_8021AD], ETH_P_8021Q, &[0x00, 0x65]);
    assert_eq!(frame.len(), 20);
    assert_eq!(filter.judge(&frame), (Drop, Reason::DroppedMalformed));
}

#[test]
fn headers_behind_vlan_tags_are_bounds_checked_from_the_end_of_the_tags() {
    let mut filter = with_list(Mode::Enforce);
    for tags in [&[ETH_P_8021Q][..], &[ETH_P_8021AD, ETH_P_8021Q][..]] {
        let tags_len = 4 * tags.len();
        let full = tagged_udp4(tags, LISTED_V4_HOST);
        // Exactly the 20-byte IPv4 header after the tags: complete.
        let header_only = with_tagged_total_len(&full[..ETH_LEN + tags_len + IPV4_LEN], tags_len);
        assert_eq!(
            filter.judge(&header_only),
            (Pass, Reason::PassedListed),
            "{tags:04x?}"
        );
        // One byte short: truncated.
        assert_eq!(
            filter.judge(&full[..ETH_LEN + tags_len + IPV4_LEN - 1]),
            (Drop, Reason::DroppedMalformed),
            "{tags:04x?}"
        );
        let full = tagged_udp6(tags, LISTED_V6_HOST);
        assert_eq!(
            filter.judge(&full[..ETH_LEN + tags_len + IPV6_LEN - 1]),
            (Drop, Reason::DroppedMalformed),
            "{tags:04x?}"
        );
    }
}

/// A header-only IPv4 packet's total length (20), for a frame with `tags_len` tag bytes.
fn with_tagged_total_len(frame: &[u8], tags_len: usize) -> Vec<u8> {
    let mut frame = frame.to_vec();
    let at = ETH_LEN + tags_len + 2;
    frame[at..at + 2].copy_from_slice(&(IPV4_LEN as u16).to_be_bytes());
    frame
}

// ---------------------------------------------------------------------------------------
// Encapsulations the program does not see into
// ---------------------------------------------------------------------------------------

/// After the two tags the program looks through, a third tag of any TPID hides the
/// source: whatever it carries is dropped in enforce, from listed sources too.
#[test]
fn a_third_vlan_tag_of_any_tpid_is_dropped_as_encapsulated_in_enforce() {
    let mut filter = with_list(Mode::Enforce);
    for outer in [[ETH_P_8021AD, ETH_P_8021Q], [ETH_P_8021Q, ETH_P_8021Q]] {
        for third in VLAN_TPIDS {
            let tags = [outer[0], outer[1], third];
            for frame in [
                tagged_udp4(&tags, LISTED_V4_HOST),
                tagged_udp4(&tags, UNLISTED_V4),
                tagged_udp6(&tags, LISTED_V6_IN_NET),
                tagged_udp6(&tags, UNLISTED_V6),
                // However deep the stack goes, and even if nothing follows the tag.
                tagged_udp4(&[outer[0], outer[1], third, ETH_P_8021Q], LISTED_V4_HOST),
                ethernet(&outer, third, &[]),
            ] {
                assert_eq!(
                    filter.judge(&frame),
                    (Drop, Reason::DroppedEncapsulated),
                    "{tags:04x?}: {frame:02x?}"
                );
            }
        }
    }
}

#[test]
fn a_third_vlan_tag_passes_as_monitor_encapsulated_in_monitor_and_as_passed_off_when_off() {
    for (mode, expected) in [
        (Mode::Monitor, Reason::MonitorEncapsulated),
        (Mode::Off, Reason::PassedOff),
    ] {
        let mut filter = with_list(mode);
        for third in VLAN_TPIDS {
            let tags = [ETH_P_8021AD, ETH_P_8021Q, third];
            for frame in [
                tagged_udp4(&tags, LISTED_V4_HOST),
                tagged_udp4(&tags, UNLISTED_V4),
                tagged_udp6(&tags, LISTED_V6_HOST),
                tagged_udp6(&tags, UNLISTED_V6_NEXT_TO_NET),
            ] {
                assert_eq!(
                    filter.judge(&frame),
                    (Pass, expected),
                    "{mode}, {tags:04x?}: {frame:02x?}"
                );
            }
        }
    }
}

/// 0x9100 (the service tag switches used before 802.1ad) is looked through like an
/// 802.1ad tag: what it carries is judged, ARP behind it passes, and a third tag behind
/// two of any kind is encapsulated.
#[test]
fn a_legacy_0x9100_service_tag_is_looked_through_like_8021ad() {
    let mut filter = with_list(Mode::Enforce);
    for tags in [
        &[ETH_P_QINQ_LEGACY][..],
        &[ETH_P_QINQ_LEGACY, ETH_P_8021Q][..],
    ] {
        assert_eq!(
            filter.judge(&tagged_udp4(tags, LISTED_V4_HOST)),
            (Pass, Reason::PassedListed),
            "{tags:04x?}"
        );
        assert_eq!(
            filter.judge(&tagged_udp4(tags, UNLISTED_V4)),
            (Drop, Reason::DroppedNotListed),
            "{tags:04x?}"
        );
        assert_eq!(
            filter.judge(&tagged_udp6(tags, UNLISTED_V6)),
            (Drop, Reason::DroppedNotListed),
            "{tags:04x?}"
        );
        let mut tagged_arp = arp();
        tagged_arp.splice(
            12..12,
            tags.iter()
                .flat_map(|tpid| tpid.to_be_bytes().into_iter().chain([0, 100])),
        );
        assert_eq!(
            filter.judge(&tagged_arp),
            (Pass, Reason::PassedNonIp),
            "{tags:04x?}"
        );
    }
    for tags in [
        [ETH_P_QINQ_LEGACY, ETH_P_8021Q, ETH_P_8021Q],
        [ETH_P_8021Q, ETH_P_8021Q, ETH_P_QINQ_LEGACY],
    ] {
        assert_eq!(
            filter.judge(&tagged_udp4(&tags, LISTED_V4_HOST)),
            (Drop, Reason::DroppedEncapsulated),
            "{tags:04x?}"
        );
    }
}

#[test]
fn pppoe_session_carrying_ipv4_or_ipv6_is_dropped_as_encapsulated_whatever_its_source() {
    let mut filter = with_list(Mode::Enforce);
    for tags in [
        &[][..],
        &[ETH_P_8021Q][..],
        &[ETH_P_8021AD, ETH_P_8021Q][..],
    ] {
        for frame in [
            pppoe_udp4(tags, LISTED_V4_HOST),
            pppoe_udp4(tags, UNLISTED_V4),
            pppoe_udp6(tags, LISTED_V6_IN_NET),
            pppoe_udp6(tags, UNLISTED_V6),
        ] {
            assert_eq!(
                filter.judge(&frame),
                (Drop, Reason::DroppedEncapsulated),
                "{tags:04x?}: {frame:02x?}"
            );
        }
    }
}

/// PPP's own control protocols bring the session up and carry no IP source: like ARP,
/// they pass, and so does the PPPoE discovery that finds the access concentrator.
#[test]
fn pppoe_link_control_and_discovery_pass_as_non_ip_in_enforce() {
    let mut filter = with_list(Mode::Enforce);
    for protocol in [PPP_LCP, PPP_PAP, PPP_CHAP, PPP_IPCP, PPP_IPV6CP] {
        assert_eq!(
            filter.judge(&ppp_control(protocol)),
            (Pass, Reason::PassedNonIp),
            "PPP protocol {protocol:04x}"
        );
    }
    for code in [PPPOE_PADI, PPPOE_PADS] {
        assert_eq!(
            filter.judge(&pppoe_discovery(code)),
            (Pass, Reason::PassedNonIp),
            "discovery code {code:02x}"
        );
    }
    // Discovery carrying what looks like an IPv4 packet is still discovery.
    let mut disguised = udp4(UNLISTED_V4);
    disguised[12..14].copy_from_slice(&ETH_P_PPPOE_DISCOVERY.to_be_bytes());
    assert_eq!(filter.judge(&disguised), (Pass, Reason::PassedNonIp));
}

/// Without its PPP protocol field a session frame could carry anything: encapsulated.
#[test]
fn pppoe_session_too_short_to_hold_its_ppp_protocol_counts_as_encapsulated() {
    let mut filter = with_list(Mode::Enforce);
    let full = pppoe_udp4(&[], LISTED_V4_HOST);
    for session_bytes in [0, 1, PPPOE_HEADER_LEN, PPPOE_HEADER_LEN + 1] {
        assert_eq!(
            filter.judge(&full[..ETH_LEN + session_bytes]),
            (Drop, Reason::DroppedEncapsulated),
            "{session_bytes} bytes after the Ethernet header"
        );
    }
    // Boundary: the protocol field alone is enough to tell.
    let control = ppp_control(PPP_LCP);
    assert_eq!(
        filter.judge(&control[..ETH_LEN + PPPOE_HEADER_LEN + 2]),
        (Pass, Reason::PassedNonIp)
    );
    assert_eq!(
        filter.judge(&full[..ETH_LEN + PPPOE_HEADER_LEN + 2]),
        (Drop, Reason::DroppedEncapsulated)
    );
}

/// What an MPLS label carries depends on the label's binding, which the program does
/// not know, so every labelled frame counts as encapsulated IP.
#[test]
fn mpls_unicast_and_multicast_are_dropped_as_encapsulated_whatever_they_carry() {
    let mut filter = with_list(Mode::Enforce);
    for ether_type in [ETH_P_MPLS_UNICAST, ETH_P_MPLS_MULTICAST] {
        for tags in [&[][..], &[ETH_P_8021Q][..]] {
            for payload in [
                ipv4(v4(LISTED_V4_HOST), &[], &udp(b"allowlist")),
                ipv4(v4(UNLISTED_V4), &[], &udp(b"allowlist")),
                ipv6(v6(LISTED_V6_HOST), IPPROTO_UDP, 64, &udp(b"allowlist")),
                ipv6(v6(UNLISTED_V6), IPPROTO_UDP, 64, &udp(b"allowlist")),
                vec![0xab; 30],
                Vec::new(),
            ] {
                let frame = mpls(tags, ether_type, &payload);
                assert_eq!(
                    filter.judge(&frame),
                    (Drop, Reason::DroppedEncapsulated),
                    "{ether_type:04x} behind {tags:04x?}: {frame:02x?}"
                );
            }
        }
        // Not even a label.
        assert_eq!(
            filter.judge(&ethernet(&[], ether_type, &[])),
            (Drop, Reason::DroppedEncapsulated),
            "{ether_type:04x}"
        );
    }
}

#[test]
fn encapsulated_ip_follows_the_mode_monitor_counts_it_and_off_passes_it() {
    let mut filter = with_list(Mode::Monitor);
    for frame in encapsulated_frames() {
        assert_eq!(
            filter.judge(&frame),
            (Pass, Reason::MonitorEncapsulated),
            "{frame:02x?}"
        );
    }
    filter.set_mode(Mode::Off);
    for frame in encapsulated_frames() {
        assert_eq!(
            filter.judge(&frame),
            (Pass, Reason::PassedOff),
            "{frame:02x?}"
        );
    }
    filter.set_mode(Mode::Enforce);
    for frame in encapsulated_frames() {
        assert_eq!(
            filter.judge(&frame),
            (Drop, Reason::DroppedEncapsulated),
            "{frame:02x?}"
        );
    }
}

/// `encapsulated_ip = "pass"`: for hosts that terminate these encapsulations themselves.
/// Only encapsulated IP changes; plain IP is still judged by its source.
#[test]
fn with_the_pass_encapsulated_feature_encapsulated_ip_passes_as_passed_encapsulated() {
    let mut filter = with_list(Mode::Enforce);
    filter.set_features(FEATURE_PASS_ENCAPSULATED);
    for mode in [Mode::Enforce, Mode::Monitor] {
        filter.set_mode(mode);
        for frame in encapsulated_frames() {
            assert_eq!(
                filter.judge(&frame),
                (Pass, Reason::PassedEncapsulated),
                "{mode}: {frame:02x?}"
            );
        }
    }
    filter.set_mode(Mode::Off);
    for frame in encapsulated_frames() {
        assert_eq!(
            filter.judge(&frame),
            (Pass, Reason::PassedOff),
            "{frame:02x?}"
        );
    }

    filter.set_mode(Mode::Enforce);
    assert_eq!(
        filter.judge(&udp4(UNLISTED_V4)),
        (Drop, Reason::DroppedNotListed)
    );
    assert_eq!(
        filter.judge(&tagged_udp6(&[ETH_P_8021AD, ETH_P_8021Q], UNLISTED_V6)),
        (Drop, Reason::DroppedNotListed)
    );
    assert_eq!(
        filter.judge(&udp4(LISTED_V4_HOST)),
        (Pass, Reason::PassedListed)
    );
    assert_eq!(
        filter.judge(&with_version_ihl(udp4(LISTED_V4_HOST), 4, 3)),
        (Drop, Reason::DroppedMalformed)
    );
    assert_eq!(filter.judge(&arp()), (Pass, Reason::PassedNonIp));
    assert_eq!(
        filter.judge(&ppp_control(PPP_LCP)),
        (Pass, Reason::PassedNonIp)
    );

    // Clearing the bit restores the default on the next packet.
    filter.set_features(0);
    for frame in encapsulated_frames() {
        assert_eq!(
            filter.judge(&frame),
            (Drop, Reason::DroppedEncapsulated),
            "{frame:02x?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// IPv4 header checks
// ---------------------------------------------------------------------------------------

#[test]
fn ipv4_with_options_ihl_6_to_15_is_judged_by_its_source() {
    let mut filter = with_list(Mode::Enforce);
    for ihl in 6u8..=15 {
        // NOP options filling the header to IHL words.
        let options = vec![0x01; (usize::from(ihl) - 5) * 4];
        let listed = ethernet(
            &[],
            ETH_P_IPV4,
            &ipv4(v4(LISTED_V4_HOST), &options, &udp(b"x")),
        );
        assert_eq!(listed[ETH_LEN] & 0x0f, ihl);
        assert_eq!(
            filter.judge(&listed),
            (Pass, Reason::PassedListed),
            "IHL {ihl}"
        );
        let unlisted = ethernet(
            &[],
            ETH_P_IPV4,
            &ipv4(v4(UNLISTED_V4), &options, &udp(b"x")),
        );
        assert_eq!(
            filter.judge(&unlisted),
            (Drop, Reason::DroppedNotListed),
            "IHL {ihl}"
        );
    }
}

#[test]
fn ipv4_ihl_below_5_is_malformed_even_from_a_listed_source() {
    let mut filter = with_list(Mode::Enforce);
    for ihl in 0u8..5 {
        let frame = with_version_ihl(udp4(LISTED_V4_HOST), 4, ihl);
        assert_eq!(
            filter.judge(&frame),
            (Drop, Reason::DroppedMalformed),
            "IHL {ihl}"
        );
    }
}

#[test]
fn ipv4_ihl_claiming_more_bytes_than_the_frame_has_is_malformed() {
    let mut filter = with_list(Mode::Enforce);
    // IHL 15 (60 bytes) with a 20-byte header and 17 bytes of UDP behind it.
    let frame = with_version_ihl(udp4(LISTED_V4_HOST), 4, 15);
    assert!(frame.len() - ETH_LEN < 60);
    assert_eq!(filter.judge(&frame), (Drop, Reason::DroppedMalformed));
    // IHL 6 on a frame that ends right after the 20-byte fixed header.
    let frame = with_total_len(
        with_version_ihl(udp4(LISTED_V4_HOST)[..ETH_LEN + IPV4_LEN].to_vec(), 4, 6),
        24,
    );
    assert_eq!(filter.judge(&frame), (Drop, Reason::DroppedMalformed));
    // IHL 15 with 39 of its 40 option bytes: one byte short.
    let full = ethernet(&[], ETH_P_IPV4, &ipv4(v4(LISTED_V4_HOST), &[1; 40], &[]));
    assert_eq!(
        filter.judge(&full[..full.len() - 1]),
        (Drop, Reason::DroppedMalformed)
    );
    // Boundary: the 60-byte header ending exactly at the end of the frame is complete.
    assert_eq!(full.len(), ETH_LEN + 60);
    assert_eq!(filter.judge(&full), (Pass, Reason::PassedListed));
}

#[test]
fn ipv4_total_length_smaller_than_the_header_is_malformed() {
    let mut filter = with_list(Mode::Enforce);
    for total_len in [0u16, 1, 19] {
        let frame = with_total_len(udp4(LISTED_V4_HOST), total_len);
        assert_eq!(
            filter.judge(&frame),
            (Drop, Reason::DroppedMalformed),
            "total length {total_len}"
        );
    }
    // With options (IHL 6 = 24 bytes), a total length of 20..=23 is still too small.
    let with_options = ethernet(
        &[],
        ETH_P_IPV4,
        &ipv4(v4(LISTED_V4_HOST), &[1; 4], &udp(b"x")),
    );
    for total_len in 20u16..24 {
        assert_eq!(
            filter.judge(&with_total_len(with_options.clone(), total_len)),
            (Drop, Reason::DroppedMalformed),
            "IHL 6, total length {total_len}"
        );
    }
    // Boundary: total length equal to the header length is fine.
    assert_eq!(
        filter.judge(&with_total_len(with_options, 24)),
        (Pass, Reason::PassedListed)
    );
    assert_eq!(
        filter.judge(&with_total_len(udp4(LISTED_V4_HOST), 20)),
        (Pass, Reason::PassedListed)
    );
}

/// Documents a limit of the check: only the header must be inside the frame. A total
/// length beyond the frame is left to the IP stack (which drops it as truncated); the
/// source is trustworthy either way.
#[test]
fn ipv4_total_length_beyond_the_frame_is_still_judged_by_its_source() {
    let mut filter = with_list(Mode::Enforce);
    assert_eq!(
        filter.judge(&with_total_len(udp4(LISTED_V4_HOST), 1500)),
        (Pass, Reason::PassedListed)
    );
    assert_eq!(
        filter.judge(&with_total_len(udp4(UNLISTED_V4), 1500)),
        (Drop, Reason::DroppedNotListed)
    );
}

#[test]
fn ipv4_ether_type_with_a_version_other_than_4_is_malformed() {
    let mut filter = with_list(Mode::Enforce);
    for version in [0u8, 5, 6, 15] {
        let frame = with_version_ihl(udp4(LISTED_V4_HOST), version, 5);
        assert_eq!(
            filter.judge(&frame),
            (Drop, Reason::DroppedMalformed),
            "version {version}"
        );
    }
    // A whole IPv6 packet behind the IPv4 ether type.
    let mut frame = udp6(LISTED_V6_HOST);
    frame[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
    assert_eq!(filter.judge(&frame), (Drop, Reason::DroppedMalformed));
}

#[test]
fn ipv6_ether_type_with_a_version_other_than_6_is_malformed() {
    let mut filter = with_list(Mode::Enforce);
    for version in [0u8, 4, 7, 15] {
        let mut frame = udp6(LISTED_V6_HOST);
        frame[ETH_LEN] = version << 4;
        assert_eq!(
            filter.judge(&frame),
            (Drop, Reason::DroppedMalformed),
            "version {version}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Truncated frames
// ---------------------------------------------------------------------------------------

#[test]
fn ethernet_header_alone_with_an_ip_ether_type_is_malformed() {
    let mut filter = with_list(Mode::Enforce);
    for ether_type in [ETH_P_IPV4, ETH_P_IPV6] {
        let frame = ethernet(&[], ether_type, &[]);
        assert_eq!(frame.len(), ETH_LEN);
        assert_eq!(
            filter.judge(&frame),
            (Drop, Reason::DroppedMalformed),
            "{ether_type:04x}"
        );
    }
}

#[test]
fn truncated_ipv4_header_is_malformed() {
    let mut filter = with_list(Mode::Enforce);
    let full = udp4(LISTED_V4_HOST);
    for ip_bytes in [1, 10, IPV4_LEN - 1] {
        assert_eq!(
            filter.judge(&full[..ETH_LEN + ip_bytes]),
            (Drop, Reason::DroppedMalformed),
            "{ip_bytes} bytes of IPv4 header"
        );
    }
    // Boundary: a complete header without payload (total length 20) is judged normally.
    let header_only = with_total_len(full[..ETH_LEN + IPV4_LEN].to_vec(), 20);
    assert_eq!(filter.judge(&header_only), (Pass, Reason::PassedListed));
}

#[test]
fn truncated_ipv6_header_is_malformed() {
    let mut filter = with_list(Mode::Enforce);
    let full = udp6(LISTED_V6_HOST);
    for ip_bytes in [1, 30, IPV6_LEN - 1] {
        assert_eq!(
            filter.judge(&full[..ETH_LEN + ip_bytes]),
            (Drop, Reason::DroppedMalformed),
            "{ip_bytes} bytes of IPv6 header"
        );
    }
    // Boundary: a complete header with no payload is judged normally.
    let header_only = ethernet(
        &[],
        ETH_P_IPV6,
        &ipv6(v6(LISTED_V6_HOST), IPPROTO_NONE, 64, &[]),
    );
    assert_eq!(filter.judge(&header_only), (Pass, Reason::PassedListed));
    let header_only = ethernet(
        &[],
        ETH_P_IPV6,
        &ipv6(v6(UNLISTED_V6), IPPROTO_NONE, 64, &[]),
    );
    assert_eq!(filter.judge(&header_only), (Drop, Reason::DroppedNotListed));
}

#[test]
fn frame_shorter_than_an_ethernet_header_passes_as_non_ip() {
    let mut filter = with_list(Mode::Enforce);
    let ipv4_frame = udp4(UNLISTED_V4);
    for len in [0, 1, 12, 13] {
        assert_eq!(
            filter.judge(&ipv4_frame[..len]),
            (Pass, Reason::PassedNonIp),
            "{len}-byte frame"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Non-IP
// ---------------------------------------------------------------------------------------

#[test]
fn arp_and_lldp_pass_as_non_ip_in_enforce() {
    let mut filter = with_list(Mode::Enforce);
    assert_eq!(filter.judge(&arp()), (Pass, Reason::PassedNonIp));
    assert_eq!(filter.judge(&lldp()), (Pass, Reason::PassedNonIp));
    // ARP inside a VLAN tag, and an unknown ether type carrying IPv4-looking bytes.
    let mut tagged_arp = arp();
    tagged_arp.splice(
        12..12,
        ETH_P_8021Q.to_be_bytes().into_iter().chain([0, 100]),
    );
    assert_eq!(filter.judge(&tagged_arp), (Pass, Reason::PassedNonIp));
    let mut unknown = udp4(UNLISTED_V4);
    unknown[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    assert_eq!(filter.judge(&unknown), (Pass, Reason::PassedNonIp));
    // ARP and LLDP behind the two tags the program looks through.
    let mut qinq_arp = arp();
    qinq_arp.splice(
        12..12,
        [ETH_P_8021AD, ETH_P_8021Q]
            .iter()
            .flat_map(|tpid| tpid.to_be_bytes().into_iter().chain([0, 100])),
    );
    assert_eq!(filter.judge(&qinq_arp), (Pass, Reason::PassedNonIp));
    let mut tagged_lldp = lldp();
    tagged_lldp.splice(
        12..12,
        ETH_P_8021Q.to_be_bytes().into_iter().chain([0, 100]),
    );
    assert_eq!(filter.judge(&tagged_lldp), (Pass, Reason::PassedNonIp));
}

#[test]
fn arp_passes_as_non_ip_with_an_empty_list_too() {
    let mut filter = TestFilter::open();
    filter.set_mode(Mode::Enforce);
    assert_eq!(filter.judge(&arp()), (Pass, Reason::PassedNonIp));
    assert_eq!(
        filter.judge(&udp4(LISTED_V4_HOST)),
        (Drop, Reason::DroppedNotListed)
    );
}

// ---------------------------------------------------------------------------------------
// IPv6 neighbour discovery
// ---------------------------------------------------------------------------------------

#[test]
fn neighbour_discovery_with_hop_limit_255_from_an_unlisted_source_passes_as_exempt() {
    let mut filter = with_list(Mode::Enforce);
    for icmp_type in [
        ND_ROUTER_SOLICIT,
        ND_ROUTER_ADVERT,
        ND_NEIGHBOUR_SOLICIT,
        ND_NEIGHBOUR_ADVERT,
        ND_REDIRECT,
    ] {
        for src in ["fe80::2", UNLISTED_V6, "::"] {
            assert_eq!(
                filter.judge(&icmp6(src, icmp_type, 255)),
                (Pass, Reason::PassedExempt),
                "ICMPv6 type {icmp_type} from {src}"
            );
        }
    }
}

#[test]
fn neighbour_discovery_types_with_hop_limit_below_255_are_judged_as_normal_traffic() {
    let mut filter = with_list(Mode::Enforce);
    for icmp_type in [ND_ROUTER_SOLICIT, ND_NEIGHBOUR_SOLICIT, ND_NEIGHBOUR_ADVERT] {
        for hop_limit in [64u8, 254, 1] {
            assert_eq!(
                filter.judge(&icmp6(UNLISTED_V6, icmp_type, hop_limit)),
                (Drop, Reason::DroppedNotListed),
                "type {icmp_type}, hop limit {hop_limit}"
            );
        }
        assert_eq!(
            filter.judge(&icmp6(LISTED_V6_IN_NET, icmp_type, 64)),
            (Pass, Reason::PassedListed),
            "type {icmp_type} from a listed source"
        );
    }
}

#[test]
fn icmpv6_outside_neighbour_discovery_from_an_unlisted_source_is_dropped_even_at_hop_limit_255() {
    let mut filter = with_list(Mode::Enforce);
    for icmp_type in [ICMPV6_ECHO_REQUEST, 132, 138] {
        for hop_limit in [64u8, 255] {
            assert_eq!(
                filter.judge(&icmp6(UNLISTED_V6, icmp_type, hop_limit)),
                (Drop, Reason::DroppedNotListed),
                "type {icmp_type}, hop limit {hop_limit}"
            );
        }
    }
    assert_eq!(
        filter.judge(&icmp6(LISTED_V6_HOST, ICMPV6_ECHO_REQUEST, 64)),
        (Pass, Reason::PassedListed)
    );
}

#[test]
fn neighbour_discovery_type_in_a_non_icmpv6_payload_is_not_exempt() {
    let mut filter = with_list(Mode::Enforce);
    // UDP whose first payload byte happens to be 135, hop limit 255.
    let frame = ethernet(
        &[],
        ETH_P_IPV6,
        &ipv6(
            v6(UNLISTED_V6),
            IPPROTO_UDP,
            255,
            &icmpv6(ND_NEIGHBOUR_SOLICIT),
        ),
    );
    assert_eq!(filter.judge(&frame), (Drop, Reason::DroppedNotListed));
    // ICMPv6 with hop limit 255 but no ICMPv6 byte at all: judged by source.
    let frame = ethernet(
        &[],
        ETH_P_IPV6,
        &ipv6(v6(UNLISTED_V6), IPPROTO_ICMPV6, 255, &[]),
    );
    assert_eq!(filter.judge(&frame), (Drop, Reason::DroppedNotListed));
}

// ---------------------------------------------------------------------------------------
// Modes
// ---------------------------------------------------------------------------------------

#[test]
fn monitor_passes_unlisted_sources_and_counts_them_as_monitor_would_drop() {
    let mut filter = with_list(Mode::Monitor);
    assert_eq!(
        filter.judge(&udp4(UNLISTED_V4)),
        (Pass, Reason::MonitorNotListed)
    );
    assert_eq!(
        filter.judge(&udp6(UNLISTED_V6)),
        (Pass, Reason::MonitorNotListed)
    );
    assert_eq!(
        filter.judge(&icmp6(UNLISTED_V6, ND_NEIGHBOUR_SOLICIT, 64)),
        (Pass, Reason::MonitorNotListed)
    );
    assert_eq!(Reason::MonitorNotListed.name(), "monitor_would_drop");
    // What enforce would pass is counted as in enforce.
    assert_eq!(
        filter.judge(&udp4(LISTED_V4_IN_NET)),
        (Pass, Reason::PassedListed)
    );
    assert_eq!(filter.judge(&arp()), (Pass, Reason::PassedNonIp));
    assert_eq!(
        filter.judge(&icmp6(UNLISTED_V6, ND_NEIGHBOUR_SOLICIT, 255)),
        (Pass, Reason::PassedExempt)
    );
}

#[test]
fn monitor_passes_malformed_packets_and_counts_them_as_monitor_malformed() {
    let mut filter = with_list(Mode::Monitor);
    let malformed = [
        with_version_ihl(udp4(UNLISTED_V4), 4, 3),
        with_total_len(udp4(UNLISTED_V4), 10),
        udp4(UNLISTED_V4)[..ETH_LEN + 10].to_vec(),
        udp6(UNLISTED_V6)[..ETH_LEN + 30].to_vec(),
        ethernet(&[], ETH_P_8021Q, &[0, 100]),
    ];
    for frame in malformed {
        assert_eq!(
            filter.judge(&frame),
            (Pass, Reason::MonitorMalformed),
            "{frame:02x?}"
        );
    }
}

#[test]
fn off_passes_everything_and_counts_it_as_passed_off() {
    let mut filter = with_list(Mode::Off);
    let frames = [
        udp4(LISTED_V4_HOST),
        udp4(UNLISTED_V4),
        udp6(UNLISTED_V6),
        tagged_udp4(&[ETH_P_8021AD, ETH_P_8021Q], UNLISTED_V4),
        with_version_ihl(udp4(UNLISTED_V4), 4, 2),
        udp6(UNLISTED_V6)[..ETH_LEN + 30].to_vec(),
        arp(),
        icmp6(UNLISTED_V6, ND_NEIGHBOUR_SOLICIT, 255),
        udp4(UNLISTED_V4)[..12].to_vec(),
        tagged_udp4(&[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q], UNLISTED_V4),
        pppoe_udp4(&[], UNLISTED_V4),
        mpls(&[], ETH_P_MPLS_UNICAST, &[]),
    ];
    for frame in frames {
        assert_eq!(
            filter.judge(&frame),
            (Pass, Reason::PassedOff),
            "{frame:02x?}"
        );
    }
}

#[test]
fn a_freshly_loaded_program_is_off_until_a_mode_is_set() {
    let mut filter = TestFilter::open();
    assert_eq!(filter.judge(&udp4(UNLISTED_V4)), (Pass, Reason::PassedOff));
    filter.set_mode(Mode::Enforce);
    assert_eq!(
        filter.judge(&udp4(UNLISTED_V4)),
        (Drop, Reason::DroppedNotListed)
    );
}

/// The control record is only ever written by the daemon, but a value it never writes
/// must not open the host: anything but off (0) and monitor (1) enforces.
#[test]
fn an_unknown_mode_value_in_the_control_record_enforces() {
    let mut filter = with_list(Mode::Monitor);
    let mut control: Array<MapData, Control> = filter.pinned_map(MAP_CONTROL).try_into().unwrap();
    let record = control.get(&0, 0).unwrap();
    for raw_mode in [3u32, 99, u32::MAX] {
        control
            .set(
                0,
                Control {
                    mode: raw_mode,
                    ..record
                },
                0,
            )
            .unwrap();
        assert_eq!(
            filter.judge(&udp4(UNLISTED_V4)),
            (Drop, Reason::DroppedNotListed),
            "mode {raw_mode}"
        );
        assert_eq!(
            filter.judge(&with_version_ihl(udp4(LISTED_V4_HOST), 4, 4)),
            (Drop, Reason::DroppedMalformed),
            "mode {raw_mode}"
        );
        assert_eq!(
            filter.judge(&udp6(LISTED_V6_IN_NET)),
            (Pass, Reason::PassedListed),
            "mode {raw_mode}"
        );
        assert_eq!(
            filter.judge(&pppoe_udp4(&[], LISTED_V4_HOST)),
            (Drop, Reason::DroppedEncapsulated),
            "mode {raw_mode}"
        );
    }
}

#[test]
fn mode_changes_take_effect_on_the_next_packet() {
    let mut filter = with_list(Mode::Enforce);
    let frame = udp4(UNLISTED_V4);
    assert_eq!(filter.judge(&frame), (Drop, Reason::DroppedNotListed));
    filter.set_mode(Mode::Monitor);
    assert_eq!(filter.judge(&frame), (Pass, Reason::MonitorNotListed));
    filter.set_mode(Mode::Off);
    assert_eq!(filter.judge(&frame), (Pass, Reason::PassedOff));
    filter.set_mode(Mode::Enforce);
    assert_eq!(filter.judge(&frame), (Drop, Reason::DroppedNotListed));
}

// ---------------------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------------------

#[test]
fn counters_add_up_to_exactly_the_packets_and_bytes_sent() {
    let mut filter = with_list(Mode::Enforce);
    let before = filter.counters();

    // (frame, reason it must be counted under), sent with plain test runs.
    let mut padded = udp4(LISTED_V4_IN_NET);
    padded.resize(1514, 0xab);
    let sent: Vec<(Vec<u8>, Reason)> = vec![
        (udp4(LISTED_V4_HOST), Reason::PassedListed),
        (padded, Reason::PassedListed),
        (udp6(LISTED_V6_IN_NET), Reason::PassedListed),
        (udp4(UNLISTED_V4), Reason::DroppedNotListed),
        (udp6(UNLISTED_V6), Reason::DroppedNotListed),
        (udp6(UNLISTED_V6), Reason::DroppedNotListed),
        (arp(), Reason::PassedNonIp),
        (lldp(), Reason::PassedNonIp),
        (
            icmp6("fe80::2", ND_NEIGHBOUR_ADVERT, 255),
            Reason::PassedExempt,
        ),
        (
            udp4(LISTED_V4_HOST)[..ETH_LEN + 10].to_vec(),
            Reason::DroppedMalformed,
        ),
        (
            tagged_udp4(&[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q], LISTED_V4_HOST),
            Reason::DroppedEncapsulated,
        ),
        (pppoe_udp6(&[], UNLISTED_V6), Reason::DroppedEncapsulated),
        (ppp_control(PPP_LCP), Reason::PassedNonIp),
        (pppoe_discovery(PPPOE_PADI), Reason::PassedNonIp),
    ];
    for (frame, reason) in &sent {
        let expected = if reason.drops() { Drop } else { Pass };
        assert_eq!(filter.run(frame), expected, "{reason:?}");
    }

    let after = filter.counters();
    for reason in Reason::ALL {
        let expected = sent.iter().filter(|(_, r)| *r == reason).fold(
            Counter::default(),
            |sum, (frame, _)| Counter {
                packets: sum.packets + 1,
                bytes: sum.bytes + frame.len() as u64,
            },
        );
        assert_eq!(
            delta(&before, &after, reason),
            expected,
            "counter {}",
            reason.name()
        );
    }
    assert_eq!(
        delta(&before, &after, Reason::DroppedNotListed),
        Counter {
            packets: 3,
            bytes: (udp4(UNLISTED_V4).len() + 2 * udp6(UNLISTED_V6).len()) as u64
        }
    );
    // Every name the daemon reports is there, and nothing else.
    let names: Vec<&str> = after.keys().copied().collect();
    let mut expected_names: Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
    expected_names.sort_unstable();
    assert_eq!(names, expected_names);
}

// ---------------------------------------------------------------------------------------
// Swapping lists
// ---------------------------------------------------------------------------------------

/// Asserts that every frame of `passing` passes as listed and every one of `dropped`
/// drops as not listed.
fn assert_list_in_force(
    filter: &mut TestFilter,
    passing: &[Vec<u8>],
    dropped: &[Vec<u8>],
    context: &str,
) {
    for frame in passing {
        assert_eq!(
            filter.judge(frame),
            (Pass, Reason::PassedListed),
            "{context}: {frame:02x?}"
        );
    }
    for frame in dropped {
        assert_eq!(
            filter.judge(frame),
            (Drop, Reason::DroppedNotListed),
            "{context}: {frame:02x?}"
        );
    }
}

#[test]
fn verdicts_follow_the_list_in_force_across_atomic_swaps() {
    let mut filter = TestFilter::open();
    let list_a = ["192.0.2.0/24", "2001:db8:a::/48"];
    let list_b = ["198.51.100.7/32", "2001:db8:b::1/128"];
    let from_a = [udp4("192.0.2.200"), udp6("2001:db8:a::5")];
    let from_b = [udp4("198.51.100.7"), udp6("2001:db8:b::1")];

    filter.set_mode(Mode::Enforce);
    for (name, list, passing, dropped) in [
        ("A", &list_a, &from_a, &from_b),
        ("B", &list_b, &from_b, &from_a),
        ("A again", &list_a, &from_a, &from_b),
        ("B again", &list_b, &from_b, &from_a),
    ] {
        filter.apply(list);
        assert_list_in_force(&mut filter, passing, dropped, &format!("list {name}"));
    }

    // The union, then an empty list: nothing IP passes any more.
    let union: Vec<&str> = list_a.iter().chain(&list_b).copied().collect();
    filter.apply(&union);
    let everyone: Vec<Vec<u8>> = from_a.iter().chain(&from_b).cloned().collect();
    assert_list_in_force(&mut filter, &everyone, &[], "union");
    filter.apply(&[]);
    assert_list_in_force(&mut filter, &[], &everyone, "empty list");
}

/// Applied twice, a list is in both slots (each apply writes the standby slot and flips),
/// so only the maps themselves can show that the program reads the slot the control
/// record names: here the standby slot is rewritten behind the filter's back, as `apply`
/// does before it flips the index.
#[test]
fn program_judges_by_the_slot_the_control_record_names_and_ignores_the_other() {
    let mut filter = TestFilter::open();
    filter.apply(&["192.0.2.0/24", "2001:db8:a::/48"]);
    filter.apply(&["192.0.2.0/24", "2001:db8:a::/48"]);
    filter.set_mode(Mode::Enforce);
    let from_a = [udp4("192.0.2.200"), udp6("2001:db8:a::5")];
    let from_b = [udp4("198.51.100.7"), udp6("2001:db8:b::1")];

    let mut control: Array<MapData, Control> = filter.pinned_map(MAP_CONTROL).try_into().unwrap();
    let record = control.get(&0, 0).unwrap();
    let standby = 1 - record.active_slot as usize;
    let mut trie_v4: LpmTrie<MapData, Ipv4Octets, AllowRule> =
        filter.pinned_map(MAP_ALLOW_V4[standby]).try_into().unwrap();
    let mut trie_v6: LpmTrie<MapData, Ipv6Octets, AllowRule> =
        filter.pinned_map(MAP_ALLOW_V6[standby]).try_into().unwrap();
    let mut hosts_v4: HashMap<MapData, Ipv4Octets, AllowRule> =
        filter.pinned_map(MAP_EXACT_V4[standby]).try_into().unwrap();
    let mut hosts_v6: HashMap<MapData, Ipv6Octets, AllowRule> =
        filter.pinned_map(MAP_EXACT_V6[standby]).try_into().unwrap();
    let mut screen_v4: Array<MapData, u64> = filter
        .pinned_map(MAP_SCREEN_V4[standby])
        .try_into()
        .unwrap();
    let mut screen_v6: Array<MapData, u64> = filter
        .pinned_map(MAP_SCREEN_V6[standby])
        .try_into()
        .unwrap();
    let mut coarse_v4: Array<MapData, u64> = filter
        .pinned_map(MAP_COARSE_SCREEN_V4[standby])
        .try_into()
        .unwrap();
    let mut coarse_v6: Array<MapData, u64> = filter
        .pinned_map(MAP_COARSE_SCREEN_V6[standby])
        .try_into()
        .unwrap();
    let set_bit = |bitmap: &mut Array<MapData, u64>, bit: u32| {
        let word = bitmap.get(&(bit / 64), 0).unwrap();
        bitmap.set(bit / 64, word | 1 << (bit % 64), 0).unwrap();
    };
    let screen_in = |screen: &mut Array<MapData, u64>, coarse: &mut Array<MapData, u64>, bit| {
        set_bit(screen, bit);
        set_bit(coarse, coarse_screen_bit(bit));
    };
    // Standby slot := list B only: its prefixes in the trie, its hosts in the exact-host
    // hash, and their screen and coarse screen bits set.
    trie_v4.remove(&Key::new(24, [192, 0, 2, 0])).unwrap();
    hosts_v4
        .insert([198, 51, 100, 7], AllowRule::ALLOW_ALL, 0)
        .unwrap();
    screen_in(
        &mut screen_v4,
        &mut coarse_v4,
        screen_bit_v4([198, 51, 100, 7]),
    );
    trie_v6
        .remove(&Key::new(48, v6("2001:db8:a::").octets()))
        .unwrap();
    hosts_v6
        .insert(v6("2001:db8:b::1").octets(), AllowRule::ALLOW_ALL, 0)
        .unwrap();
    screen_in(
        &mut screen_v6,
        &mut coarse_v6,
        screen_bit_v6([0x20, 0x01, 0x0d, 0xb8]),
    );
    assert_list_in_force(
        &mut filter,
        &from_a,
        &from_b,
        "standby slot written, not in force",
    );

    let flipped = Control {
        active_slot: standby as u32,
        ..record
    };
    control.set(0, flipped, 0).unwrap();
    assert_list_in_force(&mut filter, &from_b, &from_a, "flipped to the standby slot");

    control.set(0, record, 0).unwrap();
    assert_list_in_force(&mut filter, &from_a, &from_b, "flipped back");

    // An active_slot other than 0 or 1 is read as slot 1 (a corrupt index still enforces).
    control
        .set(
            0,
            Control {
                active_slot: 7,
                ..record
            },
            0,
        )
        .unwrap();
    let (slot1_passing, slot1_dropped) = if standby == 1 {
        (&from_b, &from_a)
    } else {
        (&from_a, &from_b)
    };
    assert_list_in_force(&mut filter, slot1_passing, slot1_dropped, "active_slot 7");
}
