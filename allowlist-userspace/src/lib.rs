//! allowlist's userspace, in layers, each a module with one job:
//! config (read and validate) → compile (minimal prefix sets) → filter (the kernel maps,
//! program and links) → control (the socket protocol) → daemon (ties them together).
//! The binaries `allowlistd` and `allowlistctl` are thin shells over these.

pub mod compile;
pub mod config;
pub mod control;
pub mod daemon;
pub mod durable;
pub mod filter;
