use which::which;

/// Rebuild the program when bpf-linker changes: it is the linker of the eBPF target,
/// and cargo does not track linkers on its own.
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
