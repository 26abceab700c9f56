//! allowlist's userspace, in layers, each a module with one job:
//! config (read and validate) → allowlist (entries and the rules for changing them; state
//! keeps them durable, and attachments the XDP mode of each interface, through durable's
//! private, symlink-proof files) → compile (minimal prefix sets; verdict judges a packet
//! by them as the kernel does) → filter (the kernel maps, program and links, in
//! `filter/`; screen maps its bitmaps) → startup (what a start would enforce, also for
//! `allowlistd check`) → daemon (state transitions, requests and guards, over a Kernel
//! trait; instance keeps it alone on its pins and state) → control (the socket protocol)
//! and server (serving it; access and safety guard it, sockets reads the host's own
//! connections; service tells systemd where the daemon is in its life; capabilities checks
//! it may do its work). clock bounds every time an input can carry.
//! The binaries `allowlistd` and `allowlistctl` are thin shells over these.

// Dependencies of the binaries only (cargo has no per-binary dependencies), named here
// so that `unused_crate_dependencies` holds every other one to account.
use {
    anyhow as _, clap as _, clap_complete as _, comfy_table as _, indicatif as _,
    tracing_subscriber as _,
};

pub mod access;
pub mod allowlist;
pub mod attachments;
pub mod capabilities;
pub mod clock;
pub mod compile;
pub mod config;
pub mod control;
pub mod csv_format;
pub mod daemon;
pub mod durable;
pub mod feeds;
pub mod filter;
pub mod fleet;
pub mod instance;
pub mod metrics;
pub mod ports;
pub mod safety;
pub mod screen;
pub mod server;
pub mod service;
pub mod sockets;
pub mod startup;
pub mod state;
pub mod verdict;
