//! `cargo xtask setup`: installs what the build and the tests need, and only what is
//! missing, so every other command can call it first at little cost.

use std::{
    env, fs,
    os::unix::fs::{symlink, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{
    process::{self, capture},
    sys, workspace,
};

/// Tools the integration tests, the demo and the benchmarks run (and a C++ compiler for
/// libFuzzer).
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "socat",
    "ethtool",
    "tcpdump",
    "nftables",
    "ipset",
    "iptables",
    "g++",
    // cargo xtask vm: the emulator, a static busybox for the guest's init, cpio to pack it
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    // systemd-analyze, to verify the packaged unit (systemd need not be PID 1)
    "systemd",
    // promtool and a Prometheus server: tests/tests/metrics.rs checks and scrapes /metrics
    "prometheus",
    // A DNS server for tests/tests/dns.rs (`[[allow]] host = …`)
    "dnsmasq-base",
    // etcd for tests/tests/fleet.rs and the fleet benchmark; they start their own on
    // loopback. Its system service is not started here (see stop_etcd_service).
    "etcd-server",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Runs the libFuzzer targets of `cargo xtask fuzz` (and of `cargo xtask test`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Builds the Debian package (`cargo xtask package`).
const CARGO_DEB_VERSION: &str = "3.8.0";

pub fn setup() -> Result<()> {
    ensure_nightly_rust_src()?;
    ensure_debian_packages()?;
    stop_etcd_service();
    ensure_bpf_linker()?;
    ensure_cargo_subcommand("fuzz", "cargo-fuzz", CARGO_FUZZ_VERSION)?;
    ensure_cargo_subcommand("deb", "cargo-deb", CARGO_DEB_VERSION)?;
    Ok(())
}

/// Installs the cargo subcommand `name` from `krate` at exactly `version`, unless that
/// version is what `cargo NAME --version` reports already.
fn ensure_cargo_subcommand(name: &str, krate: &str, version: &str) -> Result<()> {
    let installed = capture(Command::new("cargo").args([name, "--version"]));
    if let Ok(reported) = &installed {
        if reported.split_whitespace().any(|word| word == version) {
            println!("ok: {}", reported.trim());
            return Ok(());
        }
    }
    println!("installing: {krate} {version} (a minute or two)");
    process::run(workspace::cargo().args([
        "install",
        "--locked",
        // Replaces another version already installed.
        "--force",
        &format!("{krate}@{version}"),
    ]))
}

/// `cargo install` puts binaries in $CARGO_HOME/bin, which a fresh shell may not have on
/// PATH yet; the children of xtask need it to find bpf-linker.
pub fn put_cargo_bin_on_path() {
    let Some(cargo_bin) = cargo_home().map(|home| home.join("bin")) else {
        return;
    };
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|dir| dir == cargo_bin) {
        return;
    }
    let joined = env::join_paths(std::iter::once(cargo_bin).chain(env::split_paths(&path)));
    if let Ok(joined) = joined {
        env::set_var("PATH", joined);
    }
}

fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
}

// The eBPF target has no prebuilt core library: it is built from rust-src (-Z build-std).
fn ensure_nightly_rust_src() -> Result<()> {
    let installed = capture(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    match installed {
        Ok(components) if components.lines().any(|c| c.starts_with("rust-src")) => {
            println!("ok: nightly toolchain with rust-src");
            Ok(())
        }
        Ok(_) => {
            println!("installing: rust-src for the nightly toolchain");
            process::run(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ]))
        }
        Err(_) => {
            println!("installing: nightly toolchain with rust-src and clippy");
            process::run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
                "--component",
                "clippy",
            ]))
            .context("the XDP program is built with the nightly toolchain")
        }
    }
}

fn ensure_debian_packages() -> Result<()> {
    let (present, missing): (Vec<&str>, Vec<&str>) = DEBIAN_PACKAGES
        .iter()
        .partition(|package| debian_package_installed(package));
    if !present.is_empty() {
        println!("ok: Debian packages {}", present.join(" "));
    }
    if missing.is_empty() {
        return Ok(());
    }
    println!("installing: Debian packages {}", missing.join(" "));
    ensure!(
        sys::is_root(),
        "installing Debian packages needs root: run `cargo xtask setup` as root, or \
         `apt-get install {}` yourself",
        missing.join(" ")
    );
    process::run(apt_get().args(["update", "-q"]))?;
    process::run(
        apt_get()
            .args(["install", "-q", "-y", "--no-install-recommends"])
            .args(&missing),
    )
}

/// etcd-server's package enables and, where systemd runs, starts a system etcd on
/// 127.0.0.1:2379; the tests need none (each starts its own on free ports), and a
/// machine that runs tests should not keep a database it did not ask for.
fn stop_etcd_service() {
    let running = capture(Command::new("systemctl").args(["is-active", "etcd"]))
        .is_ok_and(|state| state.trim() == "active");
    if running {
        println!("stopping: the etcd system service the etcd-server package started");
        let _ = process::run(Command::new("systemctl").args(["disable", "--now", "etcd"]));
    }
}

fn debian_package_installed(package: &str) -> bool {
    capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|status| status.contains("install ok installed"))
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

fn ensure_bpf_linker() -> Result<()> {
    // `--version` rather than a PATH lookup: a bpf-linker whose libLLVM went away with a
    // nightly update is on PATH but cannot run, and must be rebuilt.
    if let Ok(version) = capture(Command::new("bpf-linker").arg("--version")) {
        println!("ok: {}", version.trim());
        return Ok(());
    }
    println!(
        "installing: bpf-linker {BPF_LINKER_VERSION}, built against the nightly toolchain's \
         LLVM (about a minute)"
    );
    let llvm = NightlyLlvm::locate()?;
    let prefix = cache_dir()?.join("llvm-prefix");
    llvm.make_prefix(&prefix)?;
    process::run(
        workspace::cargo()
            .env("LLVM_PREFIX", &prefix)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            // --force: replaces a bpf-linker that is installed but no longer runs.
            .args(["--locked", "--force", "--no-default-features", "--features"])
            .arg(format!("llvm-{}", llvm.major)),
    )?;
    let version = capture(Command::new("bpf-linker").arg("--version"))
        .context("bpf-linker was installed but does not run (is $CARGO_HOME/bin on PATH?)")?;
    println!("ok: {}", version.trim());
    Ok(())
}

fn cache_dir() -> Result<PathBuf> {
    let home = env::var_os("HOME").context("HOME is not set")?;
    Ok(Path::new(&home).join(".cache/allowlist"))
}

/// The LLVM shared library that ships inside the nightly toolchain. Debian has no LLVM as
/// new as nightly's, and bpf-linker must use the same LLVM major as rustc's bitcode.
struct NightlyLlvm {
    major: String,
    library: PathBuf,
}

impl NightlyLlvm {
    fn locate() -> Result<Self> {
        let sysroot = capture(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
        let version_info = capture(Command::new("rustc").args(["+nightly", "-vV"]))?;
        let major = llvm_major(&version_info)
            .context("`rustc +nightly -vV` printed no `LLVM version: N.M.P` line")?;
        let library = find_rust_libllvm(&Path::new(sysroot.trim()).join("lib"))?;
        Ok(Self { major, library })
    }

    /// Makes a directory that looks like an LLVM install to bpf-linker's build: it only
    /// needs bin/llvm-config to exist and libLLVM in lib/. bpf-linker records lib/ as its
    /// run path, so the directory must stay after the install.
    fn make_prefix(&self, prefix: &Path) -> Result<()> {
        let bin = prefix.join("bin");
        let lib = prefix.join("lib");
        // Links left from an older nightly point at a library that is gone.
        if lib.exists() {
            fs::remove_dir_all(&lib).with_context(|| format!("removing {}", lib.display()))?;
        }
        for dir in [&bin, &lib] {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let llvm_config = bin.join("llvm-config");
        fs::write(&llvm_config, "#!/bin/sh\nexit 0\n")
            .with_context(|| format!("writing {}", llvm_config.display()))?;
        fs::set_permissions(&llvm_config, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", llvm_config.display()))?;
        let file_name = self
            .library
            .file_name()
            .context("libLLVM path has no name")?;
        for link in [lib.join("libLLVM.so"), lib.join(file_name)] {
            symlink(&self.library, &link).with_context(|| {
                format!("linking {} to {}", link.display(), self.library.display())
            })?;
        }
        Ok(())
    }
}

fn llvm_major(rustc_version_info: &str) -> Option<String> {
    let version = rustc_version_info
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))?;
    let major = version.trim().split('.').next()?;
    (!major.is_empty() && major.chars().all(|c| c.is_ascii_digit())).then(|| major.to_string())
}

/// The toolchain's `libLLVM.so.<version>-rust-<rust version>`; its name changes with every
/// nightly, so it is looked up rather than spelled out.
fn find_rust_libllvm(lib_dir: &Path) -> Result<PathBuf> {
    let entries =
        fs::read_dir(lib_dir).with_context(|| format!("listing {}", lib_dir.display()))?;
    let mut candidates: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM.so.") && name.contains("-rust-"))
        })
        .collect();
    candidates.sort();
    match candidates.as_slice() {
        [library] => Ok(library.clone()),
        [] => bail!("no libLLVM.so.*-rust-* in {}", lib_dir.display()),
        _ => bail!(
            "more than one libLLVM.so.*-rust-* in {}: {candidates:?}",
            lib_dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn reads_the_llvm_major_from_rustc_version_info() {
        let info = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(info).as_deref(), Some("22"));
        assert_eq!(llvm_major("rustc 1.97.0\n"), None);
    }
}
