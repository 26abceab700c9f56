//! What the running kernel must offer, probed once before the program is loaded, so that
//! an old kernel is refused with what it lacks and since when Linux has it, instead of a
//! verifier log. What can be done two ways is decided where it is done: the flow
//! tracker's attachment (TCX or a tc filter) in `attach.rs`, the XDP mode per interface.

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper},
};

use super::FilterError;

/// Linux added each of these in the release named: the oldest the program can run on is
/// the newest of them.
const PROGRAM_TYPES: [(ProgramType, &str, &str); 2] = [
    (ProgramType::Xdp, "XDP programs", "4.8"),
    (
        ProgramType::SchedClassifier,
        "TC classifier programs",
        "4.1",
    ),
];
const HELPERS: [(ProgramType, BpfHelper, &str, &str); 3] = [
    (
        ProgramType::Xdp,
        BpfHelper::BPF_FUNC_xdp_load_bytes,
        "bpf_xdp_load_bytes",
        "5.18",
    ),
    (
        ProgramType::Xdp,
        BpfHelper::BPF_FUNC_ktime_get_boot_ns,
        "bpf_ktime_get_boot_ns",
        "5.8",
    ),
    (
        ProgramType::SchedClassifier,
        BpfHelper::BPF_FUNC_skb_load_bytes,
        "bpf_skb_load_bytes",
        "4.5",
    ),
];
const MAP_TYPES: [(MapType, &str, &str); 4] = [
    (MapType::LpmTrie, "LPM trie maps", "4.11"),
    (MapType::LruHash, "LRU hash maps", "4.10"),
    (MapType::PerCpuArray, "per-CPU arrays", "4.6"),
    (MapType::Hash, "hash maps", "3.19"),
];

/// The oldest Linux the program can run on (the newest of the releases above).
pub const OLDEST_KERNEL: &str = "5.18";

/// Refuses a kernel that lacks something the program needs, naming each missing piece
/// and the release that added it.
pub fn require_kernel_features() -> Result<(), FilterError> {
    let mut missing = Vec::new();
    for (program_type, what, since) in PROGRAM_TYPES {
        if !is_program_supported(program_type).unwrap_or(false) {
            missing.push(format!("{what} (Linux {since})"));
        }
    }
    for (program_type, helper, name, since) in HELPERS {
        if !is_helper_supported(program_type, helper).unwrap_or(false) {
            missing.push(format!("the {name} helper (Linux {since})"));
        }
    }
    for (map_type, what, since) in MAP_TYPES {
        if !is_map_supported(map_type).unwrap_or(false) {
            missing.push(format!("{what} (Linux {since})"));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(FilterError::Kernel {
        context: format!("this kernel ({})", crate::daemon::kernel_release()),
        message: format!(
            "lacks {}; allowlist needs Linux {OLDEST_KERNEL} or later",
            missing.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels the suite runs on (the host's, and 6.1 in `cargo xtask vm`) have all
    /// of it; a probe that fails here would refuse every start.
    #[test]
    fn the_running_kernel_has_what_the_program_needs() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: probing loads BPF programs, which needs root");
            return;
        }
        require_kernel_features().unwrap();
    }
}
