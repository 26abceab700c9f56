//! The real XDP program loaded on its own, for `BPF_PROG_TEST_RUN`: packet-level tests
//! hand it frames and read its verdict and counters without any interface or traffic.
//!
//! Each [`TestFilter`] pins its maps under a unique `/sys/fs/bpf/alpkt-<pid>-<n>`
//! (removed on drop, also when the test fails). Needs root (BPF, bpffs).

use std::{
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

use allowlist_common::{Counter, Reason};
use allowlist_userspace::{
    compile::CompiledList,
    config::Mode,
    filter::{self, Counters, Filter, Pins},
    state::PendingConfirm,
};
use aya::{
    maps::{Map, MapData},
    programs::{TestRun, TestRunOptions},
};
use ipnet::IpNet;

use Verdict::{Drop, Pass};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

/// The real program with private pinned maps; unpins everything on drop.
pub struct TestFilter {
    filter: Option<Filter>,
    pins: Pins,
}

impl TestFilter {
    /// A freshly loaded program: empty lists, mode off (the control record's zero).
    pub fn open() -> TestFilter {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let root = PathBuf::from(format!(
            "/sys/fs/bpf/alpkt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let pins = Pins::new(root);
        // The guard exists before anything is pinned, so a failed open is cleaned up too.
        let mut guard = TestFilter {
            filter: None,
            pins: pins.clone(),
        };
        let opened = Filter::open(pins, false)
            .unwrap_or_else(|error| panic!("loading the XDP program: {error}"));
        guard.filter = Some(opened);
        guard
    }

    pub fn filter(&mut self) -> &mut Filter {
        self.filter.as_mut().expect("filter is open")
    }

    pub fn apply(&mut self, networks: &[&str]) {
        let networks = networks.iter().map(|n| {
            n.parse::<IpNet>()
                .unwrap_or_else(|error| panic!("{n}: {error}"))
        });
        let (list, _) = CompiledList::compile(networks);
        self.filter()
            .apply(&list)
            .unwrap_or_else(|error| panic!("applying {list:?}: {error}"));
    }

    pub fn set_mode(&mut self, mode: Mode) {
        self.filter()
            .set_mode(mode, None)
            .unwrap_or_else(|error| panic!("setting mode {mode}: {error}"));
    }

    /// Sets `mode` as `activate --confirm` does: the program reverts to `revert_to` by
    /// itself once `deadline` (Unix seconds) passes.
    pub fn set_mode_with_revert(&mut self, mode: Mode, revert_to: Mode, deadline: u64) {
        let pending = PendingConfirm {
            revert_to,
            deadline,
        };
        self.filter()
            .set_mode(mode, Some(pending))
            .unwrap_or_else(|error| panic!("setting mode {mode} until {deadline}: {error}"));
    }

    /// Sets the control record's feature bits (`FEATURE_*`); a fresh program has none.
    pub fn set_features(&mut self, features: u32) {
        self.filter()
            .set_features(features)
            .unwrap_or_else(|error| panic!("setting features {features:#x}: {error}"));
    }

    pub fn counters(&mut self) -> Counters {
        self.filter()
            .counters()
            .unwrap_or_else(|error| panic!("reading counters: {error}"))
    }

    /// One of the filter's maps, opened through its pin as another process would.
    pub fn pinned_map(&self, name: &str) -> Map {
        let path = self.pins.maps().join(name);
        let data = MapData::from_pin(&path)
            .unwrap_or_else(|error| panic!("opening {}: {error}", path.display()));
        Map::from_map_data(data).unwrap_or_else(|error| panic!("{name}: {error}"))
    }

    /// Runs the program once on `frame` and returns its verdict.
    ///
    /// `BPF_PROG_TEST_RUN` refuses input shorter than an Ethernet header (Linux 6.18
    /// checks `data_size_in - metadata >= ETH_HLEN`), so a shorter frame is handed in
    /// padded to 14 bytes with `xdp_md.data_end = frame.len()`: the kernel keeps only
    /// `frame` in the linear part (`data..data_end`, all the program reads and counts)
    /// and puts the padding in a fragment the program never sees.
    pub fn run(&mut self, frame: &[u8]) -> Verdict {
        let mut data = frame.to_vec();
        let mut ctx = Vec::new();
        let options = if frame.len() < 14 {
            data.resize(14, 0xee);
            // struct xdp_md { data, data_end, data_meta, ingress_ifindex,
            //                 rx_queue_index, egress_ifindex }
            for field in [0, frame.len() as u32, 0, 0, 0, 0] {
                ctx.extend_from_slice(&field.to_ne_bytes());
            }
            TestRunOptions {
                data_in: Some(&data),
                ctx_in: Some(&ctx),
                ..Default::default()
            }
        } else {
            TestRunOptions {
                data_in: Some(frame),
                ..Default::default()
            }
        };
        let result = self
            .filter()
            .program()
            .unwrap_or_else(|error| panic!("the loaded program: {error}"))
            .test_run(options)
            .unwrap_or_else(|error| {
                panic!(
                    "BPF_PROG_TEST_RUN on a {}-byte frame: {error:?}",
                    frame.len()
                )
            });
        match result.return_value {
            XDP_PASS => Pass,
            XDP_DROP => Drop,
            other => panic!("the program returned {other}, neither XDP_PASS nor XDP_DROP"),
        }
    }

    /// Runs the program once on `frame`: its verdict and the reason it was counted under.
    /// Fails unless exactly one reason counted it, as one packet of `frame.len()` bytes.
    pub fn judge(&mut self, frame: &[u8]) -> (Verdict, Reason) {
        self.try_judge(frame)
            .unwrap_or_else(|problem| panic!("{problem}"))
    }

    /// As [`TestFilter::judge`], with the problem returned rather than raised.
    pub fn try_judge(&mut self, frame: &[u8]) -> Result<(Verdict, Reason), String> {
        let before = self.counters();
        let verdict = self.run(frame);
        let after = self.counters();
        let changed: Vec<(Reason, Counter)> = Reason::ALL
            .into_iter()
            .filter_map(|reason| {
                let delta = delta(&before, &after, reason);
                (delta != Counter::default()).then_some((reason, delta))
            })
            .collect();
        let expected = Counter {
            packets: 1,
            bytes: frame.len() as u64,
        };
        match changed.as_slice() {
            [(reason, delta)] if *delta == expected => Ok((verdict, *reason)),
            _ => Err(format!(
                "a {}-byte frame must be counted once under exactly one reason as {expected:?}; \
                 counters changed: {changed:?} (verdict {verdict:?}, frame {frame:02x?})",
                frame.len()
            )),
        }
    }
}

impl std::ops::Drop for TestFilter {
    fn drop(&mut self) {
        // Close our handles first, then remove every pin (and so the maps).
        self.filter.take();
        if let Err(error) = filter::uninstall(&self.pins) {
            eprintln!("removing {}: {error}", self.pins.root().display());
        }
    }
}

pub fn delta(before: &Counters, after: &Counters, reason: Reason) -> Counter {
    let get = |counters: &Counters| {
        counters
            .get(reason.name())
            .copied()
            .unwrap_or_else(|| panic!("counters() has no {}", reason.name()))
    };
    let (before, after) = (get(before), get(after));
    Counter {
        packets: after.packets - before.packets,
        bytes: after.bytes - before.bytes,
    }
}
