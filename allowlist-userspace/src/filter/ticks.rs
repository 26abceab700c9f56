//! The clock the program stamps hits and drops with: the kernel's tick count (jiffies),
//! which costs the packet path one load where a clock helper call would cost it more
//! than counting does. The daemon learns "now" on that clock by running a probe program
//! that writes it into a map (`BPF_PROG_TEST_RUN`), and the tick rate (the kernel's HZ)
//! by two probes a moment apart when it loads the program.

use std::time::{Duration, Instant};

use allowlist_common::{CLOCK_PROBE_PROGRAM, MAP_CLOCK_PROBE};
use aya::{
    maps::{Array, MapData},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};

use super::{
    error::{kernel_error, Result},
    FilterError,
};
use crate::clock;

/// Tick rates Linux is built with (CONFIG_HZ); a measured rate is taken as the nearest.
const KNOWN_HZ: [u64; 4] = [100, 250, 300, 1000];
/// How far apart the two probes that measure the rate are: long enough to tell 250 from
/// 300 ticks a second (25 against 30 ticks, each ±1).
const CALIBRATION: Duration = Duration::from_millis(100);

/// The probe and the kernel's tick rate.
pub(super) struct TickClock {
    hz: u64,
}

impl TickClock {
    /// Loads the probe program and measures the tick rate.
    pub fn load(ebpf: &mut Ebpf) -> Result<Self> {
        probe_program_mut(ebpf)?
            .load()
            .map_err(kernel_error("loading the clock probe program"))?;
        let start = (read_jiffies(ebpf)?, Instant::now());
        std::thread::sleep(CALIBRATION);
        let ticks = read_jiffies(ebpf)?.saturating_sub(start.0);
        let seconds = start.1.elapsed().as_secs_f64();
        Ok(TickClock {
            hz: nearest_known_hz(ticks as f64 / seconds),
        })
    }

    /// The tick count and the wall clock, read together.
    pub fn now(&self, ebpf: &Ebpf) -> Result<Reading> {
        Ok(Reading {
            jiffies: read_jiffies(ebpf)?,
            unix: clock::now(),
            hz: self.hz,
        })
    }
}

/// "Now" on the tick clock and on the wall clock.
pub struct Reading {
    jiffies: u64,
    unix: u64,
    hz: u64,
}

impl Reading {
    /// Unix seconds of a tick count in the past.
    pub fn wall_clock_of(&self, jiffies: u64) -> u64 {
        let ago = self.jiffies.saturating_sub(jiffies) / self.hz.max(1);
        self.unix.saturating_sub(ago)
    }
}

fn nearest_known_hz(measured: f64) -> u64 {
    KNOWN_HZ
        .into_iter()
        .min_by(|a, b| {
            let off = |hz: u64| (hz as f64 - measured).abs();
            off(*a).total_cmp(&off(*b))
        })
        .unwrap_or(1000)
}

fn probe_program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut(CLOCK_PROBE_PROGRAM)
        .ok_or_else(missing_probe)?
        .try_into()
        .map_err(kernel_error("the clock probe program"))
}

fn missing_probe() -> FilterError {
    FilterError::Kernel {
        context: "loading the clock probe program".into(),
        message: format!("the object has no program {CLOCK_PROBE_PROGRAM}"),
    }
}

fn read_jiffies(ebpf: &Ebpf) -> Result<u64> {
    let program: &Xdp = ebpf
        .program(CLOCK_PROBE_PROGRAM)
        .ok_or_else(missing_probe)?
        .try_into()
        .map_err(kernel_error("the clock probe program"))?;
    // XDP runs on a frame of at least an Ethernet header; the probe does not read it.
    let frame = [0u8; 64];
    program
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            ..Default::default()
        })
        .map_err(kernel_error("running the clock probe"))?;
    let map = ebpf
        .map(MAP_CLOCK_PROBE)
        .ok_or_else(|| FilterError::Kernel {
            context: "reading the clock probe".into(),
            message: format!("the object has no map {MAP_CLOCK_PROBE}"),
        })?;
    let probe: Array<&MapData, u64> =
        Array::try_from(map).map_err(kernel_error("reading the clock probe"))?;
    probe
        .get(&0, 0)
        .map_err(kernel_error("reading the clock probe"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_count_in_the_past_maps_to_the_wall_clock_second_it_was() {
        let now = Reading {
            jiffies: 4_295_000_000,
            unix: 1_800_000_000,
            hz: 250,
        };
        assert_eq!(now.wall_clock_of(4_295_000_000 - 500), 1_800_000_000 - 2);
        // A stamp the clocks disagree on (after "now") is now, not the future.
        assert_eq!(now.wall_clock_of(4_296_000_000), 1_800_000_000);
    }

    #[test]
    fn a_measured_tick_rate_is_taken_as_the_nearest_rate_linux_is_built_with() {
        assert_eq!(nearest_known_hz(24.0 / 0.1), 250);
        assert_eq!(nearest_known_hz(31.0 / 0.1), 300);
        assert_eq!(nearest_known_hz(11.0 / 0.1), 100);
        assert_eq!(nearest_known_hz(99.0 / 0.1), 1000);
    }
}
