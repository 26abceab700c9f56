//! Test harness for allowlist's end-to-end tests.
//!
//! A test builds a [`Topology`] (a host namespace with two client namespaces hanging off
//! it by veth pairs), starts the real `allowlistd` in the host namespace with a
//! [`Daemon`] and a config from [`ConfigBuilder`] (most start from
//! [`ConfigBuilder::allowed_client`]), sends real traffic from the clients with the
//! helpers in [`traffic`], and asserts on what arrived and on the daemon's counters.
//! VLAN-tagged traffic is written as raw frames and observed with a packet tap ([`raw`]),
//! because the test kernel has no 802.1Q support to build VLAN interfaces from. Every
//! hand-built frame — those, the packet-level tests', the fuzzer's, the benchmarks' — is
//! laid out by [`frames`].
//!
//! Tests of the installed package point the daemon at a [`NotifyListener`], which stands
//! in for systemd's end of sd_notify, and run its unit under a [`Systemd`] of their own.
//!
//! Everything is named uniquely per process and per object, and everything is torn down
//! on `Drop`, so tests run in parallel and clean up after themselves even when they fail.
//! The examples (the benchmark runner, the demo) are built on the same harness and catch
//! Ctrl-C with [`interrupt`] so that their guards are dropped too. All of it needs root.
#![warn(unused_crate_dependencies)]

pub mod daemon;
pub mod dns_server;
pub mod etcd;
pub mod feed_server;
pub mod frames;
pub mod interrupt;
pub mod netns;
pub mod notify;
pub mod packet_fuzz;
pub mod probe;
pub mod process;
pub mod raw;
pub mod reference;
pub mod rng;
pub mod systemd;
pub mod test_filter;
pub mod topology;
pub mod traffic;

/// The config's `mode`, `xdp_mode` and `encapsulated_ip`, as the daemon reads them.
pub use allowlist_userspace::config::{EncapsulatedIp, Mode, XdpMode};
pub use daemon::{
    as_user, Binaries, ConfigBuilder, Counter, Daemon, DaemonFiles, ListedEntry, Stats,
};
pub use dns_server::DnsServer;
pub use feed_server::FeedServer;
pub use frames::VlanTag;
pub use netns::{in_netns, Netns};
pub use notify::{Notification, NotifyListener};
pub use probe::{Client, Probe, Verdict};
pub use process::{assert_exit_code, connect_as, wait_until};
pub use raw::{arp_request, send_frames, send_raw_frames, Encapsulation, FrameTap, UdpFrame};
pub use systemd::Systemd;
pub use topology::{Link, Topology, VlanLink, ALLOWED_LINK, BLOCKED_LINK, VLAN_LINK};
pub use traffic::{
    neighbour_resolved, ping, ping_from, tcp_connects, udp_ipv4_frame_len, udp_send,
    vlan_udp_ipv4_frame_len, SourceRecord, TcpServer, UdpSink, UdpStream,
};
