//! Control CLI for allowlistd: see `allowlistctl --help`.

use std::{
    fs::File,
    io::{self, IsTerminal, Read},
    net::IpAddr,
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use allowlist_userspace::{
    allowlist::{Entry, ImportPlan},
    clock::{self, format_time},
    config::{parse_network_noting, Mode},
    control::{self, CheckResult, Reply, Request, Safety, Stats, Status},
    csv_format,
    ports::{self, PortSpec},
};
use clap::{CommandFactory, Parser, Subcommand};
use ipnet::IpNet;

/// Exit codes, documented in README.
const EXIT_ERROR: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_REFUSED_FOR_SAFETY: u8 = 3;

/// Manage the allowlist enforced by allowlistd.
#[derive(Parser)]
#[command(
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
struct Cli {
    /// The daemon's control socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = "/run/allowlist/control.sock"
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn error(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_ERROR,
            message: message.into(),
        }
    }
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
}

fn main() -> ExitCode {
    // `allowlistctl list | head` must end quietly, like other Unix tools, not panic.
    // SAFETY: restoring the default disposition of a signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("allowlistctl: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let socket = cli.socket;
    let ask = |request: &Request| ask(&socket, request);
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "allowlistctl",
                &mut io::stdout(),
            );
            Ok(())
        }
        Command::Add {
            network,
            description,
            expires,
            ports,
            force,
        } => {
            let network = network_argument(&network)?;
            let reply = ask(&Request::Add {
                network,
                description,
                expires_in_secs: match expires {
                    Some(Expiry::After(duration)) => Some(duration.as_secs()),
                    _ => None,
                },
                never_expires: matches!(expires, Some(Expiry::Never)),
                ports: ports.map(|Ports(ports)| ports),
                safety: safety(force),
            })?;
            print_message(&reply);
            Ok(())
        }
        Command::Remove { network, force } => {
            let network = network_argument(&network)?;
            print_message(&ask(&Request::Remove {
                network,
                safety: safety(force),
            })?);
            Ok(())
        }
        Command::List { json } => {
            let reply = ask(&Request::List)?;
            let entries = reply.entries.unwrap_or_default();
            if json {
                print_json(&entries.iter().map(EntryView::from).collect::<Vec<_>>());
            } else {
                print_entries(&entries);
            }
            Ok(())
        }
        Command::Check {
            address,
            port,
            json,
        } => {
            let reply = ask(&Request::Check { address, port })?;
            let check = reply
                .check
                .ok_or_else(|| Failure::error("the daemon sent no verdict"))?;
            if json {
                print_json(&CheckView::from(&check));
            } else {
                print_check(&check);
            }
            Ok(())
        }
        Command::Import {
            file,
            replace,
            dry_run,
            force,
            json,
        } => {
            let rows = read_csv(&file)?;
            let reply = ask(&Request::Import {
                rows,
                replace,
                dry_run,
                safety: safety(force),
            })?;
            let plan = reply.import.clone().unwrap_or_default();
            if json {
                print_json(&plan);
            } else {
                print_message(&reply);
                if dry_run {
                    print_plan(&plan);
                }
            }
            Ok(())
        }
        Command::Export => {
            let reply = ask(&Request::Export)?;
            let entries = reply.entries.unwrap_or_default();
            let rows = entries
                .iter()
                .filter(|entry| entry.origin != allowlist_userspace::allowlist::Origin::Always);
            csv_format::write_rows(io::stdout().lock(), rows)
                .map_err(|error| Failure::error(format!("writing CSV: {error}")))
        }
        Command::Activate { confirm, force } => {
            let request = Request::SetMode {
                mode: Mode::Enforce,
                confirm_secs: confirm.map(|d| d.as_secs()),
                safety: safety(force),
            };
            print_message(&ask(&request)?);
            Ok(())
        }
        Command::Deactivate => set_mode(&socket, Mode::Off),
        Command::Monitor => set_mode(&socket, Mode::Monitor),
        Command::Confirm => {
            print_message(&ask(&Request::Confirm)?);
            Ok(())
        }
        Command::Status { json } => {
            let status = ask(&Request::Status)?
                .status
                .ok_or_else(|| Failure::error("the daemon sent no status"))?;
            if json {
                print_json(&status);
            } else {
                print_status(&status);
            }
            Ok(())
        }
        Command::Stats { json } => {
            let stats = ask(&Request::Stats)?
                .stats
                .ok_or_else(|| Failure::error("the daemon sent no counters"))?;
            if json {
                print_json(&stats);
            } else {
                print_stats(&stats);
            }
            Ok(())
        }
        Command::Reload => {
            print_message(&ask(&Request::Reload)?);
            Ok(())
        }
    }
}

fn set_mode(socket: &std::path::Path, mode: Mode) -> Result<(), Failure> {
    let reply = ask(
        socket,
        &Request::SetMode {
            mode,
            confirm_secs: None,
            safety: safety(false),
        },
    )?;
    print_message(&reply);
    Ok(())
}

/// Sends a request; a refusal becomes a Failure with the documented exit code.
fn ask(socket: &std::path::Path, request: &Request) -> Result<Reply, Failure> {
    let reply = control::request(socket, request, Duration::from_secs(600))
        .map_err(|error| Failure::error(error.to_string()))?;
    if reply.ok {
        return Ok(reply);
    }
    let message = reply
        .error
        .clone()
        .unwrap_or_else(|| "the daemon refused without a reason".into());
    Err(Failure {
        code: if reply.refused_for_safety.is_some() {
            EXIT_REFUSED_FOR_SAFETY
        } else {
            EXIT_ERROR
        },
        message,
    })
}

/// The caller's SSH session as `SSH_CONNECTION` gives it (`CLIENT_IP CLIENT_PORT
/// SERVER_IP SERVER_PORT`): the client address and the local port the session uses, so
/// the daemon can refuse to cut it off.
fn safety(force: bool) -> Safety {
    let connection = std::env::var("SSH_CONNECTION").unwrap_or_default();
    let fields: Vec<&str> = connection.split_whitespace().collect();
    let caller = fields.first().and_then(|client| client.parse().ok());
    let caller_port = fields.get(3).and_then(|port| port.parse().ok());
    Safety {
        caller,
        caller_port,
        force,
    }
}

/// The network an argument names; what differs from what was typed (host bits, an
/// IPv4-mapped address) is said on stderr.
fn network_argument(given: &str) -> Result<IpNet, Failure> {
    let (network, note) = parse_network_noting(given).map_err(Failure::usage)?;
    if let Some(note) = note {
        eprintln!("allowlistctl: note: {}", printable(&note));
    }
    Ok(network)
}

/// `--expires`: a duration from now, or `never`.
#[derive(Clone, Copy, Debug)]
enum Expiry {
    After(Duration),
    Never,
}

/// `--ports`: a list, or `all` (empty).
#[derive(Clone, Debug)]
struct Ports(Vec<PortSpec>);

fn parse_ports(given: &str) -> Result<Ports, String> {
    if given.trim().eq_ignore_ascii_case("all") {
        return Ok(Ports(Vec::new()));
    }
    let ports = ports::parse_list(given)?;
    if ports.is_empty() {
        return Err("no ports given; use e.g. 22/tcp,5985-5986/tcp, or `all`".into());
    }
    ports::check_kernel_fit(&ports)?;
    Ok(Ports(ports))
}

fn parse_duration(given: &str, what: &'static str, max: Duration) -> Result<Duration, String> {
    let duration = humantime::parse_duration(given)
        .map_err(|error| format!("{error}; use e.g. 30s, 15m, 2h, 7d"))?;
    // Sub-second durations round up: "500ms" means "soon", not "never".
    let secs = duration.as_secs().max(1);
    clock::check_duration(what, secs, max).map_err(|error| error.to_string())?;
    Ok(Duration::from_secs(secs))
}

fn parse_expiry(given: &str) -> Result<Expiry, String> {
    if given.trim().eq_ignore_ascii_case("never") {
        return Ok(Expiry::Never);
    }
    parse_duration(given, "--expires", clock::MAX_EXPIRY).map(Expiry::After)
}

fn parse_confirm(given: &str) -> Result<Duration, String> {
    parse_duration(given, "--confirm", clock::MAX_CONFIRM)
}

/// Reads and validates the whole file before anything is sent: any bad row, nothing
/// changes. Notes on rows (host bits, expired entries left out) go to stderr. Shows a
/// progress bar on a terminal (files of a million rows take a while).
fn read_csv(file: &PathBuf) -> Result<Vec<allowlist_userspace::allowlist::ImportRow>, Failure> {
    const SHOWN: usize = 50;
    let shown = file.display().to_string();
    let (reader, size): (Box<dyn Read>, u64) = if shown == "-" {
        (Box::new(io::stdin().lock()), 0)
    } else {
        let opened =
            File::open(file).map_err(|error| Failure::error(format!("{shown}: {error}")))?;
        let size = opened.metadata().map(|meta| meta.len()).unwrap_or(0);
        (Box::new(opened), size)
    };
    let reader: Box<dyn Read> = if io::stderr().is_terminal() && size > 0 {
        let bar = indicatif::ProgressBar::new(size).with_message(format!("reading {shown}"));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Box::new(bar.wrap_read(reader))
    } else {
        reader
    };
    let read = csv_format::read_rows(reader, clock::now()).map_err(|bad| {
        let mut message = format!("{shown}: {} bad row(s); nothing was imported:", bad.len());
        for row in bad.iter().take(SHOWN) {
            message.push_str(&format!(
                "\n  line {}: {}",
                row.line,
                printable(&row.problem)
            ));
        }
        if bad.len() > SHOWN {
            message.push_str(&format!("\n  … and {} more", bad.len() - SHOWN));
        }
        Failure::error(message)
    })?;
    for (line, note) in read.notes.iter().take(SHOWN) {
        eprintln!("allowlistctl: note: {shown}:{line}: {}", printable(note));
    }
    if read.notes.len() > SHOWN {
        eprintln!(
            "allowlistctl: note: … and {} more notes",
            read.notes.len() - SHOWN
        );
    }
    Ok(read.rows)
}

/// Text from the list made safe for a terminal: control characters (an escape sequence
/// in a description could rewrite the screen) and bidirectional overrides (which could
/// make one address read as another) are shown escaped. `--json` keeps text exact.
fn printable(text: &str) -> String {
    let is_bidi_control = |c: char| matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    text.chars()
        .map(|c| {
            if c.is_control() || is_bidi_control(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// An entry as `list --json` shows it: times in RFC 3339.
#[derive(serde::Serialize)]
struct EntryView<'a> {
    network: IpNet,
    description: &'a str,
    /// Destination ports; empty means all.
    ports: Vec<String>,
    origin: String,
    added_at: String,
    expires_at: Option<String>,
}

impl<'a> From<&'a Entry> for EntryView<'a> {
    fn from(entry: &'a Entry) -> Self {
        EntryView {
            network: entry.network,
            description: &entry.description,
            ports: entry.ports.iter().map(ToString::to_string).collect(),
            origin: entry.origin.to_string(),
            added_at: format_time(entry.added_at),
            expires_at: entry.expires_at.map(format_time),
        }
    }
}

/// `check --json`: the verdict, with its entry shown as `list --json` shows entries.
#[derive(serde::Serialize)]
struct CheckView<'a> {
    address: IpAddr,
    mode: Mode,
    verdict: &'a str,
    reason: &'a str,
    entry: Option<EntryView<'a>>,
}

impl<'a> From<&'a CheckResult> for CheckView<'a> {
    fn from(check: &'a CheckResult) -> Self {
        CheckView {
            address: check.address,
            mode: check.mode,
            verdict: &check.verdict,
            reason: &check.reason,
            entry: check.entry.as_ref().map(EntryView::from),
        }
    }
}

fn table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(header.iter().map(|h| h.to_string()));
    table
}

fn print_entries(entries: &[Entry]) {
    let mut out = table(&[
        "NETWORK",
        "PORTS",
        "DESCRIPTION",
        "ORIGIN",
        "ADDED",
        "EXPIRES",
    ]);
    for entry in entries {
        let view = EntryView::from(entry);
        out.add_row(vec![
            view.network.to_string(),
            if view.ports.is_empty() {
                "all".to_string()
            } else {
                view.ports.join(",")
            },
            printable(view.description),
            view.origin,
            view.added_at,
            view.expires_at.unwrap_or_else(|| "-".into()),
        ]);
    }
    println!("{out}");
    println!("{} entries", entries.len());
}

fn print_check(check: &CheckResult) {
    let decided = match &check.entry {
        Some(entry) => format!(
            "listed by {} ({}origin {})",
            entry.network,
            if entry.description.is_empty() {
                String::new()
            } else {
                format!("\"{}\", ", printable(&entry.description))
            },
            entry.origin
        ),
        None => "not listed".into(),
    };
    let target = match check.port {
        Some(port) => format!("{} to {port}", check.address),
        None => check.address.to_string(),
    };
    let ports = match &check.allowed_ports {
        Some(ports) => format!(
            "; it may reach only {}",
            ports
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
        None => String::new(),
    };
    println!(
        "{target}: {} — {decided}{ports}; mode {}, counted as {}",
        check.verdict.to_uppercase(),
        check.mode,
        check.reason
    );
}

fn print_plan(plan: &ImportPlan) {
    for (what, networks) in [
        ("add", &plan.added),
        ("update", &plan.updated),
        ("remove", &plan.removed),
        ("keep (config file)", &plan.unchanged_config),
    ] {
        for network in networks {
            println!("  {what:<8} {network}");
        }
    }
}

fn print_message(reply: &Reply) {
    if let Some(message) = &reply.message {
        println!("{message}");
    }
}

fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(error) => eprintln!("allowlistctl: {error}"),
    }
}

fn print_status(status: &Status) {
    println!("mode:       {}", status.mode);
    if let Some(deadline) = status.confirm_deadline {
        println!(
            "            reverts at {} unless `allowlistctl confirm`",
            format_time(deadline)
        );
    }
    println!(
        "entries:    {} IPv4, {} IPv6 (after compiling)",
        status.entries.ipv4, status.entries.ipv6
    );
    println!("config:     {}", status.config);
    println!("pins:       {}", status.pin_path);
    println!("interfaces:");
    for interface in &status.interfaces {
        println!("  {:<16} {:?} XDP", interface.name, interface.xdp_mode);
    }
}

fn print_stats(stats: &Stats) {
    let mut out = table(&["REASON", "PACKETS", "BYTES"]);
    for (reason, counter) in &stats.counters {
        out.add_row(vec![
            reason.clone(),
            counter.packets.to_string(),
            counter.bytes.to_string(),
        ]);
    }
    println!("{out}");
}
