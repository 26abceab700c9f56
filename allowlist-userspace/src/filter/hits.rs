//! Hits per entry: each listed prefix's rule carries a hit counter (an index into
//! `ENTRY_HITS`), the same in both slots and for as long as the prefix is listed, so its
//! counts survive list swaps; a daemon taking over reads the counters back from the
//! rules, so they survive restarts too.
//!
//! Counters are given out up to [`MAX_COUNTED_ENTRIES`] − 1; prefixes beyond that get
//! counter 0, which counts nothing. A counter given out again is zeroed first.

use std::collections::{BTreeMap, HashMap};

use allowlist_common::{AllowRule, EntryHits, MAP_ENTRY_HITS, MAX_COUNTED_ENTRIES};
use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use ipnet::IpNet;

use super::error::{kernel_error, Result};

/// What one listed prefix admitted, folded over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixHits {
    pub packets: u64,
    pub bytes: u64,
    /// Unix seconds of the last packet, if any.
    pub last_hit: Option<u64>,
}

/// Which counter each listed prefix has.
#[derive(Debug, Default)]
pub(super) struct HitCounters {
    of: HashMap<IpNet, u32>,
    /// Counters given back, to give out again (after zeroing).
    free: Vec<u32>,
    /// The lowest counter never given out.
    next: u32,
}

impl HitCounters {
    /// The counters the rules in the kernel carry now.
    pub fn read_back(held: impl IntoIterator<Item = (IpNet, AllowRule)>) -> Self {
        let mut of = HashMap::new();
        for (net, rule) in held {
            let counter = rule.hit_counter();
            if counter != 0 && counter < MAX_COUNTED_ENTRIES {
                of.insert(net, counter);
            }
        }
        let next = of.values().max().map_or(1, |max| max + 1);
        let taken: std::collections::HashSet<u32> = of.values().copied().collect();
        let free = (1..next).filter(|id| !taken.contains(id)).collect();
        HitCounters { of, free, next }
    }

    /// Gives each rule its prefix's counter, a new one (zeroed in `hits`) where the
    /// prefix has none yet.
    pub fn stamp<P: Copy + Into<IpNet>>(
        &mut self,
        rules: &mut [(P, AllowRule)],
        hits: &mut PerCpuArray<MapData, EntryHits>,
    ) -> Result<()> {
        for (net, rule) in rules.iter_mut() {
            let net: IpNet = (*net).into();
            let counter = match self.of.get(&net) {
                Some(counter) => *counter,
                None => {
                    let counter = self.give_out();
                    if counter != 0 {
                        zero(hits, counter)?;
                        self.of.insert(net, counter);
                    }
                    counter
                }
            };
            *rule = rule.with_hit_counter(counter);
        }
        Ok(())
    }

    fn give_out(&mut self) -> u32 {
        if let Some(counter) = self.free.pop() {
            return counter;
        }
        if self.next < MAX_COUNTED_ENTRIES {
            self.next += 1;
            return self.next - 1;
        }
        0
    }

    /// Gives back the counters of prefixes no longer listed (after a whole apply).
    pub fn keep_only(&mut self, listed: impl Fn(&IpNet) -> bool) {
        let gone: Vec<IpNet> = self.of.keys().filter(|net| !listed(net)).copied().collect();
        for net in gone {
            self.release(net);
        }
    }

    /// Gives back `net`'s counter, if it has one.
    pub fn release(&mut self, net: IpNet) {
        if let Some(counter) = self.of.remove(&net) {
            self.free.push(counter);
        }
    }

    /// Every listed prefix that has a counter, with what it admitted.
    pub fn read(
        &self,
        hits: &PerCpuArray<MapData, EntryHits>,
        wall_clock_of: impl Fn(u64) -> u64,
    ) -> Result<BTreeMap<IpNet, PrefixHits>> {
        let mut all = BTreeMap::new();
        for (net, counter) in &self.of {
            let per_cpu = hits
                .get(counter, 0)
                .map_err(kernel_error(format!("reading {MAP_ENTRY_HITS}")))?;
            let folded = per_cpu
                .iter()
                .fold(EntryHits::default(), |sum, cpu| EntryHits {
                    packets: sum.packets.saturating_add(cpu.packets),
                    bytes: sum.bytes.saturating_add(cpu.bytes),
                    last_hit_jiffies: sum.last_hit_jiffies.max(cpu.last_hit_jiffies),
                });
            all.insert(
                *net,
                PrefixHits {
                    packets: folded.packets,
                    bytes: folded.bytes,
                    last_hit: (folded.packets > 0).then(|| wall_clock_of(folded.last_hit_jiffies)),
                },
            );
        }
        Ok(all)
    }
}

fn zero(hits: &mut PerCpuArray<MapData, EntryHits>, counter: u32) -> Result<()> {
    let cpus = aya::util::nr_cpus()
        .map_err(|(_, error)| error)
        .map_err(kernel_error("counting CPUs"))?;
    let values = PerCpuValues::try_from(vec![EntryHits::default(); cpus])
        .map_err(kernel_error(format!("zeroing {MAP_ENTRY_HITS}")))?;
    hits.set(counter, values, 0)
        .map_err(kernel_error(format!("zeroing {MAP_ENTRY_HITS}[{counter}]")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_read_back_are_kept_and_the_gaps_given_out_first() {
        let net = |text: &str| text.parse::<IpNet>().unwrap();
        let rule = |counter| AllowRule::ALLOW_ALL.with_hit_counter(counter);
        let mut counters =
            HitCounters::read_back([(net("10.0.0.0/8"), rule(1)), (net("192.0.2.0/24"), rule(3))]);
        assert_eq!(counters.of.get(&net("192.0.2.0/24")), Some(&3));
        assert_eq!(counters.give_out(), 2);
        assert_eq!(counters.give_out(), 4);
        counters.release(net("10.0.0.0/8"));
        assert_eq!(counters.give_out(), 1);
        assert_eq!(rule(5).hit_counter(), 5);
        assert_eq!(rule(5).flags & 0xffff, AllowRule::ALLOW_ALL.flags);
    }
}
