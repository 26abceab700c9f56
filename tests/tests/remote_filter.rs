//! The remote filter in front of the flow table: a reply passes only if its source's bit
//! is set in the generation the program reads, the daemon's rebuilds keep the bits of
//! live flows and drop those of ended and idle ones, and a flow the filter was never told
//! about is found at the next rebuild. Real XDP program and maps, frames through
//! `BPF_PROG_TEST_RUN`; the egress program's half is covered by the return-traffic tests
//! between namespaces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use allowlist_common::{
    FlowKey, FlowState, Reason, FEATURE_RETURN_TRAFFIC, MAP_FLOWS, UDP_IDLE_NS,
};
use allowlist_tests::frames::{
    ethernet, udp, Ipv4Header, Ipv6Header, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_UDP, TEST_DST_MAC,
    TEST_SRC_MAC,
};
use allowlist_tests::test_filter::{TestFilter, Verdict};
use allowlist_tests::Mode;
use allowlist_userspace::filter::RemoteFilterRebuild;
use aya::maps::{HashMap as BpfHashMap, MapData};

const LOCAL_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const LOCAL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const LOCAL_PORT: u16 = 51_000;
const REMOTE_PORT: u16 = 443;

/// An enforcing filter with return traffic on, whose list holds nothing the tests'
/// remotes are in.
fn enforcing_with_return_traffic() -> TestFilter {
    let mut filter = TestFilter::open();
    filter.apply(&["192.0.2.0/24"]);
    filter.set_mode(Mode::Enforce);
    filter.set_features(FEATURE_RETURN_TRAFFIC);
    filter
}

/// The flow the host opened to `remote` (UDP, from [`LOCAL_PORT`] to [`REMOTE_PORT`]).
fn flow_to(remote: IpAddr) -> FlowKey {
    let (remote, local) = match remote {
        IpAddr::V4(remote) => (
            remote.to_ipv6_mapped().octets(),
            LOCAL_V4.to_ipv6_mapped().octets(),
        ),
        IpAddr::V6(remote) => (remote.octets(), LOCAL_V6.octets()),
    };
    FlowKey {
        remote,
        local,
        remote_port: REMOTE_PORT,
        local_port: LOCAL_PORT,
        protocol: IPPROTO_UDP,
        _pad: [0; 3],
    }
}

/// A datagram from `remote` answering [`flow_to`]`(remote)`.
fn reply_from(remote: IpAddr) -> Vec<u8> {
    let datagram = udp(REMOTE_PORT, LOCAL_PORT, b"reply");
    match remote {
        IpAddr::V4(remote) => ethernet(
            TEST_DST_MAC,
            TEST_SRC_MAC,
            &[],
            ETH_P_IPV4,
            &Ipv4Header::new(remote, LOCAL_V4, IPPROTO_UDP).packet(&datagram),
        ),
        IpAddr::V6(remote) => ethernet(
            TEST_DST_MAC,
            TEST_SRC_MAC,
            &[],
            ETH_P_IPV6,
            &Ipv6Header::new(remote, LOCAL_V6, IPPROTO_UDP).packet(&datagram),
        ),
    }
}

fn flow_table(filter: &TestFilter) -> BpfHashMap<MapData, FlowKey, FlowState> {
    BpfHashMap::try_from(filter.pinned_map(MAP_FLOWS)).expect("the flow table")
}

/// Writes a flow straight into the kernel's table, bypassing the remote filter, as an
/// older layout's program or a lost update would leave it.
fn record_behind_the_filters_back(filter: &TestFilter, flow: FlowKey, last_seen_ns: u64) {
    flow_table(filter)
        .insert(flow, FlowState { last_seen_ns }, 0)
        .expect("writing the flow table");
}

/// Records a flow as the daemon seeds one (its remote marked first).
fn seed(filter: &mut TestFilter, flow: FlowKey) {
    filter
        .filter()
        .seed_flows(&[flow])
        .expect("seeding the flow");
}

fn rebuild(filter: &mut TestFilter) -> RemoteFilterRebuild {
    filter
        .filter()
        .rebuild_remote_filter()
        .expect("rebuilding the remote filter")
}

/// Takes a flow out of the kernel's table, as the LRU's eviction would.
fn forget_flow(filter: &TestFilter, flow: FlowKey) {
    flow_table(filter).remove(&flow).expect("removing the flow");
}

fn boot_time_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    assert_eq!(read, 0, "clock_gettime(CLOCK_BOOTTIME)");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn remotes() -> [IpAddr; 2] {
    [
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)),
        IpAddr::V6("2001:db8:beef::5".parse().expect("an IPv6 address")),
    ]
}

#[test]
fn a_reply_to_a_live_flow_passes_before_and_after_each_rebuild_of_the_remote_filter() {
    for remote in remotes() {
        let mut filter = enforcing_with_return_traffic();
        seed(&mut filter, flow_to(remote));
        let reply = reply_from(remote);
        assert_eq!(
            filter.judge(&reply),
            (Verdict::Pass, Reason::PassedReturnTraffic),
            "{remote}: seeded"
        );
        // Two rebuilds: the program reads each generation once.
        for round in 1..=2 {
            let rebuilt = rebuild(&mut filter);
            assert_eq!(
                (rebuilt.live_flows, rebuilt.idle_flows),
                (1, 0),
                "{remote}: rebuild {round}"
            );
            assert_eq!(
                filter.judge(&reply),
                (Verdict::Pass, Reason::PassedReturnTraffic),
                "{remote}: after rebuild {round}"
            );
        }
        let stranger = match remote {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9)),
            IpAddr::V6(_) => IpAddr::V6("2001:db8:dead::9".parse().expect("an IPv6 address")),
        };
        assert_eq!(
            filter.judge(&reply_from(stranger)),
            (Verdict::Drop, Reason::DroppedNotListed),
            "{stranger}: never talked to"
        );
    }
}

#[test]
fn a_flow_the_remote_filter_was_not_told_about_is_not_looked_up_until_the_next_rebuild_finds_it() {
    for remote in remotes() {
        let mut filter = enforcing_with_return_traffic();
        record_behind_the_filters_back(&filter, flow_to(remote), boot_time_ns());
        let reply = reply_from(remote);
        assert_eq!(
            filter.judge(&reply),
            (Verdict::Drop, Reason::DroppedNotListed),
            "{remote}: its bit is clear, so the flow table is not read"
        );
        let rebuilt = rebuild(&mut filter);
        assert_eq!(rebuilt.live_flows, 1, "{remote}");
        assert_eq!(
            filter.judge(&reply),
            (Verdict::Pass, Reason::PassedReturnTraffic),
            "{remote}: after the rebuild"
        );
    }
}

#[test]
fn once_both_generations_are_rebuilt_a_remote_whose_flow_ended_is_out_of_the_filter() {
    for remote in remotes() {
        let mut filter = enforcing_with_return_traffic();
        seed(&mut filter, flow_to(remote));
        forget_flow(&filter, flow_to(remote));
        for _ in 0..2 {
            let rebuilt = rebuild(&mut filter);
            assert_eq!(rebuilt.live_flows, 0, "{remote}");
        }
        // The flow back in the table without its bit: only a filter that still held the
        // remote would let the reply reach it.
        record_behind_the_filters_back(&filter, flow_to(remote), boot_time_ns());
        assert_eq!(
            filter.judge(&reply_from(remote)),
            (Verdict::Drop, Reason::DroppedNotListed),
            "{remote}: the rebuilds cleared its bit"
        );
    }
}

#[test]
fn a_rebuild_leaves_out_flows_past_their_idle_time_and_keeps_the_live_ones() {
    let mut filter = enforcing_with_return_traffic();
    let [live, idle] = remotes();
    // Flow times count from boot: on a machine up for less than the idle time (a guest
    // just booted) no flow can be idle yet, so wait until one can be.
    let idle_by = UDP_IDLE_NS + 1_000_000_000;
    let up = boot_time_ns();
    if up <= idle_by {
        std::thread::sleep(std::time::Duration::from_nanos(
            idle_by - up + 1_000_000_000,
        ));
    }
    seed(&mut filter, flow_to(live));
    let long_ago = boot_time_ns() - idle_by;
    record_behind_the_filters_back(&filter, flow_to(idle), long_ago);
    let rebuilt = rebuild(&mut filter);
    assert_eq!((rebuilt.live_flows, rebuilt.idle_flows), (1, 1));
    assert_eq!(
        filter.judge(&reply_from(live)),
        (Verdict::Pass, Reason::PassedReturnTraffic)
    );
}
