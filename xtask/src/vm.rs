//! `cargo xtask vm [--kernel BZIMAGE --modules DIR] [--all]`: the integration suite in a
//! QEMU guest running another kernel than the host's, Debian 12's 6.1 by default (the
//! kernel Debian 12 and Amazon Linux 2023 hosts run: no TCX, so the flow tracker goes on
//! a tc filter there).
//!
//! The guest boots from an initramfs made of this host's own tools and their libraries
//! (`ip`, `mount`, `nsenter`, `setpriv`, …, with `dash` as `sh` and busybox for what only
//! init needs), the daemon, the CLI and the test binaries, packed with Debian's `cpio`.
//! Its init loads the modules the tests need (veth, clsact, cls_bpf), runs each test
//! binary and prints one result line per binary on the serial console, which this module
//! reads. KVM is used only when a probe shows a guest actually boots with it (nested
//! virtualisation often hangs); otherwise TCG.

use std::{
    collections::BTreeSet,
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{libtest, process, setup, summary::Summary, sys, workspace};

/// What runs in the guest by default: every path that depends on the kernel — the
/// packet tests through `BPF_PROG_TEST_RUN`, loading and attaching in native and generic
/// XDP mode, return traffic (the host's own TCP, UDP and ping while enforcing), atomic
/// list swaps under traffic, pins surviving kill -9, commit-confirm reverting in the
/// kernel, counters — sized for TCG.
/// `--all` runs every integration test instead.
const SUBSET: &[(&str, &[&str])] = &[
    ("packet_path", &[]),
    ("enforce", &["enforce_passes_listed", "generic_xdp"]),
    ("counters", &[]),
    (
        "ports_and_return_traffic",
        &[
            "host_initiated_flows_get_replies",
            "connections_the_host_opened_before",
        ],
    ),
    ("lifecycle", &["kill_9", "uninstall", "removing_the_pins"]),
    ("control_modes", &["reverts_in_the_kernel"]),
    // The unit's capabilities also suffice where the flow tracker is a tc filter.
    ("capabilities", &[]),
    // An upgrade swaps the tc filter's program where there is no TCX.
    ("upgrade", &["replies_to", "older_version_refuses"]),
    ("kernels", &[]),
    ("list_swap", &[]),
    // Every lookup level (coarse screen, screen, host hash, trie) against the reference,
    // the slots written with batch map calls (LPM tries: the kernel's generic loop).
    (
        "compiled_lookup",
        &["edges_of_the_slash_20s", "over_random_lists"],
    ),
    // The remote filter's generations and rebuilds in front of the flows (its atomic bit
    // writes in the egress program run in ports_and_return_traffic).
    ("remote_filter", &[]),
    // The per-CPU LRU of dropped sources, written from the drop path.
    ("dropped_sources", &["a_blocked_client_shows_up_in_top"]),
    // Hit counters in the rules and the per-CPU ENTRY_HITS, across a takeover.
    ("entry_hits", &[]),
];
/// Test binaries that cannot run in the guest, not even with `--all`: the package tests
/// install the .deb with dpkg, and the metrics tests run Debian's Prometheus and
/// promtool, neither of which the guest has (nor do they depend on the kernel).
const HOST_ONLY: &[&str] = &["package", "metrics"];
/// Swaps of `list_swap` in the guest (its default of 2000 is for native speed).
const GUEST_SWAPS: &str = "100";
/// How long the whole guest run may take.
const GUEST_TIMEOUT: Duration = Duration::from_secs(50 * 60);
/// Tools the harness and the daemon run, copied from this host with their libraries.
const HOST_TOOLS: &[&str] = &[
    "/usr/sbin/ip",
    "/usr/sbin/tc",
    "/usr/bin/mount",
    "/usr/bin/umount",
    "/usr/bin/nsenter",
    "/usr/bin/unshare",
    "/usr/bin/setpriv",
    "/usr/sbin/sysctl",
    "/usr/bin/ping",
    "/usr/bin/dash",
];
/// Modules the tests need that Debian builds as modules, in load order.
const MODULES: &[&str] = &["veth", "sch_ingress", "cls_bpf"];
/// Debian's metapackage for the current cloud kernel of the release the host runs.
const DEFAULT_KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";

/// A kernel to boot: its image and the directory of its modules (`lib/modules/VERSION`).
pub struct Kernel {
    image: PathBuf,
    modules: PathBuf,
    pub version: String,
}

pub struct Options {
    pub kernel: Option<PathBuf>,
    pub modules: Option<PathBuf>,
    pub all: bool,
    /// Only these test binaries (e.g. `lifecycle`).
    pub only: Vec<String>,
}

pub fn vm(options: &Options) -> Result<()> {
    sys::require_root(
        "cargo xtask vm",
        "the guest's tests, like the host's, attach XDP programs",
    )?;
    let mut summary = Summary::new("cargo xtask vm");
    let ready = summary.step("setup", setup::setup)
        && summary.step("build", || workspace::build_userspace(false));
    if ready {
        step(&mut summary, options);
    } else {
        summary.skip("integration tests in a VM");
    }
    summary.finish()
}

/// The guest run as a step of `summary`, named with the guest's kernel.
pub fn step(summary: &mut Summary, options: &Options) -> bool {
    match kernel(options) {
        Ok(kernel) => summary.step(
            &format!("integration tests in a VM (Linux {})", kernel.version),
            || run(options, &kernel),
        ),
        Err(error) => summary.step("integration tests in a VM", || Err(error)),
    }
}

/// The kernel to boot: the one given, or Debian's current cloud kernel.
pub fn kernel(options: &Options) -> Result<Kernel> {
    let work = workspace::target_dir().join("vm");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    match (&options.kernel, &options.modules) {
        (Some(image), Some(modules)) => Kernel::given(image, modules),
        (None, None) => Kernel::debian_cloud(&work),
        _ => bail!("--kernel and --modules go together: the image and its lib/modules/VERSION"),
    }
}

/// Builds the guest, boots it and checks every test binary passed.
pub fn run(options: &Options, kernel: &Kernel) -> Result<()> {
    let work = workspace::target_dir().join("vm");
    println!(
        "guest kernel: {} ({})",
        kernel.version,
        kernel.image.display()
    );
    let mut tests = build_tests(options.all)?;
    if !options.only.is_empty() {
        let not_run: Vec<&String> = options
            .only
            .iter()
            .filter(|name| !tests.iter().any(|test| &test.name == *name))
            .collect();
        // A name the guest would silently skip reads as a pass of a test never run.
        ensure!(
            not_run.is_empty(),
            "{not_run:?}: not among the test binaries the guest runs{}",
            if options.all {
                ""
            } else {
                " (add --all for every integration test)"
            }
        );
        tests.retain(|test| options.only.contains(&test.name));
    }
    // The upgrade tests move to these binaries (another map layout).
    let next_layout = workspace::build_next_layout()?;
    let initramfs = pack_initramfs(&work, kernel, &tests, &next_layout)?;
    let accel = if kvm_boots(kernel, &work)? {
        "kvm"
    } else {
        "tcg"
    };
    println!("accelerator: {accel}");
    let results = boot(kernel, &initramfs, accel, &work.join("console.log"))?;
    let mut failed: Vec<String> = Vec::new();
    println!("\nin the guest (Linux {}):", kernel.version);
    for binary in &results {
        println!(
            "  {} {} ({} tests)",
            if binary.passed { "ok    " } else { "FAILED" },
            binary.name,
            binary.tests.len()
        );
        for (test, outcome) in &binary.tests {
            println!("      {outcome:<7} {test}");
            if outcome == "FAILED" {
                failed.push(format!("{}::{test}", binary.name));
            }
        }
        if !binary.passed && !binary.tests.iter().any(|(_, outcome)| outcome == "FAILED") {
            failed.push(format!("{} (exited non-zero)", binary.name));
        }
        // A binary that reports passing having run no test ran nothing of the subset.
        if binary.passed && binary.tests.is_empty() {
            failed.push(format!("{} (ran no test)", binary.name));
        }
    }
    let expected: BTreeSet<&str> = tests.iter().map(|test| test.name.as_str()).collect();
    let reported: BTreeSet<&str> = results.iter().map(|binary| binary.name.as_str()).collect();
    ensure!(
        expected == reported,
        "the guest reported {reported:?}, not every test binary {expected:?}; see {}",
        work.join("console.log").display()
    );
    ensure!(
        failed.is_empty(),
        "failed in the guest (Linux {}): {failed:?}; the whole console is in {}",
        kernel.version,
        work.join("console.log").display()
    );
    Ok(())
}

impl Kernel {
    fn given(image: &Path, modules: &Path) -> Result<Kernel> {
        ensure!(image.is_file(), "no kernel image at {}", image.display());
        ensure!(
            modules.is_dir(),
            "no modules directory at {}",
            modules.display()
        );
        let version = modules
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .context("--modules must be a lib/modules/VERSION directory")?;
        Ok(Kernel {
            image: image.to_path_buf(),
            modules: modules.to_path_buf(),
            version,
        })
    }

    /// Debian's current cloud kernel, downloaded once (`apt-get download`) and unpacked.
    fn debian_cloud(work: &Path) -> Result<Kernel> {
        let depends = process::capture(Command::new("apt-cache").args([
            "depends",
            "--no-recommends",
            DEFAULT_KERNEL_PACKAGE,
        ]))?;
        let package = depends
            .lines()
            .filter_map(|line| line.trim().strip_prefix("Depends: "))
            .find(|name| name.starts_with("linux-image-"))
            .with_context(|| {
                format!("`apt-cache depends {DEFAULT_KERNEL_PACKAGE}` names no linux-image package")
            })?
            .to_string();
        let version = package.trim_start_matches("linux-image-").to_string();
        let unpacked = work.join("kernels").join(&version);
        let image = unpacked.join("boot").join(format!("vmlinuz-{version}"));
        if !image.is_file() {
            let downloads = work.join("downloads");
            fs::create_dir_all(&downloads)?;
            // apt's sandbox user must be able to write where it downloads to.
            process::run(
                Command::new("apt-get")
                    .args(["download", "-o", "APT::Sandbox::User=root", &package])
                    .current_dir(&downloads),
            )?;
            let deb = fs::read_dir(&downloads)?
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .find(|path| {
                    path.file_name().is_some_and(|name| {
                        name.to_string_lossy().starts_with(&format!("{package}_"))
                    })
                })
                .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
            fs::create_dir_all(&unpacked)?;
            process::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        }
        Ok(Kernel {
            image,
            modules: unpacked.join("lib/modules").join(&version),
            version,
        })
    }
}

/// A test binary for the guest, and the test names it runs (all when empty).
struct TestBinary {
    name: String,
    path: PathBuf,
    filters: Vec<String>,
}

/// Builds the integration test binaries (debug, as `cargo xtask test` does) and finds
/// them in cargo's JSON messages.
fn build_tests(all: bool) -> Result<Vec<TestBinary>> {
    let output = process::capture(workspace::cargo().args([
        "test",
        "-p",
        "allowlist-tests",
        "--tests",
        "--no-run",
        "--message-format=json",
    ]))?;
    let mut tests = Vec::new();
    for line in output.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(path)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) else {
            continue;
        };
        if message["target"]["kind"][0] != "test" || HOST_ONLY.contains(&name) {
            continue;
        }
        let filters = match SUBSET.iter().find(|(test, _)| *test == name) {
            Some((_, filters)) => filters.iter().map(|f| f.to_string()).collect(),
            None if all => Vec::new(),
            None => continue,
        };
        tests.push(TestBinary {
            name: name.to_string(),
            path: PathBuf::from(path),
            filters,
        });
    }
    tests.sort_by(|a, b| a.name.cmp(&b.name));
    ensure!(!tests.is_empty(), "cargo built no integration test binary");
    Ok(tests)
}

/// The guest's root: init, tools and their libraries, modules, daemon, CLI and tests,
/// packed as an uncompressed cpio archive (faster to boot than to gunzip under TCG).
fn pack_initramfs(
    work: &Path,
    kernel: &Kernel,
    tests: &[TestBinary],
    next_layout: &Path,
) -> Result<PathBuf> {
    let root = work.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "var",
        "root",
        "tests",
        "allowlist",
        "allowlist-next",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    std::os::unix::fs::symlink("/run", root.join("var/run"))?;
    let mut elves: Vec<PathBuf> = Vec::new();
    for tool in HOST_TOOLS {
        copy_into(&root, Path::new(tool))?;
        elves.push(PathBuf::from(tool));
    }
    std::os::unix::fs::symlink("/usr/bin/dash", root.join("bin/sh"))?;
    let busybox = Path::new("/usr/bin/busybox");
    copy_into(&root, busybox)?;
    for applet in ["insmod", "poweroff", "cat", "echo", "mkdir", "sleep"] {
        std::os::unix::fs::symlink("/usr/bin/busybox", root.join("bin").join(applet))?;
    }
    for file in [
        "/etc/passwd",
        "/etc/group",
        "/etc/nsswitch.conf",
        "/etc/protocols",
    ] {
        if Path::new(file).exists() {
            copy_into(&root, Path::new(file))?;
        }
    }
    let bin_dir = workspace::bin_dir(false);
    for (from, into) in [
        (bin_dir.as_path(), "allowlist"),
        (next_layout, "allowlist-next"),
    ] {
        for binary in ["allowlistd", "allowlistctl"] {
            strip_copy(&from.join(binary), &root.join(into).join(binary))?;
            elves.push(from.join(binary));
        }
    }
    for test in tests {
        strip_copy(&test.path, &root.join("tests").join(&test.name))?;
        elves.push(test.path.clone());
    }
    for library in libraries_of(&elves)? {
        copy_into(&root, &library)?;
    }
    let modules = root.join("modules");
    fs::create_dir_all(&modules)?;
    for module in MODULES {
        let found = find_module(&kernel.modules, module)?;
        fs::copy(&found, modules.join(format!("{module}.ko")))
            .with_context(|| format!("copying {}", found.display()))?;
    }
    fs::write(root.join("init"), init_script(tests))?;
    fs::set_permissions(
        root.join("init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let initramfs = work.join("initramfs.cpio");
    let archive = fs::File::create(&initramfs)?;
    let mut cpio = Command::new("sh");
    cpio.args([
        "-c",
        "find . -print0 | cpio --null --create --format=newc --quiet",
    ])
    .current_dir(&root)
    .stdout(archive);
    process::run(&mut cpio)?;
    Ok(initramfs)
}

/// The guest's PID 1: mounts, modules, then each test binary; a result line per binary.
fn init_script(tests: &[TestBinary]) -> String {
    let mut script = String::from(
        "#!/bin/sh\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n\
         export ALLOWLIST_BIN_DIR=/allowlist ALLOWLIST_NEXT_BIN_DIR=/allowlist-next\n\
         export RUST_BACKTRACE=1 NO_COLOR=1 ALLOWLIST_READY_TIMEOUT_SECS=90\n\
         export ALLOWLIST_SWAPS=",
    );
    script.push_str(GUEST_SWAPS);
    script.push_str(
        "\nmount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t tmpfs tmp /tmp\n\
         mount -t tmpfs run /run\n\
         mkdir -p /sys/fs/bpf /run/netns\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         for module in /modules/*.ko; do insmod \"$module\"; done\n\
         ip link set lo up\n\
         echo \"ALLOWLIST-VM-KERNEL $(cat /proc/sys/kernel/osrelease)\"\n",
    );
    for test in tests {
        let filters = if test.filters.is_empty() {
            String::new()
        } else {
            format!(" {}", test.filters.join(" "))
        };
        script.push_str(&format!(
            "/tests/{name} --test-threads=1{filters}\n\
             echo \"ALLOWLIST-VM-RESULT {name} $?\"\n",
            name = test.name
        ));
    }
    script.push_str("poweroff -f\n");
    script
}

/// Copies `path` to the same path under `root`, following symlinks.
fn copy_into(root: &Path, path: &Path) -> Result<()> {
    let into = root.join(path.strip_prefix("/").unwrap_or(path));
    if let Some(parent) = into.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(path, &into).with_context(|| format!("copying {}", path.display()))?;
    Ok(())
}

/// Copies an executable without its debug information (the guest's RAM holds it all).
fn strip_copy(from: &Path, into: &Path) -> Result<()> {
    process::run(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(from)
            .arg(into),
    )
}

/// Every shared library (and the loader) the executables need, from `ldd`.
fn libraries_of(executables: &[PathBuf]) -> Result<BTreeSet<PathBuf>> {
    let mut libraries = BTreeSet::new();
    for executable in executables {
        let Ok(listing) = process::capture(Command::new("ldd").arg(executable)) else {
            continue; // statically linked
        };
        for line in listing.lines() {
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(path) = path.filter(|path| path.starts_with('/')) {
                libraries.insert(PathBuf::from(path));
            }
        }
    }
    Ok(libraries)
}

fn find_module(modules: &Path, name: &str) -> Result<PathBuf> {
    let file = format!("{name}.ko");
    let mut pending = vec![modules.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|found| found == file.as_str()) {
                return Ok(path);
            }
        }
    }
    bail!("no {file} under {}", modules.display())
}

fn qemu(kernel: &Kernel, initramfs: &Path, accel: &str) -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", accel, "-cpu", "max", "-smp", "2", "-m", "4096"])
        .args(["-nographic", "-no-reboot", "-serial", "mon:stdio"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    qemu
}

/// Whether a guest boots with KVM within a short timeout: nested virtualisation often
/// offers /dev/kvm and then hangs.
fn kvm_boots(kernel: &Kernel, work: &Path) -> Result<bool> {
    if !Path::new("/dev/kvm").exists() {
        return Ok(false);
    }
    let root = work.join("kvm-probe");
    fs::create_dir_all(root.join("bin"))?;
    fs::copy("/usr/bin/busybox", root.join("bin/busybox"))?;
    fs::write(
        root.join("init"),
        "#!/bin/busybox sh\n/bin/busybox echo ALLOWLIST-VM-KVM-OK\n/bin/busybox poweroff -f\n",
    )?;
    fs::set_permissions(
        root.join("init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let initramfs = work.join("kvm-probe.cpio");
    process::run(
        Command::new("sh")
            .args([
                "-c",
                "find . -print0 | cpio --null --create --format=newc --quiet",
            ])
            .current_dir(&root)
            .stdout(fs::File::create(&initramfs)?),
    )?;
    let mut child = qemu(kernel, &initramfs, "kvm")
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu's output")?;
    let (found, seen) = mpsc::channel();
    std::thread::spawn(move || {
        let ok = process::lossy_lines(stdout).any(|line| line.contains("ALLOWLIST-VM-KVM-OK"));
        let _ = found.send(ok);
    });
    let booted = seen.recv_timeout(Duration::from_secs(20)).unwrap_or(false);
    let _ = child.kill();
    let _ = child.wait();
    Ok(booted)
}

/// What one test binary reported in the guest.
struct BinaryResult {
    name: String,
    passed: bool,
    /// Each test's name and libtest's word for it (`ok`, `FAILED`, `ignored`), read from
    /// the console.
    tests: Vec<(String, String)>,
}

/// Boots the guest, echoes and keeps its console, and returns each binary's result.
fn boot(
    kernel: &Kernel,
    initramfs: &Path,
    accel: &str,
    console: &Path,
) -> Result<Vec<BinaryResult>> {
    let started = Instant::now();
    let mut child = qemu(kernel, initramfs, accel)
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu's output")?;
    let mut log = fs::File::create(console)?;
    let received = process::lines_in_background(stdout);
    let mut results = Vec::new();
    let mut tests_of_this_binary = Vec::new();
    let mut guest_kernel = None;
    loop {
        let left = GUEST_TIMEOUT.saturating_sub(started.elapsed());
        match received.recv_timeout(left) {
            Ok(line) => {
                writeln!(log, "{line}")?;
                println!("guest| {line}");
                // The console may put escape sequences before a line.
                let marked =
                    |marker: &str| line.find(marker).map(|at| line[at + marker.len()..].trim());
                if let Some(version) = marked("ALLOWLIST-VM-KERNEL ") {
                    guest_kernel = Some(version.to_string());
                }
                if let Some(test) = libtest::result_line(&line) {
                    tests_of_this_binary.push(test);
                }
                if let Some(result) = marked("ALLOWLIST-VM-RESULT ") {
                    if let Some((name, code)) = result.rsplit_once(' ') {
                        results.push(BinaryResult {
                            name: name.to_string(),
                            passed: code == "0",
                            tests: std::mem::take(&mut tests_of_this_binary),
                        });
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the guest did not finish within {GUEST_TIMEOUT:?}; its console is in {}",
                    console.display()
                );
            }
        }
    }
    let status = child.wait()?;
    ensure!(
        guest_kernel.as_deref() == Some(kernel.version.as_str()),
        "the guest ran {guest_kernel:?}, not {} (qemu exited {status}); see {}",
        kernel.version,
        console.display()
    );
    println!("guest ran for {:.0?} under {accel}", started.elapsed());
    Ok(results)
}
