//! The allowlist daemon: see `allowlistd --help`.
// The library's dependencies are every binary's too; the library checks they are used.
#![allow(unused_crate_dependencies)]

use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use allowlist_userspace::{
    config::{Config, Locations, DEFAULT_CONFIG},
    daemon::Daemon,
    filter::{self, Pins},
    instance, server,
    startup::StartPlan,
};
use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tracing::info;
use tracing_subscriber::EnvFilter;

/// Lets in only the sources on the allowlist, enforced in the kernel at XDP.
#[derive(Parser)]
#[command(
    name = "allowlistd",
    version,
    after_help = "Examples:
  allowlistd --config /etc/allowlist/allowlist.toml            run the daemon
  allowlistd --config /etc/allowlist/allowlist.toml check      validate the config only
  allowlistd --config /etc/allowlist/allowlist.toml uninstall  detach and remove every pin
  allowlistd uninstall --pin-path /sys/fs/bpf/allowlist        the same without reading a config
  allowlistd --log-format json                                 one JSON object per log line

Stopping the daemon leaves the filter enforcing the last applied list; only `uninstall` removes it.
The log goes to stderr; RUST_LOG sets its level (default info, e.g. RUST_LOG=debug)."
)]
struct Cli {
    /// The allowlist config (TOML).
    #[arg(
        long,
        value_name = "PATH",
        default_value = DEFAULT_CONFIG
    )]
    config: PathBuf,
    /// Turn on the XDP program's debug log (aya-log); costly, for diagnosis only.
    #[arg(long)]
    ebpf_log: bool,
    /// How log lines on stderr look: `text` (coloured only on a terminal, without
    /// timestamps under journald, which adds its own) or `json` (one object per line,
    /// for log shippers).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text, env = "ALLOWLIST_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and exit: 0 valid, 1 not.
    Check,
    /// Detach the filter from every interface and remove its pins. Stop the daemon first.
    Uninstall {
        /// Where the filter is pinned. Given, the config is not read at all, so this works
        /// when the config is broken or gone; otherwise its `pin_path` is used (or the
        /// default, /sys/fs/bpf/allowlist, if the config cannot be read).
        #[arg(long, value_name = "PATH")]
        pin_path: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("allowlistd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Uninstall { pin_path }) => {
            uninstall(&uninstall_locations(&cli.config, pin_path))
        }
        Some(Command::Check) => check(Config::load(&cli.config)?),
        None => run_daemon(Config::load(&cli.config)?, cli.ebpf_log),
    }
}

/// Validates exactly what a start would: the config, the saved state in `state_dir`, and
/// the list they make together, without touching the kernel or any file.
fn check(config: Config) -> anyhow::Result<()> {
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    let plan = StartPlan::new(config)?;
    if let Some(pending) = plan.reverted_while_stopped {
        println!(
            "note: the saved change made with --confirm passed its deadline unconfirmed; a start reverts it to mode {}",
            pending.revert_to
        );
    }
    let config = &plan.config;
    println!(
        "{}: valid ({} entries in the file, {} saved; mode {}; interfaces {}; {} IPv4 and {} IPv6 prefixes after compiling)",
        config.path.display(),
        config.allow.len() + config.always.len(),
        plan.allowlist.managed().count(),
        plan.mode,
        if config.interfaces.is_empty() {
            "none (attached nowhere, no traffic is judged)".to_string()
        } else {
            config.interfaces.join(", ")
        },
        plan.compiled.v4.len(),
        plan.compiled.v6.len(),
    );
    Ok(())
}

fn run_daemon(config: Config, ebpf_log: bool) -> anyhow::Result<()> {
    allowlist_userspace::capabilities::check(&config)?;
    allowlist_userspace::daemon::limit_allocator_arenas();
    server::raise_descriptor_limit();
    let daemon = Daemon::start(config, ebpf_log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(server::serve(daemon))?;
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => {
            // A redirected log must not fill with escape codes.
            let builder = builder.with_ansi(std::io::stderr().is_terminal());
            if stderr_is_journald() {
                builder.without_time().init();
            } else {
                builder.init();
            }
        }
    }
}

/// Whether stderr is connected to journald: systemd sets JOURNAL_STREAM to the
/// stream's `device:inode`.
fn stderr_is_journald() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2")
        .is_ok_and(|stderr| stream == format!("{}:{}", stderr.dev(), stderr.ino()))
}

/// The pins and socket `uninstall` works on. The config may be what is broken, so it is
/// only read when `--pin-path` is not given, and an unreadable one falls back to the
/// defaults (and says so) rather than leaving an operator unable to uninstall.
fn uninstall_locations(config: &Path, pin_path: Option<PathBuf>) -> Locations {
    match (Locations::load(config), pin_path) {
        (Ok(found), None) => found,
        (Ok(found), Some(pin_path)) => Locations { pin_path, ..found },
        (Err(_), Some(pin_path)) => Locations {
            pin_path,
            ..Locations::default()
        },
        (Err(error), None) => {
            let defaults = Locations::default();
            eprintln!(
                "allowlistd: note: {error}; uninstalling from the default pin_path {} (pass --pin-path if the config named another)",
                defaults.pin_path.display()
            );
            defaults
        }
    }
}

fn uninstall(config: &Locations) -> anyhow::Result<()> {
    if std::os::unix::net::UnixStream::connect(&config.socket).is_ok() {
        anyhow::bail!(
            "allowlistd is running (it answers on {}); stop it first, then uninstall",
            config.socket.display()
        );
    }
    // A daemon that is running but not answering (stuck, or on another socket) still
    // holds its pin directory.
    let _lock = if config.pin_path.exists() {
        match instance::lock_dir("pin_path", &config.pin_path) {
            Ok(lock) => Some(lock),
            Err(error) => match error.holder() {
                Some(holder) => anyhow::bail!(
                    "allowlistd ({holder}) is running on {}; stop it first, then uninstall",
                    config.pin_path.display()
                ),
                None => return Err(error.into()),
            },
        }
    } else {
        None
    };
    let detached = filter::uninstall(&Pins::new(&config.pin_path))?;
    info!(interfaces = ?detached, pin_path = %config.pin_path.display(), "uninstalled");
    println!(
        "detached from {} and removed {}",
        if detached.is_empty() {
            "no interface".to_string()
        } else {
            detached.join(", ")
        },
        config.pin_path.display()
    );
    Ok(())
}
