//! Compiles the XDP program (allowlist-ebpf) for the BPF target and leaves the object in
//! OUT_DIR, where `allowlistd` embeds it: the installed daemon is one self-contained file.
//! Needs the nightly toolchain with rust-src and bpf-linker: `cargo xtask setup`.

use anyhow::{anyhow, Context as _};
// A build-dependency only so that cargo rebuilds this crate when the program changes.
use allowlist_ebpf as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // The test builds of the next map layout (see allowlist_common::LAYOUT_VERSION).
    println!("cargo:rerun-if-env-changed=ALLOWLIST_TEST_LAYOUT");
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("reading workspace metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|package| package.name.as_str() == "allowlist-ebpf")
        .ok_or_else(|| anyhow!("allowlist-ebpf is not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("allowlist-ebpf manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
