//! Control CLI for allowlistd: see `allowlistctl --help`.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use allowlist_userspace::control::{self, Reply, Request, Stats, Status};
use clap::{Parser, Subcommand};

/// Exit codes, documented in README.
const EXIT_ERROR: u8 = 1;

/// Manage the allowlist enforced by allowlistd.
#[derive(Parser)]
#[command(
    version,
    after_help = "Examples:
  allowlistctl status
  allowlistctl stats --json
  allowlistctl --socket /run/allowlist/control.sock reload

Exit codes: 0 ok, 1 error, 2 usage."
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
    /// Re-read the daemon's config file. A bad file is refused and the running state kept.
    #[command(
        after_help = "Example:\n  $EDITOR /etc/allowlist/allowlist.toml && allowlistctl reload"
    )]
    Reload,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (request, json) = match cli.command {
        Command::Status { json } => (Request::Status, json),
        Command::Stats { json } => (Request::Stats, json),
        Command::Reload => (Request::Reload, false),
    };
    let reply = match control::request(&cli.socket, &request, Duration::from_secs(120)) {
        Ok(reply) => reply,
        Err(error) => {
            eprintln!("allowlistctl: {error}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    if !reply.ok {
        eprintln!(
            "allowlistctl: {}",
            reply
                .error
                .as_deref()
                .unwrap_or("the daemon refused without a reason")
        );
        return ExitCode::from(EXIT_ERROR);
    }
    print_reply(&reply, json);
    ExitCode::SUCCESS
}

fn print_reply(reply: &Reply, json: bool) {
    if let Some(status) = &reply.status {
        if json {
            print_json(status);
        } else {
            print_status(status);
        }
    } else if let Some(stats) = &reply.stats {
        if json {
            print_json(stats);
        } else {
            print_stats(stats);
        }
    } else if let Some(message) = &reply.message {
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
    let width = stats.counters.keys().map(String::len).max().unwrap_or(0);
    println!("{:<width$}  {:>14}  {:>16}", "reason", "packets", "bytes");
    for (reason, counter) in &stats.counters {
        println!(
            "{reason:<width$}  {:>14}  {:>16}",
            counter.packets, counter.bytes
        );
    }
}
