//! allowlist's userspace, in layers, each a module with one job:
//! config (read and validate) → allowlist (entries and the rules for changing them; state
//! keeps them durable) → compile (minimal prefix sets) → filter (the kernel maps, program
//! and links; screen maps its bitmaps) → control (the socket protocol; access and safety guard it) → daemon.
//! The binaries `allowlistd` and `allowlistctl` are thin shells over these.

pub mod access;
pub mod allowlist;
pub mod compile;
pub mod config;
pub mod control;
pub mod csv_format;
pub mod daemon;
pub mod durable;
pub mod filter;
pub mod flows;
pub mod ports;
pub mod safety;
pub mod screen;
pub mod state;
