//! What commands read: networks (noting what differs from what was typed), durations
//! within their bounds, port lists, and CSV files validated whole before anything is sent.

use std::{
    fs::File,
    io::{self, IsTerminal, Read},
    path::PathBuf,
    time::Duration,
};

use allowlist_userspace::{
    allowlist::ImportRow,
    clock,
    config::parse_network_noting,
    control, csv_format,
    ports::{self, PortSpec},
};
use ipnet::IpNet;

use crate::{output::printable, Failure};

/// The network an argument names; what differs from what was typed (host bits, an
/// IPv4-mapped address) is said on stderr.
pub fn network_argument(given: &str) -> Result<IpNet, Failure> {
    let (network, note) = parse_network_noting(given).map_err(Failure::usage)?;
    if let Some(note) = note {
        eprintln!("allowlistctl: note: {}", printable(&note));
    }
    Ok(network)
}

/// `--expires`: a duration from now, or `never`.
#[derive(Clone, Copy, Debug)]
pub enum Expiry {
    After(Duration),
    Never,
}

/// `--ports`: a list, or `all` (empty).
#[derive(Clone, Debug)]
pub struct Ports(pub Vec<PortSpec>);

pub fn parse_ports(given: &str) -> Result<Ports, String> {
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

/// `--watch --interval`: 100 ms to an hour.
pub fn parse_interval(given: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(given)
        .map_err(|error| format!("{error}; use e.g. 500ms, 1s, 5s"))?;
    if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&interval) {
        return Err(format!("{given} is out of range: give 100ms to 1h"));
    }
    Ok(interval)
}

/// `top --since`: how far back, at most a year.
pub fn parse_since(given: &str) -> Result<Duration, String> {
    parse_duration(given, "--since", clock::MAX_EXPIRY)
}

pub fn parse_duration(given: &str, what: &'static str, max: Duration) -> Result<Duration, String> {
    let duration = humantime::parse_duration(given)
        .map_err(|error| format!("{error}; use e.g. 30s, 15m, 2h, 7d"))?;
    // Sub-second durations round up: "500ms" means "soon", not "never".
    let secs = duration.as_secs().max(1);
    clock::check_duration(what, secs, max).map_err(|error| error.to_string())?;
    Ok(Duration::from_secs(secs))
}

pub fn parse_expiry(given: &str) -> Result<Expiry, String> {
    if given.trim().eq_ignore_ascii_case("never") {
        return Ok(Expiry::Never);
    }
    parse_duration(given, "--expires", clock::MAX_EXPIRY).map(Expiry::After)
}

pub fn parse_confirm(given: &str) -> Result<Duration, String> {
    parse_duration(given, "--confirm", clock::MAX_CONFIRM)
}

/// Reads the file row by row and sends each row to the daemon as it is read, so a file
/// of a million rows is never held whole, then ends the rows. Any bad row, and the rows
/// are not ended: the connection is dropped and the daemon changes nothing. Notes on
/// rows (host bits, expired entries left out) go to stderr. Shows a progress bar on a
/// terminal (files of a million rows take a while).
pub fn stream_csv(file: &PathBuf, connection: &mut control::Connection) -> Result<(), Failure> {
    let mut sent = Ok(());
    let read = read_csv_each(file, |row| {
        if sent.is_ok() {
            sent = connection.send(&row);
        }
    });
    if let Err(error) = sent {
        // The daemon stopped reading: its reply says why, if it sent one.
        return Err(match crate::answered(connection.reply()) {
            Err(refused) => refused,
            Ok(_) => Failure::error(error.to_string()),
        });
    }
    read?;
    connection
        .end_rows()
        .map_err(|error| Failure::error(error.to_string()))
}

/// Reads and validates the whole file: any bad row, and nothing is returned.
pub fn read_csv(file: &PathBuf) -> Result<Vec<ImportRow>, Failure> {
    let mut rows = Vec::new();
    read_csv_each(file, |row| rows.push(row))?;
    Ok(rows)
}

/// Reads the file, handing each good row to `take` as it is read (none after a bad
/// one), and says what is wrong with every bad row.
fn read_csv_each(file: &PathBuf, take: impl FnMut(ImportRow)) -> Result<(), Failure> {
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
    let notes = csv_format::read_rows_each(reader, clock::now(), take).map_err(|bad| {
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
    for (line, note) in notes.iter().take(SHOWN) {
        eprintln!("allowlistctl: note: {shown}:{line}: {}", printable(note));
    }
    if notes.len() > SHOWN {
        eprintln!(
            "allowlistctl: note: … and {} more notes",
            notes.len() - SHOWN
        );
    }
    Ok(())
}
