#![no_std]
// The XDP program lives in main.rs and is built for bpfel-unknown-none by aya-build.
