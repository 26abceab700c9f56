//! The allowlist daemon: see `allowlistd --help`.
// The library's dependencies are every binary's too; the library checks they are used.
#![allow(unused_crate_dependencies)]

use std::{path::PathBuf, process::ExitCode};

use allowlist_userspace::{
    config::{Config, Locations, DEFAULT_CONFIG},
    daemon::Daemon,
    filter::{self, Pins},
    instance, server,
    startup::StartPlan,
};
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing::info;

/// Lets in only the sources on the allowlist, enforced in the kernel at XDP.
#[derive(Parser)]
#[command(
    name = "allowlistd",
    version,
    after_help = "Examples:
  allowlistd --config /etc/allowlist/allowlist.toml            run the daemon
  allowlistd --config /etc/allowlist/allowlist.toml check      validate the config only
  allowlistd --config /etc/allowlist/allowlist.toml uninstall  detach and remove every pin

Stopping the daemon leaves the filter enforcing the last applied list; only `uninstall` removes it."
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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and exit: 0 valid, 1 not.
    Check,
    /// Detach the filter from every interface and remove its pins. Stop the daemon first.
    Uninstall,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
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
        Some(Command::Uninstall) => uninstall(&Locations::load(&cli.config)?),
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
