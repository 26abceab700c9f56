//! 3. Apply time: how long until the kernel judges by a whole new list (and one more
//!    entry), for the real daemon driven by `allowlistctl`, against `nft -f` (flush + add
//!    in one transaction) and `ipset restore` + swap of the same prefixes.
//! 4. Memory: the daemon's resident set and the kernel's accounting of its maps.
//!
//! The daemon runs as in production, only in a network namespace of its own, guarding a
//! veth there, with its socket, state and pins in private places. "Until the kernel
//! judges by it" is seen from outside: a watcher thread reads the pinned CONTROL record
//! every 200 µs and notes when `active_slot` flips, which is the moment the new list takes
//! over (the daemon then waits out packets in flight and writes its state file before
//! `allowlistctl` returns; that is the second figure). One added entry is written in
//! place, without a flip: for it the watcher notes when the host appears in the active
//! slot's exact-host map.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use allowlist_common::{AllowRule, Control, Ipv4Octets, MAP_CONTROL, MAP_EXACT_V4};
use allowlist_tests::{ConfigBuilder, Daemon, Netns};
use allowlist_userspace::{compile::CompiledList, filter::Pins};
use anyhow::{bail, ensure, Context, Result};
use aya::maps::{Array, MapData};

use crate::drop_rate::{ipset_script, nft_set_script_named};
use crate::kernel::{PinnedFilter, DEFAULT_FEATURES};
use crate::lists::{self, Rng};
use crate::results::Results;
use crate::tools;
use crate::Options;

const DEVICE: &str = "vapply";
/// The address the incremental step adds (checked to be in no generated list).
const ADDED: &str = "203.0.113.77";
const NFT_TABLE: &str = "albench_apply";
const IPSET_LIVE: &str = "albench_live";
const IPSET_NEXT: &str = "albench_next";

pub fn run(options: &Options, results: &mut Results, bin_dir: &Path) -> Result<()> {
    // Binaries::locate() (the harness) reads this.
    std::env::set_var("ALLOWLIST_BIN_DIR", bin_dir);
    let work = tempfile::Builder::new()
        .prefix("allowlist-bench-")
        .tempdir()?;
    let netns = Netns::new("apply")?;
    netns.ip(&[
        "link", "add", DEVICE, "type", "veth", "peer", "name", "vapply1",
    ])?;
    netns.ip(&["link", "set", DEVICE, "up"])?;

    for &entries in &options.apply_sizes {
        // Random lists (figures under `apply.N.…`), then provider-shaped ones
        // (`apply.clustered.N.…`: the daemon, the kernel layer and ipset only, as `nft` at
        // 1M takes minutes).
        for clustered in [false, true] {
            let draw = |salt: u64| {
                let mut rng = Rng::new(options.seed ^ salt ^ entries as u64);
                if clustered {
                    lists::clustered_v4(entries, &mut rng)
                } else {
                    lists::mixed_v4(entries, &mut rng)
                }
            };
            let label = if clustered {
                format!("clustered.{entries}")
            } else {
                entries.to_string()
            };
            println!(
                "  -- {entries} entries{}",
                if clustered { ", clustered" } else { "" }
            );
            // Three different lists of the same size, taken in turn: the filter writes a new
            // list into the idle slot, which holds the list before the one in force, so with
            // two lists taking turns it would already hold the new one and write nothing.
            let lists = [draw(0xa), draw(0xb), draw(0xc)];
            for list in &lists {
                ensure!(
                    !list.covers_v4(ADDED.parse()?),
                    "{ADDED} is in a generated list"
                );
            }
            let runs = if entries >= 1_000_000 {
                options.runs_1m
            } else {
                options.runs
            };
            let csv = [
                write_csv(work.path(), &format!("a-{label}"), &lists[0])?,
                write_csv(work.path(), &format!("b-{label}"), &lists[1])?,
                write_csv(work.path(), &format!("c-{label}"), &lists[2])?,
            ];
            let ours = daemon(&netns, results, &label, &csv, runs)?;
            library(results, &label, &lists, runs)?;
            let two = [lists[0].clone(), lists[1].clone()];
            if !clustered {
                nft(&netns, results, entries, &two, runs, options)?;
            }
            let theirs = ipset(&netns, results, &label, &two, runs)?;
            // The comparison: a whole list until the kernel judges by it, against
            // `ipset restore` + swap of the same lists, run by run.
            let ratio: Vec<f64> = ours.iter().zip(&theirs).map(|(a, b)| a / b).collect();
            results.figure(
                &format!("apply.{label}.ratio.allowlist_judged_vs_ipset"),
                "x",
                &ratio,
            )?;
        }
    }
    Ok(())
}

/// The daemon: `allowlistctl import FILE --replace` of a whole new list, then
/// `allowlistctl add` of one entry; RSS and map memory at the end. Returns the seconds
/// of each whole-list run until the kernel judged by it.
fn daemon(
    netns: &Netns,
    results: &mut Results,
    entries: &str,
    csv: &[PathBuf; 3],
    runs: usize,
) -> Result<Vec<f64>> {
    let config =
        ConfigBuilder::new(&[DEVICE]).allow("192.0.2.1/32", "bench: keeps the list non-empty");
    let daemon = Daemon::start_in(netns, &config)?;
    let pid = daemon_pid(&daemon.files().config)?;
    let ctl = |args: &[&str]| -> Result<()> {
        let output = daemon.ctl_command(args).output()?;
        ensure!(
            output.status.success(),
            "allowlistctl {args:?}: {}\ndaemon log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            daemon.log()
        );
        Ok(())
    };

    // The first two imports fill both slots; they are not among the figures, so every
    // figure replaces a whole list in the kernel.
    ctl(&["import", path_str(&csv[0])?, "--replace"])?;
    ctl(&["import", path_str(&csv[1])?, "--replace"])?;
    let (mut replaced, mut done) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let file = path_str(&csv[(run + 2) % 3])?;
        let (to_flip, to_return) =
            timed_until_flip(daemon.pin_path(), || ctl(&["import", file, "--replace"]))?;
        replaced.push(to_flip);
        done.push(to_return);
    }
    results.figure(
        &format!("apply.{entries}.allowlist.replace_judged"),
        "s",
        &replaced,
    )?;
    results.figure(
        &format!("apply.{entries}.allowlist.replace_returned"),
        "s",
        &done,
    )?;

    let (mut flip, mut done) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let added = Until::HostListed(ADDED.parse()?);
        let (to_flip, to_return) = timed_until(daemon.pin_path(), added, || {
            ctl(&["add", ADDED, "--description", "bench"])
        })?;
        flip.push(to_flip);
        done.push(to_return);
        ctl(&["remove", ADDED])?;
    }
    results.figure(&format!("apply.{entries}.allowlist.add_judged"), "s", &flip)?;
    results.figure(
        &format!("apply.{entries}.allowlist.add_returned"),
        "s",
        &done,
    )?;

    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    for (field, key) in [("VmRSS", "rss"), ("VmHWM", "rss_peak")] {
        let kib = status_kib(&status, field)?;
        results.figure(
            &format!("memory.{entries}.allowlistd.{key}"),
            "MiB",
            &[kib as f64 / 1024.0],
        )?;
    }
    let (tries, all) = map_memory(&Pins::new(daemon.pin_path()).maps())?;
    results.figure(
        &format!("memory.{entries}.kernel.tries"),
        "MiB",
        &[tries as f64 / (1 << 20) as f64],
    )?;
    results.figure(
        &format!("memory.{entries}.kernel.all_maps"),
        "MiB",
        &[all as f64 / (1 << 20) as f64],
    )?;
    Ok(replaced)
}

/// The kernel layer alone (`Filter::apply` in this process): what the daemon's figures
/// would be without parsing, checking and persisting the list.
fn library(
    results: &mut Results,
    entries: &str,
    lists: &[CompiledList; 3],
    runs: usize,
) -> Result<()> {
    // bpffs refuses a `.` in a name.
    let mut filter = PinnedFilter::open(&format!("apply-{}", entries.replace('.', "-")))?;
    filter.enforce(&lists[0], DEFAULT_FEATURES)?;
    // Both slots filled, as in `daemon`.
    filter.filter().apply(&lists[1])?;
    let root = filter.pins().root().to_path_buf();
    let (mut flip, mut done) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let list = &lists[(run + 2) % 3];
        let (to_flip, to_return) = timed_until_flip(&root, || {
            filter.filter().apply(list)?;
            Ok(())
        })?;
        flip.push(to_flip);
        done.push(to_return);
    }
    results.figure(
        &format!("apply.{entries}.filter_apply.replace_judged"),
        "s",
        &flip,
    )?;
    results.figure(
        &format!("apply.{entries}.filter_apply.replace_returned"),
        "s",
        &done,
    )?;
    Ok(())
}

/// nftables: `nft -f` of `flush set` + `add element` (one transaction) into an interval set
/// that holds the other list; then `nft add element` of one address.
fn nft(
    netns: &Netns,
    results: &mut Results,
    entries: usize,
    lists: &[CompiledList; 2],
    runs: usize,
    options: &Options,
) -> Result<()> {
    if entries > options.nft_max_entries {
        results.note(
            &format!("apply.{entries}.nft"),
            &format!("skipped: nft -f of {entries} intervals is beyond this mode's time budget"),
        )?;
        return Ok(());
    }
    let in_netns = |args: &[&str]| {
        let mut command = netns.command(args);
        command.env_remove("SSH_CONNECTION");
        command
    };
    let work = tempfile::Builder::new()
        .prefix("allowlist-bench-nft-")
        .tempdir()?;
    let _ = tools::output(&mut in_netns(&[
        "nft", "delete", "table", "netdev", NFT_TABLE,
    ]));
    let create = work.path().join("create.nft");
    fs::write(&create, nft_set_script_named(NFT_TABLE, &lists[0]))?;
    tools::output(&mut in_netns(&["nft", "-f", path_str(&create)?]))?;
    let mut scripts = Vec::new();
    for (i, list) in lists.iter().enumerate() {
        let path = work.path().join(format!("replace-{i}.nft"));
        let mut script =
            format!("flush set netdev {NFT_TABLE} allow\nadd element netdev {NFT_TABLE} allow {{ ");
        push_joined(&mut script, list);
        script.push_str(" }\n");
        fs::write(&path, script)?;
        scripts.push(path);
    }
    let mut took = Vec::new();
    for run in 0..runs {
        let script = path_str(&scripts[(run + 1) % 2])?;
        let started = Instant::now();
        tools::output(&mut in_netns(&["nft", "-f", script]))?;
        took.push(started.elapsed().as_secs_f64());
    }
    results.figure(&format!("apply.{entries}.nft.replace"), "s", &took)?;
    // One element into an interval set of 1M takes `nft` over a minute (and its removal as
    // long): at that size the add is measured once, and the element is left in the set,
    // which is deleted next anyway.
    let add_runs = if entries >= 1_000_000 { 1 } else { runs };
    let element = format!("{{ {ADDED} }}");
    let mut took = Vec::new();
    for run in 0..add_runs {
        let started = Instant::now();
        tools::output(&mut in_netns(&[
            "nft", "add", "element", "netdev", NFT_TABLE, "allow", &element,
        ]))?;
        took.push(started.elapsed().as_secs_f64());
        if run + 1 < add_runs {
            tools::output(&mut in_netns(&[
                "nft", "delete", "element", "netdev", NFT_TABLE, "allow", &element,
            ]))?;
        }
    }
    results.figure(&format!("apply.{entries}.nft.add"), "s", &took)?;
    tools::output(&mut in_netns(&[
        "nft", "delete", "table", "netdev", NFT_TABLE,
    ]))?;
    Ok(())
}

/// ipset: `ipset restore` of a new hash:net set, swapped with the live one and the old one
/// destroyed, all in one restore; then `ipset add` of one address. Returns the seconds of
/// each whole-list run.
fn ipset(
    netns: &Netns,
    results: &mut Results,
    entries: &str,
    lists: &[CompiledList; 2],
    runs: usize,
) -> Result<Vec<f64>> {
    let in_netns = |args: &[&str]| netns.command(args);
    for set in [IPSET_LIVE, IPSET_NEXT] {
        let _ = tools::output(&mut in_netns(&["ipset", "destroy", set]));
    }
    tools::output_with_input(
        &mut in_netns(&["ipset", "restore"]),
        &ipset_script(IPSET_LIVE, &lists[0]),
    )?;
    let scripts: Vec<String> = lists
        .iter()
        .map(|list| {
            format!(
                "{}swap {IPSET_NEXT} {IPSET_LIVE}\ndestroy {IPSET_NEXT}\n",
                ipset_script(IPSET_NEXT, list)
            )
        })
        .collect();
    let mut replaced = Vec::new();
    for run in 0..runs {
        let started = Instant::now();
        tools::output_with_input(
            &mut in_netns(&["ipset", "restore"]),
            &scripts[(run + 1) % 2],
        )?;
        replaced.push(started.elapsed().as_secs_f64());
    }
    results.figure(&format!("apply.{entries}.ipset.replace"), "s", &replaced)?;
    let mut took = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        tools::output(&mut in_netns(&["ipset", "add", IPSET_LIVE, ADDED]))?;
        took.push(started.elapsed().as_secs_f64());
        tools::output(&mut in_netns(&["ipset", "del", IPSET_LIVE, ADDED]))?;
    }
    results.figure(&format!("apply.{entries}.ipset.add"), "s", &took)?;
    let listing = tools::output(&mut in_netns(&["ipset", "list", "-t", IPSET_LIVE]))?;
    if let Some(bytes) = listing
        .lines()
        .find_map(|line| line.strip_prefix("Size in memory: "))
    {
        let bytes: f64 = bytes.trim().parse()?;
        results.figure(
            &format!("memory.{entries}.ipset"),
            "MiB",
            &[bytes / (1 << 20) as f64],
        )?;
    }
    tools::output(&mut in_netns(&["ipset", "destroy", IPSET_LIVE]))?;
    Ok(replaced)
}

/// Runs `change`, timing it, while a watcher notes when the CONTROL record pinned under
/// `pin_root` flips to the other slot. Returns (seconds until the flip, seconds until
/// `change` returned).
fn timed_until_flip(pin_root: &Path, change: impl FnOnce() -> Result<()>) -> Result<(f64, f64)> {
    timed_until(pin_root, Until::Flip, change)
}

/// The moment a change takes effect in the kernel.
#[derive(Clone, Copy)]
enum Until {
    /// The active slot flips (a whole list applied).
    Flip,
    /// The host is in the active slot's exact-host map (one entry written in place).
    HostListed(std::net::Ipv4Addr),
}

/// Runs `change`, timing it, while a watcher polls the pinned maps under `pin_root` for
/// `until`. Returns (seconds until then, seconds until `change` returned).
fn timed_until(
    pin_root: &Path,
    until: Until,
    change: impl FnOnce() -> Result<()>,
) -> Result<(f64, f64)> {
    crate::check_interrupted()?;
    let watcher = Watcher::start(pin_root, until)?;
    let started = Instant::now();
    let outcome = change();
    let returned = started.elapsed().as_secs_f64();
    let seen = watcher.finish();
    outcome?;
    let seen = seen?.context("the change returned, but the kernel never showed it")?;
    Ok((seen.duration_since(started).as_secs_f64(), returned))
}

struct Watcher {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Option<Instant>>>,
}

impl Watcher {
    fn start(pin_root: &Path, until: Until) -> Result<Self> {
        let pinned = |name: &str| -> Result<aya::maps::MapData> {
            let path = Pins::new(pin_root).maps().join(name);
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
        };
        let control: Array<MapData, Control> =
            Array::try_from(aya::maps::Map::Array(pinned(MAP_CONTROL)?))?;
        let mut hosts = Vec::new();
        for name in MAP_EXACT_V4 {
            let map: aya::maps::HashMap<MapData, Ipv4Octets, AllowRule> =
                aya::maps::HashMap::try_from(aya::maps::Map::HashMap(pinned(name)?))?;
            hosts.push(map);
        }
        let initial = control.get(&0, 0)?.active_slot;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::spawn({
            let stop = stop.clone();
            move || -> Result<Option<Instant>> {
                loop {
                    // Checked before reading, so a change just before the stop is seen.
                    let stopping = stop.load(Ordering::SeqCst);
                    let active = control.get(&0, 0)?.active_slot;
                    let seen = match until {
                        Until::Flip => active != initial,
                        Until::HostListed(host) => hosts[active as usize % hosts.len()]
                            .get(&host.octets(), 0)
                            .is_ok(),
                    };
                    if seen {
                        return Ok(Some(Instant::now()));
                    }
                    if stopping {
                        return Ok(None);
                    }
                    thread::sleep(Duration::from_micros(200));
                }
            }
        });
        Ok(Watcher { stop, thread })
    }

    fn finish(self) -> Result<Option<Instant>> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.join() {
            Ok(result) => result,
            Err(_) => bail!("the watcher panicked"),
        }
    }
}

fn write_csv(dir: &Path, name: &str, list: &CompiledList) -> Result<PathBuf> {
    let mut text = String::from("ip_address,description\n");
    for (net, _) in &list.v4 {
        text.push_str(&format!("{net},bench\n"));
    }
    let path = dir.join(format!("{name}-{}.csv", list.v4.len()));
    fs::write(&path, text)?;
    Ok(path)
}

fn push_joined(script: &mut String, list: &CompiledList) {
    for (i, (net, _)) in list.v4.iter().enumerate() {
        if i > 0 {
            script.push_str(", ");
        }
        script.push_str(&net.to_string());
    }
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().context("non-UTF-8 temp path")
}

/// The pid of the allowlistd started with `config` (the harness execs it in place of
/// nsenter/unshare/sh, so it is the process whose command line names the config).
fn daemon_pid(config: &Path) -> Result<u32> {
    let config = config.to_string_lossy();
    for entry in fs::read_dir("/proc")? {
        let entry = entry?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let words: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|word| String::from_utf8_lossy(word).into_owned())
            .collect();
        if words.first().is_some_and(|exe| exe.ends_with("allowlistd"))
            && words.iter().any(|word| word == config.as_ref())
        {
            return Ok(pid);
        }
    }
    bail!("no allowlistd process with --config {config}")
}

fn status_kib(status: &str, field: &str) -> Result<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/PID/status"))
}

/// The kernel's own accounting of the pinned maps under `maps_dir` (`memlock` in each
/// map's fdinfo): (the lookup maps: screens, exact-host hashes and tries; every map).
fn map_memory(maps_dir: &Path) -> Result<(u64, u64)> {
    use std::os::fd::{AsFd, AsRawFd};
    let (mut tries, mut all) = (0, 0);
    for entry in fs::read_dir(maps_dir)? {
        let entry = entry?;
        let map = MapData::from_pin(entry.path())?;
        let fd = map.fd().as_fd().as_raw_fd();
        let fdinfo = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
        let bytes: u64 = fdinfo
            .lines()
            .find_map(|line| line.strip_prefix("memlock:"))
            .context("no memlock in a map's fdinfo")?
            .trim()
            .parse()?;
        all += bytes;
        let name = entry.file_name().to_string_lossy().into_owned();
        if ["ALLOW_", "EXACT_", "SCREEN_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            tries += bytes;
        }
    }
    Ok((tries, all))
}
