//! What differs between IPv4 and IPv6 in the kernel's lookup maps, and nothing else: the
//! code that diffs, places, writes and reads back a family's prefixes is written once,
//! generic over [`Prefix`].

use std::net::{Ipv4Addr, Ipv6Addr};

use allowlist_common::{
    Ipv4Octets, Ipv6Octets, MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_EXACT_V4, MAP_EXACT_V6, MAP_SCREEN_V4,
    MAP_SCREEN_V6, MAX_EXACT_V4, MAX_EXACT_V6, SLOTS,
};
use allowlist_common::{MAP_COARSE_SCREEN_V4, MAP_COARSE_SCREEN_V6};
use aya::maps::lpm_trie::Key;
use ipnet::{Ipv4Net, Ipv6Net, PrefixLenError};

use super::maps::{KernelFamily, Slot};
use crate::screen::MappedScreen;

pub(super) trait Prefix: Ord + Copy + std::fmt::Debug + std::fmt::Display {
    /// The network address as the family's maps key it.
    type Octets: aya::Pod;
    /// Capacity of the family's exact-host hash.
    const EXACT_CAPACITY: u32;
    /// The family's maps, by slot, in the order the program consults them.
    const SCREEN_MAPS: [&'static str; SLOTS];
    /// The coarse screen in front of each slot's screen (written with it).
    const COARSE_SCREEN_MAPS: [&'static str; SLOTS];
    const EXACT_MAPS: [&'static str; SLOTS];
    const TRIE_MAPS: [&'static str; SLOTS];

    fn is_host(&self) -> bool;
    fn len(&self) -> u8;
    /// Whether `other` lies inside this prefix.
    fn covers(&self, other: &Self) -> bool;
    fn octets(&self) -> Self::Octets;
    fn host(octets: Self::Octets) -> Self;
    fn from_key(key: &Key<Self::Octets>) -> Result<Self, PrefixLenError>;
    fn key(&self) -> Key<Self::Octets> {
        Key::new(u32::from(self.len()), self.octets())
    }
    /// Sets this prefix's bits in `screen`, leaving the others.
    fn screen_in(&self, screen: &MappedScreen);
    /// This family's part of a slot.
    fn in_slot(slot: &mut Slot) -> &mut KernelFamily<Self>;
}

impl Prefix for Ipv4Net {
    type Octets = Ipv4Octets;
    const EXACT_CAPACITY: u32 = MAX_EXACT_V4;
    const SCREEN_MAPS: [&'static str; SLOTS] = MAP_SCREEN_V4;
    const COARSE_SCREEN_MAPS: [&'static str; SLOTS] = MAP_COARSE_SCREEN_V4;
    const EXACT_MAPS: [&'static str; SLOTS] = MAP_EXACT_V4;
    const TRIE_MAPS: [&'static str; SLOTS] = MAP_ALLOW_V4;

    fn is_host(&self) -> bool {
        self.prefix_len() == 32
    }
    fn len(&self) -> u8 {
        self.prefix_len()
    }
    fn covers(&self, other: &Self) -> bool {
        self.contains(other)
    }
    fn octets(&self) -> Ipv4Octets {
        self.network().octets()
    }
    fn host(octets: Ipv4Octets) -> Self {
        Ipv4Net::from(Ipv4Addr::from(octets))
    }
    fn from_key(key: &Key<Ipv4Octets>) -> Result<Self, PrefixLenError> {
        Ipv4Net::new(Ipv4Addr::from(key.data()), key.prefix_len() as u8)
    }
    fn screen_in(&self, screen: &MappedScreen) {
        screen.set_v4(self);
    }
    fn in_slot(slot: &mut Slot) -> &mut KernelFamily<Self> {
        &mut slot.v4
    }
}

impl Prefix for Ipv6Net {
    type Octets = Ipv6Octets;
    const EXACT_CAPACITY: u32 = MAX_EXACT_V6;
    const SCREEN_MAPS: [&'static str; SLOTS] = MAP_SCREEN_V6;
    const COARSE_SCREEN_MAPS: [&'static str; SLOTS] = MAP_COARSE_SCREEN_V6;
    const EXACT_MAPS: [&'static str; SLOTS] = MAP_EXACT_V6;
    const TRIE_MAPS: [&'static str; SLOTS] = MAP_ALLOW_V6;

    fn is_host(&self) -> bool {
        self.prefix_len() == 128
    }
    fn len(&self) -> u8 {
        self.prefix_len()
    }
    fn covers(&self, other: &Self) -> bool {
        self.contains(other)
    }
    fn octets(&self) -> Ipv6Octets {
        self.network().octets()
    }
    fn host(octets: Ipv6Octets) -> Self {
        Ipv6Net::from(Ipv6Addr::from(octets))
    }
    fn from_key(key: &Key<Ipv6Octets>) -> Result<Self, PrefixLenError> {
        Ipv6Net::new(Ipv6Addr::from(key.data()), key.prefix_len() as u8)
    }
    fn screen_in(&self, screen: &MappedScreen) {
        screen.set_v6(self);
    }
    fn in_slot(slot: &mut Slot) -> &mut KernelFamily<Self> {
        &mut slot.v6
    }
}
