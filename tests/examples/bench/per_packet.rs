//! 1. Per-packet cost under `BPF_PROG_TEST_RUN`: the kernel runs the program `repeat`
//!    times on one frame and reports the mean time per run. A listed and an unlisted
//!    source, for each list shape and size, against a no-op XDP program as the floor.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use allowlist_tests::frames::{TEST_DST_MAC, TEST_SRC_MAC};
use anyhow::{ensure, Result};

use crate::frames;
use crate::kernel::{time_per_run, Helpers, PinnedFilter, DEFAULT_FEATURES, XDP_DROP, XDP_PASS};
use crate::lists::{self, Shape};
use crate::results::Results;
use crate::Options;

fn frame(source: IpAddr) -> Vec<u8> {
    let destination: IpAddr = match source {
        IpAddr::V4(_) => Ipv4Addr::new(198, 18, 0, 1).into(),
        IpAddr::V6(_) => "2001:db8::1".parse::<Ipv6Addr>().unwrap().into(),
    };
    frames::udp(TEST_DST_MAC, TEST_SRC_MAC, source, destination)
}

pub fn run(options: &Options, results: &mut Results) -> Result<()> {
    let repeat = options.repeat;
    results.note("per_packet.repeat", &repeat.to_string())?;

    let mut helpers = Helpers::load()?;
    let noop_v4 = frame(Ipv4Addr::new(203, 0, 113, 1).into());
    let mut samples = Vec::new();
    for _ in 0..options.runs {
        let (verdict, took) = time_per_run(helpers.program("noop")?, &noop_v4, repeat)?;
        ensure!(verdict == XDP_PASS, "noop returned {verdict}");
        samples.push(took.as_nanos() as f64);
    }
    results.figure("per_packet.noop", "ns", &samples)?;

    let largest = *options.per_packet_sizes.iter().max().unwrap_or(&0);
    // (shape, entries, listed or unlisted) -> one sample per run, for the ratios below.
    let mut all: BTreeMap<(&str, usize, &str), Vec<f64>> = BTreeMap::new();
    for shape in Shape::ALL {
        for &entries in &options.per_packet_sizes {
            let bench = lists::build(shape, entries, options.seed);
            let mut filter = PinnedFilter::open(&format!("pp-{}-{entries}", shape.key()))?;
            filter.enforce(&bench.list, DEFAULT_FEATURES)?;
            let mut cases = vec![
                ("listed", bench.listed, XDP_PASS, DEFAULT_FEATURES),
                ("unlisted", bench.unlisted, XDP_DROP, DEFAULT_FEATURES),
            ];
            if entries == largest {
                // What the return-traffic flow lookup adds to an unlisted source.
                cases.push(("unlisted_no_return_traffic", bench.unlisted, XDP_DROP, 0));
                // What recording dropped sources (`allowlistctl top`) adds to a drop:
                // the one LRU update of the drop path (the source's entry exists after
                // the first run, as for a source that keeps sending).
                cases.push((
                    "unlisted_recording_drops",
                    bench.unlisted,
                    XDP_DROP,
                    DEFAULT_FEATURES | allowlist_common::FEATURE_RECORD_DROPS,
                ));
            }
            for (which, source, expected, features) in cases {
                filter.filter().set_features(features)?;
                let frame = frame(source);
                let program = filter.filter().program()?;
                // One unmeasured pass warms caches and checks the verdict.
                let (verdict, _) = time_per_run(program, &frame, 1000)?;
                ensure!(
                    verdict == expected,
                    "{} {entries}: {which} source {source} got verdict {verdict}, expected {expected}",
                    shape.key()
                );
                let mut samples = Vec::new();
                for _ in 0..options.runs {
                    crate::check_interrupted()?;
                    let (_, took) = time_per_run(program, &frame, repeat)?;
                    samples.push(took.as_nanos() as f64);
                }
                results.figure(
                    &format!("per_packet.{}.{entries}.{which}", shape.key()),
                    "ns",
                    &samples,
                )?;
                all.insert((shape.key(), entries, which), samples);
            }
        }
    }

    // How the cost grows with the list: the largest size against 100 entries, run by run.
    let (small, large) = (100, largest);
    for shape in Shape::ALL {
        for which in ["listed", "unlisted"] {
            let (Some(base), Some(big)) = (
                all.get(&(shape.key(), small, which)),
                all.get(&(shape.key(), large, which)),
            ) else {
                continue;
            };
            let ratio: Vec<f64> = big.iter().zip(base).map(|(b, s)| b / s).collect();
            results.figure(
                &format!(
                    "per_packet.{}.ratio_{large}_vs_{small}.{which}",
                    shape.key()
                ),
                "x",
                &ratio,
            )?;
        }
    }
    Ok(())
}
