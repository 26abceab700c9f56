//! Control CLI for allowlistd: see `allowlistctl --help`.
//!
//! `cli` declares the commands and options, `input` reads what they name (networks,
//! durations, CSV files), `output` prints what the daemon answers; this file sends the
//! requests and maps refusals to exit codes.
// The library's dependencies are every binary's too; the library checks they are used.
#![allow(unused_crate_dependencies)]

mod cli;
mod fleet;
mod input;
mod output;

use std::{
    io::{self, IsTerminal as _, Write as _},
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use allowlist_userspace::{
    allowlist::Origin,
    config::Mode,
    control::{self, Reply, Request, Safety},
    csv_format,
};
use clap::{CommandFactory, Parser};

use cli::{Cli, Command, FeedsAction};
use input::{network_argument, stream_csv, Expiry, Ports};
use output::{
    print_check, print_entries, print_feeds, print_json, print_message, print_plan, print_stats,
    print_status, print_top, print_top_csv, render_stats_rates, render_top, CheckView, EntryView,
    TopView,
};

/// Exit codes, documented in README.
const EXIT_ERROR: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_REFUSED_FOR_SAFETY: u8 = 3;
/// `check`: the kernel drops packets from that source now (as `ipset test` fails).
const EXIT_CHECK_DROPS: u8 = 4;

/// A failure with the exit code it maps to.
pub struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    pub fn error(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_ERROR,
            message: message.into(),
        }
    }
    pub fn usage(message: impl Into<String>) -> Self {
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
            if !failure.message.is_empty() {
                eprintln!("allowlistctl: {}", failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let socket = cli.socket;
    let ask = |request: &Request| ask(&socket, request);
    let ask_stats = |interface: Option<&str>| ask_stats(&socket, interface);
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
            host: Some(host),
            description,
            ports,
            ..
        } => {
            let reply = ask(&Request::AddHost {
                host,
                description,
                ports: ports.map(|Ports(ports)| ports),
            })?;
            print_message(&reply);
            Ok(())
        }
        Command::Add {
            network,
            description,
            expires,
            ports,
            set,
            force,
            host: None,
        } => {
            let network = network_argument(network.as_deref().unwrap_or_default())?;
            let reply = ask(&Request::Add {
                set,
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
        Command::Remove {
            host: Some(host),
            if_present,
            force,
            ..
        } => {
            print_message(&ask(&Request::RemoveHost {
                host,
                if_present,
                safety: safety(force),
            })?);
            Ok(())
        }
        Command::Remove {
            network,
            if_present,
            set,
            force,
            host: None,
        } => {
            let network = network_argument(network.as_deref().unwrap_or_default())?;
            print_message(&ask(&Request::Remove {
                network,
                set,
                if_present,
                safety: safety(force),
            })?);
            Ok(())
        }
        Command::List { json, unused, set } => {
            let reply = ask(&Request::List)?;
            let hits: std::collections::BTreeMap<_, _> = reply
                .hits
                .unwrap_or_default()
                .into_iter()
                .map(|row| (row.network, row))
                .collect();
            let mut entries = reply.entries.unwrap_or_default();
            if let Some(set) = set {
                entries.retain(|entry| entry.set == set);
            }
            if let Some(unused) = unused {
                let since = allowlist_userspace::clock::now().saturating_sub(unused.as_secs());
                // Uncounted entries (no row) cannot be told unused.
                entries.retain(|entry| {
                    entry.added_at <= since
                        && hits
                            .get(&entry.network)
                            .is_some_and(|row| row.last_hit.is_none_or(|last| last < since))
                });
            }
            if json {
                print_json(
                    &entries
                        .iter()
                        .map(|entry| EntryView::from(entry).with_hits(hits.get(&entry.network)))
                        .collect::<Vec<_>>(),
                );
            } else {
                print_entries(&entries, &hits);
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
            if check.verdict == "drop" {
                // The verdict is on stdout already; the code is for scripts.
                return Err(Failure {
                    code: EXIT_CHECK_DROPS,
                    message: String::new(),
                });
            }
            Ok(())
        }
        Command::Import {
            file,
            set,
            replace,
            dry_run,
            force,
            json,
        } => {
            let mut connection = control::Connection::open(&socket, REPLY_TIMEOUT)
                .map_err(|error| Failure::error(error.to_string()))?;
            let header = Request::ImportStream {
                set,
                replace,
                dry_run,
                safety: safety(force),
                summary_only: !json && !dry_run,
            };
            connection
                .send(&header)
                .map_err(|error| Failure::error(error.to_string()))?;
            stream_csv(&file, &mut connection)?;
            let reply = answered(connection.reply())?;
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
        Command::Export { set } => {
            let reply = ask(&Request::Export)?;
            let entries = reply.entries.unwrap_or_default();
            let rows = entries.iter().filter(|entry| match &set {
                Some(set) => entry.set == *set,
                None => !matches!(
                    entry.origin,
                    Origin::Always | Origin::Feed | Origin::Dns | Origin::Fleet
                ),
            });
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
        Command::Stats {
            all,
            json: _,
            watch: true,
            interval,
            interface,
        } => {
            let mut previous: Option<(allowlist_userspace::control::Stats, Instant)> = None;
            watch_in_place(interval, || {
                let stats = ask_stats(interface.as_deref())?;
                let now = Instant::now();
                let text = render_stats_rates(
                    &stats,
                    previous
                        .as_ref()
                        .map(|(before, at)| (before, now.duration_since(*at))),
                    all,
                );
                previous = Some((stats, now));
                Ok(text)
            })
        }
        Command::Stats {
            all,
            json,
            interface,
            ..
        } => {
            let stats = ask_stats(interface.as_deref())?;
            if json {
                print_json(&stats);
            } else {
                print_stats(&stats, all);
            }
            Ok(())
        }
        Command::Fleet { config, action } => fleet::run(&config, action),
        Command::Feeds { json, action } => {
            let request = match action {
                None => Request::Feeds,
                Some(FeedsAction::Refresh { name, force }) => Request::FeedsRefresh {
                    name,
                    safety: safety(force),
                },
                Some(FeedsAction::Accept { name, force }) => Request::FeedsAccept {
                    name,
                    safety: safety(force),
                },
            };
            let reply = ask(&request)?;
            match reply.feeds {
                Some(feeds) if json => print_json(&feeds),
                Some(feeds) => print_feeds(&feeds),
                None => print_message(&reply),
            }
            Ok(())
        }
        Command::Reload => {
            print_message(&ask(&Request::Reload)?);
            Ok(())
        }
        Command::Top {
            would_drop,
            since,
            limit,
            watch: true,
            interval,
            ..
        } => {
            let request = Request::Top {
                would_drop,
                since_secs: since.map(|since| since.as_secs()),
                limit: Some(limit),
            };
            let mut previous: Option<(Vec<allowlist_userspace::control::DroppedRow>, Instant)> =
                None;
            watch_in_place(interval, || {
                let rows = ask(&request)?.top.unwrap_or_default();
                let now = Instant::now();
                let text = render_top(
                    &rows,
                    previous
                        .as_ref()
                        .map(|(before, at)| (before.as_slice(), now.duration_since(*at))),
                    would_drop,
                );
                previous = Some((rows, now));
                Ok(text)
            })
        }
        Command::Top {
            would_drop,
            since,
            limit,
            json,
            csv,
            ..
        } => {
            let rows = ask(&Request::Top {
                would_drop,
                since_secs: since.map(|since| since.as_secs()),
                limit: Some(limit),
            })?
            .top
            .unwrap_or_default();
            if json {
                print_json(&rows.iter().map(TopView::from).collect::<Vec<_>>());
            } else if csv {
                print_top_csv(io::stdout().lock(), &rows)
                    .map_err(|error| Failure::error(format!("writing CSV: {error}")))?;
            } else {
                print_top(&rows, would_drop);
            }
            Ok(())
        }
    }
}

/// `--watch`: shows `frame` every `interval` until interrupted; on a terminal each
/// frame replaces the last (cursor home, clear), elsewhere frames follow each other.
fn watch_in_place(
    interval: Duration,
    mut frame: impl FnMut() -> Result<String, Failure>,
) -> Result<(), Failure> {
    let terminal = io::stdout().is_terminal();
    loop {
        let text = frame()?;
        let stamp = allowlist_userspace::clock::format_time(allowlist_userspace::clock::now());
        let mut out = io::stdout().lock();
        let written = if terminal {
            write!(
                out,
                "\x1b[H\x1b[2J{stamp}, every {} (Ctrl-C ends)\n{text}",
                humantime::format_duration(interval)
            )
        } else {
            write!(out, "{stamp}\n{text}\n")
        };
        if written.and_then(|()| out.flush()).is_err() {
            // The reader went away (a closed pipe): nothing more to show.
            return Ok(());
        }
        drop(out);
        std::thread::sleep(interval);
    }
}

/// The counters, in total or (with `interface`) of that interface alone.
fn ask_stats(
    socket: &Path,
    interface: Option<&str>,
) -> Result<allowlist_userspace::control::Stats, Failure> {
    let mut stats = ask(socket, &Request::Stats)?
        .stats
        .ok_or_else(|| Failure::error("the daemon sent no counters"))?;
    let Some(interface) = interface else {
        return Ok(stats);
    };
    let Some(counters) = stats.interfaces.remove(interface) else {
        let attached: Vec<&str> = stats.interfaces.keys().map(String::as_str).collect();
        return Err(Failure::error(format!(
            "allowlistd counts nothing on {interface}: it is not attached there (attached: {}); see `allowlistctl status`",
            if attached.is_empty() { "none".to_string() } else { attached.join(", ") }
        )));
    };
    stats.counters = counters;
    stats.interfaces =
        std::collections::BTreeMap::from([(interface.to_string(), stats.counters.clone())]);
    Ok(stats)
}

fn set_mode(socket: &Path, mode: Mode) -> Result<(), Failure> {
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

/// How long a request may take to be answered (a million rows to apply, a feed to fetch).
const REPLY_TIMEOUT: Duration = Duration::from_secs(600);

/// Sends a request; a refusal becomes a Failure with the documented exit code.
fn ask(socket: &Path, request: &Request) -> Result<Reply, Failure> {
    answered(control::request(socket, request, REPLY_TIMEOUT))
}

/// The daemon's reply; a refusal becomes a Failure with the documented exit code.
pub(crate) fn answered(reply: Result<Reply, control::ClientError>) -> Result<Reply, Failure> {
    let reply = reply.map_err(|error| Failure::error(error.to_string()))?;
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
