//! The commands and options of allowlistctl, as clap reads them; their help text is the
//! manual.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use allowlist_userspace::{allowlist::SetName, ports::PortSpec};
use clap::{Parser, Subcommand};

use crate::input::{
    parse_confirm, parse_expiry, parse_interval, parse_ports, parse_since, Expiry, Ports,
};

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
  allowlistctl activate --confirm 120s   # then, from a NEW ssh session: allowlistctl confirm

Exit codes: 0 ok, 1 error, 2 usage, 3 refused for safety (the change would cut off
your SSH session or an established connection; --force overrides), 4 `check`: the
kernel drops that source now.

Environment: ALLOWLIST_SOCKET is the socket when --socket is not given."
)]
pub struct Cli {
    /// The daemon's control socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "ALLOWLIST_SOCKET",
        default_value = "/run/allowlist/control.sock"
    )]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum FeedsAction {
    /// Fetch every feed (or NAME) now; returns once the kernel judges by what they
    /// answered, or says why a feed kept its last good list (exit 1).
    Refresh {
        /// The feed to fetch (default: every fetched feed).
        name: Option<SetName>,
        /// Apply even if the new list cuts off your session or an established
        /// connection.
        #[arg(long)]
        force: bool,
    },
    /// Apply the refresh of NAME that was held for removing more than max_shrink of
    /// its entries.
    Accept {
        name: SetName,
        /// Apply even if it cuts off your session or an established connection.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum FleetAction {
    /// Make FILE (CSV: ip_address,description) the whole of fleet set NAME, in one etcd
    /// transaction: every host following NAME gets all of it or none of it.
    Push {
        /// The CSV file, or - for standard input.
        file: PathBuf,
        #[arg(long, value_name = "NAME")]
        set: SetName,
        /// Print what would be added, updated and removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print what changed (or would) as a JSON object.
        #[arg(long)]
        json: bool,
        /// Push a file with no entries: empties the set on every host that follows it.
        #[arg(long)]
        allow_empty: bool,
    },
    /// Add addresses or networks to fleet set NAME (or change their description).
    Add {
        #[arg(required = true, value_name = "NETWORK")]
        networks: Vec<String>,
        #[arg(long, value_name = "NAME")]
        set: SetName,
        #[arg(long, short, default_value = "")]
        description: String,
    },
    /// Remove addresses or networks from fleet set NAME; refused if one is not in it.
    Remove {
        #[arg(required = true, value_name = "NETWORK")]
        networks: Vec<String>,
        #[arg(long, value_name = "NAME")]
        set: SetName,
    },
    /// Every host of the fleet: the revision it applied, how far behind the last change
    /// it is, held changes, its last error, when it was last seen.
    Status {
        #[arg(long)]
        json: bool,
    },
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
  allowlistctl add --host ci.example.com --ports 22/tcp    # a DNS name's A and AAAA records

Adding a listed network changes only what you give: its description, ports and expiry
stay as they are unless -d, --ports or --expires is given (-d \"\" clears the
description). 0.0.0.0/0 and ::/0 allow every source and need --force.")]
    Add {
        /// IPv4/IPv6 address or CIDR network, e.g. 203.0.113.7 or 2001:db8::/48.
        #[arg(required_unless_present = "host")]
        network: Option<String>,
        /// Instead of an address: a DNS name whose A and AAAA records are allowed and
        /// followed as their TTL runs out (set and origin `dns NAME`; kept across
        /// restarts; the last good answer stays while resolving fails).
        #[arg(long, value_name = "NAME", conflicts_with_all = ["network", "expires", "set", "force"])]
        host: Option<String>,
        /// What the entry is for, shown by `list` and exported (at most 4096 bytes);
        /// -d "" clears it.
        #[arg(long, short, value_name = "TEXT")]
        description: Option<String>,
        /// Make the entry temporary: 30s, 15m, 2h, 7d, … (at most 365d), or `never`.
        #[arg(long, value_name = "DURATION", value_parser = parse_expiry)]
        expires: Option<Expiry>,
        /// Limit the entry to destination ports: 22/tcp,5985-5986/tcp, or `all`.
        #[arg(long, value_name = "PORTS", value_parser = parse_ports)]
        ports: Option<Ports>,
        /// The set the entry belongs to (default: `default`). Sets let several
        /// scripts or teams each own their entries; `config`, `always` and feeds are
        /// read-only.
        #[arg(long, value_name = "NAME", default_value = "default")]
        set: SetName,
        /// List 0.0.0.0/0 or ::/0, which allow every source, or narrow an entry even if
        /// that cuts off your session or an established connection.
        #[arg(long)]
        force: bool,
    },
    /// Remove an address or network added with allowlistctl from its set (`default`
    /// unless --set names another).
    #[command(after_help = "Examples:
  allowlistctl remove 203.0.113.0/24
  allowlistctl remove 198.51.100.7 --if-present   # in scripts: absent is fine
  allowlistctl remove 198.51.100.7 --force        # even if it cuts off a live session
  allowlistctl remove --host ci.example.com       # a name added with add --host

Removing a network that is not listed is an error (exit 1) unless --if-present; one the
config file lists is always an error: edit the file and reload.")]
    Remove {
        /// The listed address or network, as `list` shows it.
        #[arg(required_unless_present = "host")]
        network: Option<String>,
        /// Instead of an address: a DNS name added with `add --host`.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["network", "set"])]
        host: Option<String>,
        /// Succeed without change when the network is not listed.
        #[arg(long)]
        if_present: bool,
        /// The set to remove it from (default: `default`).
        #[arg(long, value_name = "NAME", default_value = "default")]
        set: SetName,
        /// Remove even if this cuts off your session or an established connection.
        #[arg(long)]
        force: bool,
    },
    /// Show every entry: network, ports, description, origin, set, added, expires, and the
    /// packets it admitted and when it last did.
    #[command(after_help = "Examples:
  allowlistctl list
  allowlistctl list --set ci
  allowlistctl list --unused 30d          # stale entries: nothing admitted for 30 days
  allowlistctl list --json | jq '.[] | select(.hits.packets == 0) | .network'

An entry counts what the kernel admits by it: the packets whose longest listed match it
is. An entry inside another that allows at least as much is never that match (the
kernel holds only the outer one), so it shows `-`, as do entries beyond the kernel's
16,384 counters.")]
    List {
        /// Print a JSON array of entries instead of a table.
        #[arg(long)]
        json: bool,
        /// Show only entries that admitted nothing for this long (and were listed at
        /// least this long): 7d, 30d, 12h, …
        #[arg(long, value_name = "DURATION", value_parser = parse_since)]
        unused: Option<Duration>,
        /// Only this set's entries (`default`, a name given with --set, `config`,
        /// `always`, or a feed's name).
        #[arg(long, value_name = "NAME")]
        set: Option<SetName>,
    },
    /// The verdict the kernel gives a source now, and the entry that decides it.
    /// Exits 0 when it passes, 4 when it is dropped (like `ipset test`).
    #[command(after_help = "Examples:
  allowlistctl check 203.0.113.9
  allowlistctl check 192.0.2.10 --port 22/tcp
  allowlistctl check 2001:db8::1 --json
  allowlistctl check 203.0.113.9 >/dev/null || echo \"203.0.113.9 is dropped\"

In monitor mode nothing is dropped (exit 0); the reason says what enforce would do.")]
    Check {
        /// The source address to judge.
        address: IpAddr,
        /// Judge a packet to this destination port, e.g. 22/tcp.
        #[arg(long, value_name = "PORT/PROTO")]
        port: Option<PortSpec>,
        /// Print the verdict as a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Import a CSV file with the header `ip_address,description[,ports,expires_at]`,
    /// as one transaction.
    #[command(after_help = "Examples:
  allowlistctl import allowlist.csv
  allowlistctl import allowlist.csv --replace --dry-run   # show what would change
  allowlistctl export > backup.csv && allowlistctl import backup.csv --replace
  curl -s https://ci.example/ips.csv | allowlistctl import - --set ci --replace

A row whose network is listed updates its description (cleared when empty), and its
ports and expiry when the file has those columns (empty: all ports, no expiry). Rows
that expired already are left out. Any bad row: nothing changes and every bad row is
listed with its line number.")]
    Import {
        /// The CSV file, or - for standard input.
        file: PathBuf,
        /// The set the rows go to (default: `default`).
        #[arg(long, value_name = "NAME", default_value = "default")]
        set: SetName,
        /// Make the file the whole set: its entries the file does not name are
        /// removed; other sets and the config file's entries stay.
        #[arg(long)]
        replace: bool,
        /// Print what would be added, updated and removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Go ahead even if --replace cuts off your session or a connection, or a row
        /// lists 0.0.0.0/0 or ::/0.
        #[arg(long)]
        force: bool,
        /// Print what changed (or would) as a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Write the list as CSV (ip_address,description,ports,expires_at) to standard
    /// output; `import` reads it back as it was.
    #[command(after_help = "Examples:
  allowlistctl export > allowlist.csv
  allowlistctl export --set ci > ci.csv && allowlistctl import ci.csv --set ci --replace

Without --set, every entry but the [[always]] ones and the feeds' is written (a network
in several sets once per set).")]
    Export {
        /// Only this set's entries.
        #[arg(long, value_name = "NAME")]
        set: Option<SetName>,
    },
    /// Enforce: drop IP traffic from unlisted sources. Refused while the list is empty.
    #[command(after_help = "Examples:
  allowlistctl activate
  allowlistctl activate --confirm 120s

With --confirm, open a NEW ssh session to the host within the time and run
`allowlistctl confirm` from it: getting in proves the change did not lock you out.
Unconfirmed, the kernel itself goes back to the previous mode at the deadline, even if
the daemon is dead or the host's userspace hangs.")]
    Activate {
        /// Revert automatically unless `allowlistctl confirm` arrives within this time
        /// (at most 24h).
        #[arg(long, value_name = "DURATION", value_parser = parse_confirm)]
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
    #[command(after_help = "Example:
  allowlistctl activate --confirm 120s     # in your current ssh session
  ssh admin@host allowlistctl confirm      # from a new one: you can still get in")]
    Confirm,
    /// The feeds of the config file: entries, last fetch, last change, errors, next
    /// refresh; `feeds refresh [NAME]` fetches now, `feeds accept NAME` applies a held
    /// refresh.
    #[command(after_help = "Examples:
  allowlistctl feeds
  allowlistctl feeds refresh harness-ci   # fetch now; returns once the kernel follows
  allowlistctl feeds accept harness-ci    # apply a refresh held for removing too much
  allowlistctl feeds --json | jq '.[] | select(.error)'

A fetch that fails, or a body that does not parse or is empty (unless allow_empty),
keeps the feed's last good list; `feeds` shows the error. A refresh removing more than
max_shrink (default 50%) of a feed's entries is held until `feeds accept`.")]
    Feeds {
        /// Print a JSON array of feeds instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<FeedsAction>,
    },
    /// The fleet in etcd ([fleet] of the config file): push, add to and remove from
    /// fleet sets, and see which host enforces what. Talks to etcd, not to the daemon,
    /// so it works from any machine with the config's [fleet] section and etcd access.
    #[command(after_help = "Examples:
  allowlistctl fleet push office.csv --set office --dry-run
  allowlistctl fleet push office.csv --set office      # one transaction: all or nothing
  allowlistctl fleet add 203.0.113.0/24 --set office -d \"VPN\"
  allowlistctl fleet remove 203.0.113.0/24 --set office
  allowlistctl fleet status
  allowlistctl fleet status --json | jq '.hosts[] | select(.lag > 0)'

A host whose sessions a change would cut off holds it (shown in `fleet status`) and
keeps the last list it applied.")]
    Fleet {
        /// The config file whose [fleet] section names etcd and the prefix.
        #[arg(
            long,
            value_name = "PATH",
            env = "ALLOWLIST_CONFIG",
            default_value = "/etc/allowlist/allowlist.toml"
        )]
        config: PathBuf,
        #[command(subcommand)]
        action: FleetAction,
    },
    /// Mode, protected interfaces (with the XDP mode attached) and entries per family.
    #[command(after_help = "Example:\n  allowlistctl status --json | jq .mode")]
    Status {
        /// Print the status as a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Packets and bytes by verdict reason, summed over CPUs and interfaces (or of one
    /// interface): passes, then what monitor would have dropped, then drops.
    #[command(
        after_help = "Examples:\n  watch -n1 allowlistctl stats\n  allowlistctl stats --interface eth0 --watch\n  allowlistctl stats --json | jq .counters.dropped_not_listed.packets\n  allowlistctl stats --json | jq '.interfaces.eth0.dropped_not_listed.packets'"
    )]
    Stats {
        /// Only what this interface counted (an interface the daemon is attached to).
        #[arg(long, value_name = "NAME")]
        interface: Option<String>,
        /// Show reasons that counted nothing too.
        #[arg(long)]
        all: bool,
        /// Print every counter as a JSON object (zeros included).
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Refresh every --interval with packets/s and bits/s per reason, in place on a
        /// terminal (like `xdp-filter poll`); Ctrl-C ends it.
        #[arg(long)]
        watch: bool,
        /// How often --watch refreshes: 1s, 500ms, 5s, …
        #[arg(long, value_name = "DURATION", value_parser = parse_interval, default_value = "1s", requires = "watch")]
        interval: Duration,
    },
    /// The sources dropped most, from the kernel's table of dropped sources: with reason,
    /// interface, packets and when last seen. --would-drop: those monitor mode passed but
    /// enforce would drop, i.e. whom enforcing would cut off.
    #[command(after_help = "Examples:
  allowlistctl top
  allowlistctl top --since 10m --limit 50
  allowlistctl top --would-drop                    # in monitor mode: whom enforce would cut off
  allowlistctl top --would-drop --csv > missing.csv && allowlistctl import missing.csv
  allowlistctl top --json | jq '.[0].source'

Packets count since the kernel's table first held the source; --since selects sources
by when they were last seen. The table holds `dropped_sources` sources (config, default
4096); when it is full the least recently dropped source makes room.")]
    Top {
        /// Sources that monitor mode passed but enforce would drop.
        #[arg(long)]
        would_drop: bool,
        /// Only sources seen within this long: 30s, 10m, 2h, 7d, …
        #[arg(long, value_name = "DURATION", value_parser = parse_since)]
        since: Option<Duration>,
        /// Show at most this many sources.
        #[arg(long, value_name = "N", default_value_t = 20)]
        limit: usize,
        /// Print a JSON array of sources instead of a table.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// Print the sources as CSV (ip_address,description) that `import` accepts, one
        /// row per source, so that they can be listed.
        #[arg(long, conflicts_with = "watch")]
        csv: bool,
        /// Refresh every --interval, in place on a terminal, with packets/s per source;
        /// Ctrl-C ends it.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
        /// How often --watch refreshes: 1s, 500ms, 5s, …
        #[arg(long, value_name = "DURATION", value_parser = parse_interval, default_value = "1s", requires = "watch")]
        interval: Duration,
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
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// `--help` is the manual: an option or argument without help text is a hole in it.
    #[test]
    fn every_argument_of_every_command_has_help() {
        let mut missing = Vec::new();
        let root = Cli::command();
        let mut commands = vec![root.clone()];
        commands.extend(root.get_subcommands().cloned());
        for command in &commands {
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() {
                    missing.push(format!("{} {}", command.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
