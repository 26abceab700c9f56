//! The remote filter in front of the flow table (`allowlist_common::MAP_REMOTES`): which
//! remote addresses the host may have flows with, so the XDP program skips the flow
//! lookup for sources it never talked to.
//!
//! Every writer of the flow table sets a flow's bit in both generations first (the egress
//! program, and here [`RemoteFilter::mark`] for flows the daemon seeds or carries over).
//! Bits of ended flows are dropped by a rebuild ([`RemoteFilter::clear`], then
//! [`RemoteFilter::fill`] from the live flows) of the generation not in use; the caller
//! then switches the program to it.

use std::sync::atomic::Ordering;

use allowlist_common::{
    remote_filter_bit, FlowKey, FlowState, ICMP_IDLE_NS, IPPROTO_TCP, IPPROTO_UDP,
    REMOTE_FILTER_WORDS, TCP_IDLE_NS, UDP_IDLE_NS,
};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};

use super::error::{io_error, kernel_error, Result};
use super::FilterError;
use crate::screen::MappedBitmap;

pub(super) struct RemoteFilter {
    bitmap: MappedBitmap,
}

/// What a rebuild found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteFilterRebuild {
    /// Flows still live, whose remotes the new generation holds.
    pub live_flows: usize,
    /// Flows past their idle time, left out.
    pub idle_flows: usize,
}

impl RemoteFilter {
    pub fn map(map: Map) -> Result<RemoteFilter> {
        let name = allowlist_common::MAP_REMOTES;
        let Map::Array(data) = map else {
            return Err(FilterError::Kernel {
                context: format!("opening {name}"),
                message: "not an array map".into(),
            });
        };
        let bitmap = MappedBitmap::map(data, 2 * REMOTE_FILTER_WORDS as usize)
            .map_err(io_error(format!("mapping {name} into memory")))?;
        Ok(RemoteFilter { bitmap })
    }

    /// Sets the bit of each flow's remote in both generations.
    pub fn mark<'a>(&self, flows: impl IntoIterator<Item = &'a FlowKey>) {
        for flow in flows {
            for generation in 0..2 {
                self.set(generation, remote_filter_bit(&flow.remote));
            }
        }
    }

    /// Clears `generation` (the one the program does not read), before
    /// [`RemoteFilter::fill`]. Between the two, the caller waits out the program runs in
    /// flight: an egress run that set a bit before the clear has then recorded its flow,
    /// so the fill finds it; any later run sets its bit itself.
    pub fn clear(&self, generation: u32) {
        let start = (generation as usize & 1) * REMOTE_FILTER_WORDS as usize;
        let words = &self.bitmap.words()[start..start + REMOTE_FILTER_WORDS as usize];
        for word in words {
            word.store(0, Ordering::Relaxed);
        }
    }

    /// Sets in `generation` the remotes of the flows that are live at `now_ns` (boot
    /// time).
    pub fn fill(
        &self,
        generation: u32,
        flows: &BpfHashMap<MapData, FlowKey, FlowState>,
        now_ns: u64,
    ) -> Result<RemoteFilterRebuild> {
        let mut found = RemoteFilterRebuild::default();
        for entry in flows.iter() {
            let (key, state) = entry.map_err(kernel_error("reading the flow table"))?;
            // An idle flow that the host uses again is marked by the egress program.
            if now_ns.saturating_sub(state.last_seen_ns) > idle_time_ns(key.protocol) {
                found.idle_flows += 1;
                continue;
            }
            self.set(generation, remote_filter_bit(&key.remote));
            found.live_flows += 1;
        }
        Ok(found)
    }

    fn set(&self, generation: u32, bit: u32) {
        let word = (generation as usize & 1) * REMOTE_FILTER_WORDS as usize + bit as usize / 64;
        self.bitmap.words()[word].fetch_or(1 << (bit % 64), Ordering::Relaxed);
    }
}

/// How long a flow admits replies after the host last sent on it (as the program judges).
fn idle_time_ns(protocol: u8) -> u64 {
    match protocol {
        IPPROTO_TCP => TCP_IDLE_NS,
        IPPROTO_UDP => UDP_IDLE_NS,
        _ => ICMP_IDLE_NS,
    }
}
