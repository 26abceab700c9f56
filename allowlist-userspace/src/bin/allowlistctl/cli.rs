//! The commands and options of allowlistctl, as clap reads them; their help text is the
//! manual.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use allowlist_userspace::ports::PortSpec;
use clap::{Parser, Subcommand};

use crate::input::{parse_confirm, parse_expiry, parse_ports, Expiry, Ports};

/// Manage the allowlist enforced by allowlistd.
#[derive(Parser)]
#[command(
    name = "allowlistctl",
    version,
    after_help = "Examples:
  allowlistctl add 203.0.113.0/24 --description \"office VPN\"
  allowlistctl add 198.51.100.7 --expires 2h --description \"dynamic worker\"
  allowlistctl list
  allowlistctl check 203.0.113.9
  allowlistctl import allowlist.csv --dry-run
  allowlistctl activate --confirm 60s && allowlistctl confirm

Exit codes: 0 ok, 1 error, 2 usage, 3 refused for safety (the change would cut off
your SSH session or an established connection; --force overrides)."
)]
pub struct Cli {
    /// The daemon's control socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = "/run/allowlist/control.sock"
    )]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Add an address or network; if it is listed already, update its description
    /// (cleared when none is given).
    #[command(after_help = "Examples:
  allowlistctl add 203.0.113.0/24 --description \"office VPN\"
  allowlistctl add 2001:db8:1234::/48
  allowlistctl add 198.51.100.7 --expires 2h   # leaves the kernel in two hours
  allowlistctl add 192.0.2.10 --ports 22/tcp,5985-5986/tcp -d \"deploy host: SSH, WinRM\"
  allowlistctl add 192.0.2.10 --ports all --expires never   # widen and keep

Adding a listed network changes only what you give: its description, ports and expiry
stay as they are unless -d, --ports or --expires is given (-d \"\" clears the
description). 0.0.0.0/0 and ::/0 allow every source and need --force.")]
    Add {
        /// IPv4/IPv6 address or CIDR network.
        network: String,
        /// Free text; -d \"\" clears it.
        #[arg(long, short)]
        description: Option<String>,
        /// Make the entry temporary: 30s, 15m, 2h, 7d, … (at most 365d), or `never`.
        #[arg(long, value_parser = parse_expiry)]
        expires: Option<Expiry>,
        /// Limit the entry to destination ports: 22/tcp,5985-5986/tcp, or `all`.
        #[arg(long, value_parser = parse_ports)]
        ports: Option<Ports>,
        /// List 0.0.0.0/0 or ::/0, which allow every source, or narrow an entry even if
        /// that cuts off your session or an established connection.
        #[arg(long)]
        force: bool,
    },
    /// Remove an address or network added with allowlistctl.
    #[command(after_help = "Examples:
  allowlistctl remove 203.0.113.0/24
  allowlistctl remove 198.51.100.7 --force   # even if it cuts off a live session")]
    Remove {
        network: String,
        /// Remove even if this cuts off your session or an established connection.
        #[arg(long)]
        force: bool,
    },
    /// Show every entry: network, description, origin, added, expires.
    #[command(
        after_help = "Examples:\n  allowlistctl list\n  allowlistctl list --json | jq '.[].network'"
    )]
    List {
        #[arg(long)]
        json: bool,
    },
    /// The verdict the kernel gives a source now, and the entry that decides it.
    #[command(
        after_help = "Examples:\n  allowlistctl check 203.0.113.9\n  allowlistctl check 192.0.2.10 --port 22/tcp\n  allowlistctl check 2001:db8::1 --json"
    )]
    Check {
        address: IpAddr,
        /// Judge a packet to this destination port, e.g. 22/tcp.
        #[arg(long)]
        port: Option<PortSpec>,
        #[arg(long)]
        json: bool,
    },
    /// Import a CSV file with the header `ip_address,description[,ports,expires_at]`,
    /// as one transaction.
    #[command(after_help = "Examples:
  allowlistctl import allowlist.csv
  allowlistctl import allowlist.csv --replace --dry-run   # show what would change
  allowlistctl export > backup.csv && allowlistctl import backup.csv --replace

A row whose network is listed updates its description (cleared when empty), and its
ports and expiry when the file has those columns (empty: all ports, no expiry). Rows
that expired already are left out. Any bad row: nothing changes and every bad row is
listed with its line number.")]
    Import {
        /// The CSV file, or - for standard input.
        file: PathBuf,
        /// Make the file the whole list (entries from the config file stay).
        #[arg(long)]
        replace: bool,
        /// Print what would be added, updated and removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Go ahead even if --replace cuts off your session or a connection, or a row
        /// lists 0.0.0.0/0 or ::/0.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Write the list as CSV (ip_address,description,ports,expires_at) to standard
    /// output; `import` reads it back as it was.
    #[command(after_help = "Example:\n  allowlistctl export > allowlist.csv")]
    Export,
    /// Enforce: drop IP traffic from unlisted sources. Refused while the list is empty.
    #[command(after_help = "Examples:
  allowlistctl activate
  allowlistctl activate --confirm 60s   # reverts in 60 s unless `allowlistctl confirm`")]
    Activate {
        /// Revert automatically unless `allowlistctl confirm` arrives within this time
        /// (at most 24h).
        #[arg(long, value_parser = parse_confirm)]
        confirm: Option<Duration>,
        /// Activate even if this cuts off your session or an established connection.
        #[arg(long)]
        force: bool,
    },
    /// Stop filtering; the list is kept.
    #[command(after_help = "Example:\n  allowlistctl deactivate")]
    Deactivate,
    /// Pass everything but count what enforcing would drop (see `stats`).
    #[command(after_help = "Example:\n  allowlistctl monitor && sleep 600 && allowlistctl stats")]
    Monitor,
    /// Keep a pending `activate --confirm`.
    #[command(
        after_help = "Example:\n  allowlistctl activate --confirm 60s && allowlistctl confirm"
    )]
    Confirm,
    /// Mode, protected interfaces (with the XDP mode attached) and entries per family.
    #[command(after_help = "Example:\n  allowlistctl status --json | jq .mode")]
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Packets and bytes by verdict reason, summed over CPUs.
    #[command(after_help = "Example:\n  watch -n1 allowlistctl stats")]
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Re-read the daemon's config file (like SIGHUP). A bad file is refused, state kept.
    #[command(
        after_help = "Example:\n  $EDITOR /etc/allowlist/allowlist.toml && allowlistctl reload"
    )]
    Reload,
    /// Print shell completions.
    #[command(
        after_help = "Example:\n  allowlistctl completions bash > /etc/bash_completion.d/allowlistctl"
    )]
    Completions { shell: clap_complete::Shell },
}
