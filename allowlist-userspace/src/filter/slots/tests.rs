//! How a slot's maps are written, against an in-memory fake of them: the diff, where
//! each host goes, and the order of the writes, which is what makes in-place changes
//! safe for packets judged meanwhile.

use std::{collections::BTreeMap, io};

use allowlist_common::{AllowRule, MAX_PORT_SETS, RULE_PORTS};
use ipnet::{Ipv4Net, Ipv6Net};

use super::*;
use crate::{compile::CompiledList, ports::PortSpec, screen::ScreenBits};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op<P> {
    Insert(Place, P, AllowRule),
    Remove(Place, P),
    /// One batch call, with every element it was given.
    InsertBatch(Place, Vec<(P, AllowRule)>),
    RemoveBatch(Place, Vec<P>),
    Screen(P),
    WholeScreen,
}
use Op::{Insert, InsertBatch, Remove, RemoveBatch, Screen, WholeScreen};
use Place::{Exact, Trie};

/// The maps of one family and slot, in memory, failing as the kernel's would.
struct FakeMaps<P> {
    exact: BTreeMap<P, AllowRule>,
    trie: BTreeMap<P, AllowRule>,
    /// Room in the exact-host hash; an insert beyond it fails with ENOSPC.
    exact_room: usize,
    /// As a kernel without batch calls for these maps.
    no_batches: bool,
    /// A batch call stops at this prefix with EAGAIN, once (written alone, it goes in).
    stop_batch_at: Option<P>,
    ops: Vec<Op<P>>,
}

impl<P: Prefix> FakeMaps<P> {
    fn new() -> Self {
        FakeMaps {
            exact: BTreeMap::new(),
            trie: BTreeMap::new(),
            exact_room: ROOM,
            no_batches: false,
            stop_batch_at: None,
            ops: Vec::new(),
        }
    }

    /// The kernel's batch loop: element by element, stopping at the first refusal.
    fn batch<T: Copy>(
        &mut self,
        items: &[T],
        net: impl Fn(T) -> P,
        mut write: impl FnMut(&mut Self, T) -> io::Result<()>,
    ) -> Result<(), BatchError<io::Error>> {
        for (done, item) in items.iter().enumerate() {
            let error = if self.stop_batch_at == Some(net(*item)) {
                self.stop_batch_at = None;
                Err(io::Error::from_raw_os_error(libc::EAGAIN))
            } else {
                write(self, *item)
            };
            if let Err(error) = error {
                return Err(BatchError::Stopped { done, error });
            }
        }
        Ok(())
    }

    fn put(&mut self, place: Place, net: P, rule: AllowRule) -> io::Result<()> {
        let map = match place {
            Exact => &mut self.exact,
            Trie => &mut self.trie,
        };
        if place == Exact && !map.contains_key(&net) && map.len() >= self.exact_room {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        map.insert(net, rule);
        Ok(())
    }

    fn take(&mut self, place: Place, net: P) -> io::Result<()> {
        let map = match place {
            Exact => &mut self.exact,
            Trie => &mut self.trie,
        };
        match map.remove(&net) {
            Some(_) => Ok(()),
            None => Err(io::Error::from_raw_os_error(libc::ENOENT)),
        }
    }
}

impl<P: Prefix> SlotMaps<P> for FakeMaps<P> {
    type Error = io::Error;

    fn insert(&mut self, place: Place, net: P, rule: AllowRule) -> io::Result<()> {
        self.ops.push(Insert(place, net, rule));
        self.put(place, net, rule)
    }

    fn remove(&mut self, place: Place, net: P) -> io::Result<()> {
        self.ops.push(Remove(place, net));
        self.take(place, net)
    }

    fn insert_batch(
        &mut self,
        place: Place,
        entries: &[(P, AllowRule)],
    ) -> Result<(), BatchError<io::Error>> {
        if self.no_batches {
            return Err(BatchError::Unsupported);
        }
        self.ops.push(InsertBatch(place, entries.to_vec()));
        self.batch(
            entries,
            |(net, _)| net,
            |maps, (net, rule)| maps.put(place, net, rule),
        )
    }

    fn remove_batch(&mut self, place: Place, nets: &[P]) -> Result<(), BatchError<io::Error>> {
        if self.no_batches {
            return Err(BatchError::Unsupported);
        }
        self.ops.push(RemoveBatch(place, nets.to_vec()));
        self.batch(nets, |net| net, |maps, net| maps.take(place, net))
    }

    fn screen(&mut self, net: P) {
        self.ops.push(Screen(net));
    }

    fn write_screen(&mut self, _: &ScreenBits) {
        self.ops.push(WholeScreen);
    }

    fn read_all(&self) -> io::Result<Vec<(P, Place, AllowRule)>> {
        let exact = self.exact.iter().map(|(net, rule)| (*net, Exact, *rule));
        let trie = self.trie.iter().map(|(net, rule)| (*net, Trie, *rule));
        Ok(exact.chain(trie).collect())
    }
}

/// Room for this many hosts in the exact-host hash, so overflow is cheap to reach.
const ROOM: usize = 2;

const ALL: AllowRule = AllowRule::ALLOW_ALL;
const PORTS_1: AllowRule = AllowRule {
    flags: RULE_PORTS,
    port_set: 1,
};
const PORTS_2: AllowRule = AllowRule {
    flags: RULE_PORTS,
    port_set: 2,
};

fn empty<P: Prefix>() -> FamilySlot<P, FakeMaps<P>> {
    FamilySlot::new(FakeMaps::new(), 1, Vec::new(), FamilyPlacement::new(ROOM))
}

fn net<P: std::str::FromStr<Err: std::fmt::Debug>>(text: &str) -> P {
    text.parse().unwrap()
}

/// A list as the slot wants it: sorted by prefix.
fn list<P: Prefix + std::str::FromStr<Err: std::fmt::Debug>>(
    entries: &[(&str, AllowRule)],
) -> Vec<(P, AllowRule)> {
    let mut list: Vec<_> = entries.iter().map(|(n, rule)| (net(n), *rule)).collect();
    list.sort_by_key(|(n, _)| *n);
    list
}

/// A slot holding `entries`, written whole, with its log of writes cleared.
fn holding(entries: &[(&str, AllowRule)]) -> FamilySlot<Ipv4Net, FakeMaps<Ipv4Net>> {
    let mut slot = empty();
    slot.write_whole(&list(entries), &ScreenBits::default())
        .unwrap();
    slot.maps.ops.clear();
    slot
}

fn whole(slot: &mut FamilySlot<Ipv4Net, FakeMaps<Ipv4Net>>, entries: &[(&str, AllowRule)]) {
    slot.write_whole(&list(entries), &ScreenBits::default())
        .unwrap();
}

fn in_exact<P: Prefix>(slot: &FamilySlot<P, FakeMaps<P>>) -> Vec<P> {
    slot.maps.exact.keys().copied().collect()
}

fn in_trie<P: Prefix>(slot: &FamilySlot<P, FakeMaps<P>>) -> Vec<P> {
    slot.maps.trie.keys().copied().collect()
}

#[test]
fn the_diff_writes_new_and_changed_prefixes_and_removes_those_gone() {
    let current = list::<Ipv4Net>(&[
        ("10.0.0.0/8", ALL),
        ("192.0.2.0/24", ALL),
        ("198.51.100.7/32", PORTS_1),
    ]);
    let wanted = list::<Ipv4Net>(&[
        ("192.0.2.0/24", ALL),
        ("198.51.100.7/32", PORTS_2),
        ("203.0.113.0/24", ALL),
    ]);
    let (upsert, remove) = diff(&current, &wanted);
    assert_eq!(
        upsert,
        list(&[("198.51.100.7/32", PORTS_2), ("203.0.113.0/24", ALL)])
    );
    assert_eq!(remove, vec![net::<Ipv4Net>("10.0.0.0/8")]);
}

#[test]
fn a_whole_write_leaves_the_maps_holding_exactly_the_list() {
    let mut slot = holding(&[("10.0.0.0/8", ALL), ("192.0.2.1/32", ALL)]);
    let wanted = list(&[("10.0.0.0/8", PORTS_1), ("192.0.2.2/32", ALL)]);
    let report = slot.write_whole(&wanted, &ScreenBits::default()).unwrap();
    assert_eq!((report.added, report.removed), (2, 1));
    assert_eq!(slot.held().collect::<Vec<_>>(), wanted);
    let mut in_maps: Vec<_> = slot.maps.exact.iter().chain(&slot.maps.trie).collect();
    in_maps.sort_by_key(|(net, _)| **net);
    let wanted: Vec<_> = wanted.iter().map(|(net, rule)| (net, rule)).collect();
    assert_eq!(in_maps, wanted);
}

#[test]
fn a_whole_write_removes_before_it_adds_so_a_replaced_list_never_needs_room_for_both() {
    let mut slot = holding(&[("192.0.2.1/32", ALL), ("192.0.2.2/32", ALL)]);
    whole(
        &mut slot,
        &[("198.51.100.1/32", ALL), ("198.51.100.2/32", ALL)],
    );
    assert_eq!(
        slot.maps.ops,
        [
            Remove(Exact, net("192.0.2.1/32")),
            Remove(Exact, net("192.0.2.2/32")),
            Insert(Exact, net("198.51.100.1/32"), ALL),
            Insert(Exact, net("198.51.100.2/32"), ALL),
            WholeScreen,
        ],
        "the new hosts take the room the old ones left, and the screen comes last"
    );
}

#[test]
fn an_unchanged_list_writes_no_prefix() {
    let entries = [("10.0.0.0/8", ALL), ("192.0.2.1/32", PORTS_1)];
    let mut slot = holding(&entries);
    let report = slot
        .write_whole(&list(&entries), &ScreenBits::default())
        .unwrap();
    assert_eq!((report.added, report.removed), (0, 0));
    assert_eq!(slot.maps.ops, [WholeScreen]);
}

#[test]
fn hosts_go_to_the_exact_host_hash_while_it_has_room_and_the_rest_to_the_trie() {
    let slot = holding(&[
        ("192.0.2.1/32", ALL),
        ("192.0.2.2/32", ALL),
        ("192.0.2.3/32", ALL),
        ("198.51.100.0/24", ALL),
    ]);
    assert_eq!(in_exact(&slot), [net("192.0.2.1/32"), net("192.0.2.2/32")]);
    assert_eq!(
        in_trie(&slot),
        [net("192.0.2.3/32"), net("198.51.100.0/24")],
        "a host beyond the room, and every prefix that is not a host"
    );
}

#[test]
fn a_host_keeps_its_place_while_listed() {
    let mut slot = holding(&[
        ("192.0.2.1/32", ALL),
        ("192.0.2.2/32", ALL),
        ("192.0.2.3/32", ALL),
    ]);
    // The hash is full: a new rule for a host in it is written there all the same.
    whole(
        &mut slot,
        &[
            ("192.0.2.1/32", PORTS_1),
            ("192.0.2.2/32", ALL),
            ("192.0.2.3/32", ALL),
        ],
    );
    assert_eq!(
        slot.maps.ops,
        [Insert(Exact, net("192.0.2.1/32"), PORTS_1), WholeScreen]
    );
    // Room frees up: the host in the trie stays there, even with a new rule, and a new
    // host takes the room.
    slot.maps.ops.clear();
    whole(
        &mut slot,
        &[
            ("192.0.2.2/32", ALL),
            ("192.0.2.3/32", PORTS_2),
            ("192.0.2.4/32", ALL),
        ],
    );
    assert_eq!(
        slot.maps.ops,
        [
            Remove(Exact, net("192.0.2.1/32")),
            Insert(Trie, net("192.0.2.3/32"), PORTS_2),
            Insert(Exact, net("192.0.2.4/32"), ALL),
            WholeScreen,
        ]
    );
    assert_eq!(in_trie(&slot), [net("192.0.2.3/32")]);
}

#[test]
fn a_host_that_leaves_and_comes_back_is_placed_anew() {
    let mut slot = holding(&[
        ("192.0.2.1/32", ALL),
        ("192.0.2.2/32", ALL),
        ("192.0.2.3/32", ALL),
    ]);
    whole(&mut slot, &[("192.0.2.3/32", ALL)]);
    assert_eq!(in_trie(&slot), [net("192.0.2.3/32")]);
    whole(&mut slot, &[]);
    whole(&mut slot, &[("192.0.2.3/32", ALL)]);
    assert_eq!(in_exact(&slot), [net("192.0.2.3/32")]);
    assert!(in_trie(&slot).is_empty());
}

#[test]
fn the_placement_found_in_the_kernel_at_start_is_kept() {
    let overflowed: Ipv4Net = net("192.0.2.9/32");
    let mut placement = FamilyPlacement::new(ROOM);
    placement.found(overflowed, Trie);
    let maps = FakeMaps {
        trie: BTreeMap::from([(overflowed, ALL)]),
        ..FakeMaps::new()
    };
    let mut slot = FamilySlot::new(maps, 0, vec![(overflowed, ALL)], placement);
    whole(&mut slot, &[("192.0.2.9/32", PORTS_1)]);
    assert_eq!(
        slot.maps.ops,
        [Insert(Trie, overflowed, PORTS_1), WholeScreen],
        "a host read back from the trie is rewritten there, though the hash has room"
    );
}

#[test]
fn in_place_writes_set_screen_bits_first_then_add_longest_first_then_remove_longest_first() {
    let mut slot = holding(&[
        ("10.0.0.0/8", ALL),
        ("10.1.0.0/16", PORTS_1),
        ("10.1.2.3/32", ALL),
        ("10.1.5.0/24", ALL),
    ]);
    let region: Ipv4Net = net("10.0.0.0/8");
    let report = slot
        .write_region(
            &region,
            &list(&[
                ("10.0.0.0/8", PORTS_1),
                ("10.1.2.0/24", ALL),
                ("10.1.2.3/32", PORTS_2),
            ]),
        )
        .unwrap();
    assert_eq!((report.added, report.removed), (3, 2));
    assert_eq!(
        slot.maps.ops,
        [
            Screen(net("10.0.0.0/8")),
            Screen(net("10.1.2.0/24")),
            Screen(net("10.1.2.3/32")),
            Insert(Exact, net("10.1.2.3/32"), PORTS_2),
            Insert(Trie, net("10.1.2.0/24"), ALL),
            Insert(Trie, net("10.0.0.0/8"), PORTS_1),
            Remove(Trie, net("10.1.5.0/24")),
            Remove(Trie, net("10.1.0.0/16")),
        ],
        "a source's longest match never passes through a prefix about to change or gone"
    );
}

#[test]
fn in_place_writes_leave_everything_outside_the_region_alone() {
    let outside = [("192.0.2.0/24", ALL), ("198.51.100.7/32", PORTS_1)];
    let mut slot = holding(&[outside[0], ("203.0.113.0/24", ALL), outside[1]]);
    let region: Ipv4Net = net("203.0.113.0/24");
    slot.write_region(&region, &list(&[("203.0.113.128/25", ALL)]))
        .unwrap();
    assert_eq!(
        slot.maps.ops,
        [
            Screen(net("203.0.113.128/25")),
            Insert(Trie, net("203.0.113.128/25"), ALL),
            Remove(Trie, net("203.0.113.0/24")),
        ]
    );
    assert_eq!(
        slot.held().collect::<Vec<_>>(),
        list(&[outside[0], outside[1], ("203.0.113.128/25", ALL)])
    );
}

#[test]
fn in_place_writes_place_hosts_as_whole_writes_do() {
    let mut slot = holding(&[("192.0.2.1/32", ALL), ("192.0.2.2/32", ALL)]);
    let region: Ipv4Net = net("198.51.100.7/32");
    slot.write_region(&region, &list(&[("198.51.100.7/32", ALL)]))
        .unwrap();
    assert_eq!(in_trie(&slot), [region], "no room left in the hash");
    slot.write_region(&region, &[]).unwrap();
    let region: Ipv4Net = net("192.0.2.1/32");
    slot.write_region(&region, &[]).unwrap();
    let region: Ipv4Net = net("198.51.100.7/32");
    slot.write_region(&region, &list(&[("198.51.100.7/32", ALL)]))
        .unwrap();
    assert_eq!(in_exact(&slot), [net("192.0.2.2/32"), region]);
}

#[test]
fn ipv6_hosts_are_slash_128s_and_placed_the_same_way() {
    let mut slot = empty::<Ipv6Net>();
    let wanted = list(&[
        ("2001:db8::1/128", ALL),
        ("2001:db8::2/128", ALL),
        ("2001:db8::3/128", ALL),
        ("2001:db8:1::/64", ALL),
    ]);
    slot.write_whole(&wanted, &ScreenBits::default()).unwrap();
    assert_eq!(
        in_exact(&slot),
        [net::<Ipv6Net>("2001:db8::1/128"), net("2001:db8::2/128")]
    );
    assert_eq!(
        in_trie(&slot),
        [net::<Ipv6Net>("2001:db8::3/128"), net("2001:db8:1::/64")]
    );
}

#[test]
fn a_refused_write_names_the_prefix_the_slot_and_the_errno() {
    let mut slot = empty::<Ipv4Net>();
    slot.maps.exact_room = 0;
    let error = slot
        .write_whole(&list(&[("192.0.2.1/32", ALL)]), &ScreenBits::default())
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "adding 192.0.2.1/32 to slot 1: No space left on device (ENOSPC)"
    );
}

#[test]
fn each_port_scope_is_numbered_once_after_the_public_ports() {
    let ports = |text: &str| Reach::Ports(vec![text.parse::<PortSpec>().unwrap()]);
    let compiled = CompiledList {
        v4: vec![
            (net("192.0.2.0/24"), ports("22/tcp")),
            (net("198.51.100.0/24"), Reach::All),
            (net("203.0.113.0/24"), ports("22/tcp")),
        ],
        v6: vec![(net("2001:db8::/32"), ports("53/udp"))],
        public_ports: vec!["80/tcp".parse().unwrap()],
    };
    let slot = KernelSlot::from_list(&compiled).unwrap();
    assert_eq!(
        slot.port_sets,
        [
            port_set(&["80/tcp".parse().unwrap()]),
            port_set(&["22/tcp".parse().unwrap()]),
            port_set(&["53/udp".parse().unwrap()]),
        ]
    );
    let rules: Vec<_> = slot.v4.iter().map(|(_, rule)| *rule).collect();
    assert_eq!(rules, [PORTS_1, ALL, PORTS_1]);
    assert_eq!(slot.v6[0].1, PORTS_2);
}

#[test]
fn more_port_scopes_than_the_kernel_holds_are_refused() {
    let scopes = |count: u32| CompiledList {
        v4: (0..count)
            .map(|i| {
                let port = PortSpec {
                    protocol: allowlist_common::IPPROTO_TCP,
                    first: i as u16 + 1,
                    last: i as u16 + 1,
                };
                let net = Ipv4Net::new(std::net::Ipv4Addr::from(i << 8), 24).unwrap();
                (net, Reach::Ports(vec![port]))
            })
            .collect(),
        ..CompiledList::default()
    };
    let fits = KernelSlot::from_list(&scopes(MAX_PORT_SETS - 1)).unwrap();
    assert_eq!(fits.port_sets.len(), MAX_PORT_SETS as usize);
    let error = KernelSlot::from_list(&scopes(MAX_PORT_SETS)).unwrap_err();
    assert!(error.to_string().contains("distinct port sets"), "{error}");
}

#[test]
fn placement_forgets_a_host_it_no_longer_holds() {
    let mut placement = FamilyPlacement::<Ipv4Net>::new(1);
    assert_eq!(placement.place(net("192.0.2.1/32"), false), Exact);
    assert_eq!(placement.place(net("192.0.2.2/32"), false), Trie);
    assert_eq!(placement.take(net("192.0.2.2/32")), Trie);
    assert_eq!(placement.take(net("192.0.2.1/32")), Exact);
    assert_eq!(placement, FamilyPlacement::new(1));
}

/// A slot that writes any change of at least one element in batches of `chunk`.
fn batching(slot: &mut FamilySlot<Ipv4Net, FakeMaps<Ipv4Net>>, chunk: usize) {
    slot.batching = Batching {
        from: 1,
        chunk,
        ..Batching::default()
    };
}

#[test]
fn a_mirror_entry_takes_12_bytes_for_ipv4_and_24_for_ipv6() {
    assert_eq!(std::mem::size_of::<Held<Ipv4Net>>(), 12);
    assert_eq!(std::mem::size_of::<Held<Ipv6Net>>(), 24);
}

#[test]
fn a_rule_read_back_with_a_port_set_no_list_has_is_rewritten() {
    let host: Ipv4Net = net("192.0.2.1/32");
    let foreign = AllowRule {
        flags: RULE_PORTS,
        port_set: 70_000 + 1,
    };
    let mut slot = FamilySlot::new(
        FakeMaps::new(),
        0,
        vec![(host, foreign)],
        FamilyPlacement::new(ROOM),
    );
    let unlike_any_list = AllowRule {
        port_set: u32::from(u16::MAX),
        ..foreign
    };
    assert_eq!(slot.held().collect::<Vec<_>>(), [(host, unlike_any_list)]);
    whole(&mut slot, &[("192.0.2.1/32", PORTS_1)]);
    assert_eq!(slot.maps.ops, [Insert(Exact, host, PORTS_1), WholeScreen]);
}

#[test]
fn a_large_whole_write_goes_in_batches_per_map_removals_first() {
    let mut slot = holding(&[
        ("10.0.0.0/8", ALL),
        ("192.0.2.1/32", ALL),
        ("192.0.2.2/32", ALL),
    ]);
    batching(&mut slot, 2);
    let wanted = list(&[
        ("172.16.0.0/12", PORTS_1),
        ("198.51.100.1/32", ALL),
        ("198.51.100.2/32", ALL),
        ("198.51.100.3/32", ALL),
    ]);
    let report = slot.write_whole(&wanted, &ScreenBits::default()).unwrap();
    assert_eq!((report.added, report.removed), (4, 3));
    assert_eq!(
        slot.maps.ops,
        [
            // A full buffer sends every map's, the exact-host hash's first.
            RemoveBatch(Exact, vec![net("192.0.2.1/32"), net("192.0.2.2/32")]),
            RemoveBatch(Trie, vec![net("10.0.0.0/8")]),
            InsertBatch(
                Exact,
                vec![(net("198.51.100.1/32"), ALL), (net("198.51.100.2/32"), ALL)]
            ),
            InsertBatch(Trie, vec![(net("172.16.0.0/12"), PORTS_1)]),
            // The hash is full: the third host overflows into the trie.
            InsertBatch(Trie, vec![(net("198.51.100.3/32"), ALL)]),
            WholeScreen,
        ]
    );
    let mut in_maps: Vec<_> = slot.maps.exact.iter().chain(&slot.maps.trie).collect();
    in_maps.sort_by_key(|(net, _)| **net);
    let wanted: Vec<_> = wanted.iter().map(|(net, rule)| (net, rule)).collect();
    assert_eq!(in_maps, wanted);
}

#[test]
fn no_batch_call_holds_more_than_a_chunk() {
    let mut slot = empty::<Ipv4Net>();
    batching(&mut slot, 2);
    let wanted = list(&[
        ("10.0.0.0/8", ALL),
        ("172.16.0.0/12", ALL),
        ("192.0.2.0/24", ALL),
        ("198.51.100.0/24", ALL),
        ("203.0.113.0/24", ALL),
    ]);
    slot.write_whole(&wanted, &ScreenBits::default()).unwrap();
    let sizes: Vec<usize> = slot
        .maps
        .ops
        .iter()
        .filter_map(|op| match op {
            InsertBatch(Trie, entries) => Some(entries.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(slot.maps.trie.len(), 5);
}

#[test]
fn a_small_change_is_written_one_element_at_a_time() {
    let mut slot = holding(&[("10.0.0.0/8", ALL)]);
    slot.batching.from = 3;
    whole(&mut slot, &[("10.0.0.0/8", ALL), ("192.0.2.0/24", ALL)]);
    assert_eq!(
        slot.maps.ops,
        [Insert(Trie, net("192.0.2.0/24"), ALL), WholeScreen],
        "one change, under the batching threshold"
    );
}

#[test]
fn a_kernel_without_batch_calls_gets_one_write_per_element_from_then_on() {
    let mut slot = holding(&[("10.0.0.0/8", ALL), ("192.0.2.1/32", ALL)]);
    batching(&mut slot, 64);
    slot.maps.no_batches = true;
    whole(
        &mut slot,
        &[("172.16.0.0/12", ALL), ("198.51.100.1/32", ALL)],
    );
    assert_eq!(
        slot.maps.ops,
        [
            Remove(Exact, net("192.0.2.1/32")),
            Remove(Trie, net("10.0.0.0/8")),
            Insert(Exact, net("198.51.100.1/32"), ALL),
            Insert(Trie, net("172.16.0.0/12"), ALL),
            WholeScreen,
        ]
    );
    assert!(slot.batching.refused_exact && slot.batching.refused_trie);
    assert_eq!(in_exact(&slot), [net("198.51.100.1/32")]);
    assert_eq!(in_trie(&slot), [net("172.16.0.0/12")]);
}

#[test]
fn a_batch_stopped_part_way_goes_on_from_the_element_it_stopped_at() {
    let mut slot = empty::<Ipv4Net>();
    batching(&mut slot, 64);
    slot.maps.stop_batch_at = Some(net("172.16.0.0/12"));
    let wanted = list(&[
        ("10.0.0.0/8", ALL),
        ("172.16.0.0/12", ALL),
        ("192.0.2.0/24", ALL),
    ]);
    slot.write_whole(&wanted, &ScreenBits::default()).unwrap();
    assert_eq!(
        slot.maps.ops,
        [
            InsertBatch(Trie, wanted.clone()),
            // Written alone, the element the batch stopped at goes in (EAGAIN passed).
            Insert(Trie, net("172.16.0.0/12"), ALL),
            InsertBatch(Trie, vec![(net("192.0.2.0/24"), ALL)]),
            WholeScreen,
        ]
    );
    assert_eq!(
        in_trie(&slot),
        wanted.iter().map(|(n, _)| *n).collect::<Vec<_>>()
    );
}

#[test]
fn an_element_a_batch_stopped_at_is_reported_as_a_single_write_is() {
    let mut slot = empty::<Ipv4Net>();
    batching(&mut slot, 64);
    slot.maps.exact_room = 1;
    let error = slot
        .write_whole(
            &list(&[("192.0.2.1/32", ALL), ("192.0.2.2/32", ALL)]),
            &ScreenBits::default(),
        )
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "adding 192.0.2.2/32 to slot 1: No space left on device (ENOSPC)"
    );
    assert_eq!(
        in_exact(&slot),
        [net("192.0.2.1/32")],
        "the batch went in up to it"
    );
}

#[test]
fn after_a_write_refused_part_way_writing_the_previous_list_takes_out_what_it_had_added() {
    for batched in [true, false] {
        let previous = [("10.0.0.0/8", ALL), ("192.0.2.1/32", ALL)];
        let mut slot = holding(&previous);
        if batched {
            batching(&mut slot, 64);
        }
        // The second new host finds the exact-host hash full: ENOSPC.
        slot.maps.exact_room = 1;
        let refused = list(&[
            ("172.16.0.0/12", ALL),
            ("198.51.100.1/32", ALL),
            ("198.51.100.2/32", ALL),
            ("198.51.100.3/32", ALL),
        ]);
        slot.write_whole(&refused, &ScreenBits::default())
            .unwrap_err();
        assert!(
            !slot.maps.trie.is_empty() || !slot.maps.exact.is_empty(),
            "the refused list went in part of the way"
        );
        // The rollback: the slot is written with the list it held before.
        whole(&mut slot, &previous);
        let mut in_maps: Vec<_> = slot.maps.exact.iter().chain(&slot.maps.trie).collect();
        in_maps.sort_by_key(|(net, _)| **net);
        let previous = list::<Ipv4Net>(&previous);
        assert_eq!(
            in_maps,
            previous.iter().map(|(n, r)| (n, r)).collect::<Vec<_>>(),
            "nothing of the refused list stays (batched: {batched})"
        );
        assert_eq!(slot.held().collect::<Vec<_>>(), previous);
    }
}

#[test]
fn a_large_in_place_change_in_batches_still_writes_longest_first_across_maps() {
    let mut slot = holding(&[("10.0.0.0/8", ALL), ("10.1.0.0/16", ALL)]);
    batching(&mut slot, 64);
    let region: Ipv4Net = net("10.0.0.0/8");
    slot.write_region(
        &region,
        &list(&[
            ("10.0.0.0/8", PORTS_1),
            ("10.1.2.0/24", ALL),
            ("10.1.2.3/32", ALL),
        ]),
    )
    .unwrap();
    assert_eq!(
        slot.maps.ops,
        [
            Screen(net("10.0.0.0/8")),
            Screen(net("10.1.2.0/24")),
            Screen(net("10.1.2.3/32")),
            InsertBatch(Exact, vec![(net("10.1.2.3/32"), ALL)]),
            InsertBatch(
                Trie,
                vec![(net("10.1.2.0/24"), ALL), (net("10.0.0.0/8"), PORTS_1)]
            ),
            RemoveBatch(Trie, vec![net("10.1.0.0/16")]),
        ]
    );
}

proptest::proptest! {
    /// Whatever the batching (threshold, chunk, kernel support, a batch stopped part
    /// way), a whole write leaves the maps holding exactly the list, each host in one map.
    #[test]
    fn batched_or_not_a_whole_write_leaves_exactly_the_list(
        lists in proptest::collection::vec(
            proptest::collection::btree_map((0u8..24, proptest::sample::select(vec![24u8, 32])), 0u8..3, 0..24),
            1..4,
        ),
        from in 1usize..8,
        chunk in 1usize..5,
        no_batches: bool,
        stop_at in proptest::option::of(0u8..24),
    ) {
        let mut slot = empty::<Ipv4Net>();
        slot.maps.exact_room = usize::MAX;
        slot.batching = Batching { from, chunk, ..Batching::default() };
        slot.maps.no_batches = no_batches;
        for entries in lists {
            let wanted: Vec<(Ipv4Net, AllowRule)> = entries
                .iter()
                .map(|(&(host, len), &rule)| {
                    let net = Ipv4Net::new(std::net::Ipv4Addr::new(192, 0, host, 1), len).unwrap().trunc();
                    (net, [ALL, PORTS_1, PORTS_2][rule as usize])
                })
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect();
            slot.maps.stop_batch_at = stop_at.and_then(|i| wanted.get(i as usize).map(|(n, _)| *n));
            slot.write_whole(&wanted, &ScreenBits::default()).unwrap();
            let mut in_maps: Vec<(Ipv4Net, AllowRule)> = slot
                .maps
                .exact
                .iter()
                .chain(&slot.maps.trie)
                .map(|(net, rule)| (*net, *rule))
                .collect();
            in_maps.sort_by_key(|(net, _)| *net);
            proptest::prop_assert_eq!(&in_maps, &wanted);
            proptest::prop_assert_eq!(slot.held().collect::<Vec<_>>(), wanted);
        }
    }
}
