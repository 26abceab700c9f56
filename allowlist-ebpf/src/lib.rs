#![no_std]
// The XDP program lives in main.rs and is built for bpfel-unknown-none by aya-build. This
// library target only lets allowlist-userspace's build script depend on the crate (so
// cargo rebuilds the program when it changes); it uses none of the program's
// dependencies.
#![allow(unused_crate_dependencies)]
