//! The kernel objects the benchmarks drive: the product's filter (with private pins that
//! are removed on drop) and the helper programs of `allowlist-bench` (no-op, drop-all,
//! traffic generator).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use allowlist_common::{FEATURE_DHCP_CLIENT, FEATURE_RETURN_TRAFFIC};
use allowlist_userspace::{
    compile::CompiledList,
    config::Mode,
    filter::{self, Filter, Pins, BENCH_OBJECT},
};
use anyhow::{ensure, Context, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{xdp::XdpLinkId, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf,
};

/// The features a daemon turns on by default (`return_traffic`, `dhcp_client`), so that
/// unlisted packets cost what they cost in a default deployment.
pub const DEFAULT_FEATURES: u32 = FEATURE_RETURN_TRAFFIC | FEATURE_DHCP_CLIENT;

pub use allowlist_tests::test_filter::{XDP_DROP, XDP_PASS};

/// Slots of the generator's `SOURCES` map (see allowlist-ebpf/src/bench.rs).
pub const SOURCE_SLOTS: u32 = 1 << 16;

/// The real XDP program and maps, loaded as the daemon loads them, pinned under a private
/// directory of /sys/fs/bpf that is removed again on drop.
pub struct PinnedFilter {
    filter: Option<Filter>,
    pins: Pins,
    attached: Option<XdpLinkId>,
}

impl PinnedFilter {
    pub fn open(tag: &str) -> Result<Self> {
        let pins = Pins::new(PathBuf::from(format!(
            "/sys/fs/bpf/albench-{}-{tag}",
            std::process::id()
        )));
        // The guard exists before anything is pinned, so a failed open is cleaned up too.
        let mut guard = PinnedFilter {
            filter: None,
            pins: pins.clone(),
            attached: None,
        };
        guard.filter = Some(Filter::open(pins, false).context("loading the XDP program")?);
        Ok(guard)
    }

    pub fn filter(&mut self) -> &mut Filter {
        self.filter.as_mut().expect("the filter is open")
    }

    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    /// Applies `list` (as the daemon does) and enforces it with `features`.
    pub fn enforce(&mut self, list: &CompiledList, features: u32) -> Result<()> {
        self.filter().apply(list).context("applying the list")?;
        self.filter()
            .set_features(features)
            .context("setting features")?;
        self.filter()
            .set_mode(Mode::Enforce, None)
            .map(drop)
            .context("enforcing")
    }

    /// Attaches in driver mode to `interface` of the calling thread's network namespace.
    /// Not through `Filter::attach`, which pins a link for the daemon's takeover: the
    /// benchmark attaches and detaches many times and wants nothing left behind.
    pub fn attach(&mut self, interface: &str) -> Result<()> {
        let id = self
            .filter()
            .program()?
            .attach(interface, XdpMode::Driver)
            .with_context(|| format!("attaching the filter to {interface}"))?;
        self.attached = Some(id);
        Ok(())
    }

    pub fn detach(&mut self) -> Result<()> {
        if let Some(id) = self.attached.take() {
            self.filter().program()?.detach(id)?;
        }
        Ok(())
    }

    /// Packets the program has judged so far, over every reason and CPU.
    pub fn judged(&mut self) -> Result<u64> {
        Ok(self.filter().counters()?.values().map(|c| c.packets).sum())
    }
}

impl Drop for PinnedFilter {
    fn drop(&mut self) {
        let _ = self.detach();
        drop(self.filter.take());
        if let Err(error) = filter::uninstall(&self.pins) {
            eprintln!("warning: removing {}: {error}", self.pins.root().display());
        }
    }
}

/// The helper programs, each loaded on first use.
pub struct Helpers {
    ebpf: Ebpf,
    attached: Option<(&'static str, XdpLinkId)>,
}

impl Helpers {
    pub fn load() -> Result<Self> {
        Ok(Helpers {
            ebpf: Ebpf::load(BENCH_OBJECT).context("loading the allowlist-bench object")?,
            attached: None,
        })
    }

    pub fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("allowlist-bench has no program {name}"))?
            .try_into()?;
        if program.fd().is_err() {
            program
                .load()
                .with_context(|| format!("loading the {name} program"))?;
        }
        Ok(program)
    }

    /// Attaches a floor (`drop_all` or `read_drop`) in driver mode to `interface`.
    pub fn attach_floor(&mut self, name: &'static str, interface: &str) -> Result<()> {
        let id = self
            .program(name)?
            .attach(interface, XdpMode::Driver)
            .with_context(|| format!("attaching {name} to {interface}"))?;
        self.attached = Some((name, id));
        Ok(())
    }

    pub fn detach(&mut self) -> Result<()> {
        if let Some((name, id)) = self.attached.take() {
            self.program(name)?.detach(id)?;
        }
        Ok(())
    }

    /// Packets `drop_all` and `read_drop` have dropped so far, over every CPU.
    pub fn dropped(&self) -> Result<u64> {
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map("DROPPED").context("no map DROPPED")?)?;
        Ok(map.get(&0, 0)?.iter().sum())
    }

    /// Fills the generator's source table (cycled through in order).
    pub fn set_sources(&mut self, sources: &[[u8; 4]]) -> Result<()> {
        ensure!(
            sources.len() == SOURCE_SLOTS as usize,
            "need {SOURCE_SLOTS} sources"
        );
        let mut map: Array<&mut MapData, [u8; 4]> =
            Array::try_from(self.ebpf.map_mut("SOURCES").context("no map SOURCES")?)?;
        for (index, source) in sources.iter().enumerate() {
            map.set(index as u32, source, 0)?;
        }
        Ok(())
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        let _ = self.detach();
    }
}

/// Runs `program` `repeat` times on `frame` with `BPF_PROG_TEST_RUN`; returns its verdict
/// and the kernel's mean time per run.
pub fn time_per_run(program: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((result.return_value, result.duration))
}

/// Frames per live-frames batch: the kernel's maximum. test_run sizes its page pool to
/// the batch, so a larger batch recycles more pages instead of freeing and reallocating.
const LIVE_FRAMES_BATCH: u32 = 256;

/// Runs `program` on `frames` live frames (`BPF_F_TEST_XDP_LIVE_FRAMES`) as if received
/// on `ifindex` (of the calling thread's network namespace): XDP_TX and XDP_REDIRECT
/// really transmit. Returns the kernel's mean time per frame.
pub fn live_frames(program: &Xdp, frame: &[u8], ifindex: u32, frames: u32) -> Result<Duration> {
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    //                 egress_ifindex }
    let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|field| field.to_ne_bytes())
        .collect();
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: frames,
            attrs: TestRunAttrs::new().xdp_live_frames(LIVE_FRAMES_BATCH),
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES")?;
    Ok(result.duration)
}

/// Network-order octets of an IPv4 address.
pub fn octets(address: IpAddr) -> [u8; 4] {
    match address {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => panic!("the generator only writes IPv4 sources"),
    }
}
