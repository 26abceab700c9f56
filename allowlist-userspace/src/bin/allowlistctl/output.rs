//! How answers are shown: tables for people (descriptions escaped), JSON for scripts
//! (exact).

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use allowlist_common::Reason;
use allowlist_userspace::{
    allowlist::{Entry, ImportPlan, Origin},
    clock::format_time,
    config::Mode,
    control::{CheckResult, DroppedRow, EntryHitsRow, FeedStatus, Reply, Stats, Status},
    filter::EgressMechanism,
};
use ipnet::IpNet;

/// Text from the list made safe for a terminal: control characters (an escape sequence
/// in a description could rewrite the screen) and bidirectional overrides (which could
/// make one address read as another) are shown escaped. `--json` keeps text exact.
pub fn printable(text: &str) -> String {
    let is_bidi_control = |c: char| {
        matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
    };
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
pub struct EntryView<'a> {
    network: IpNet,
    description: &'a str,
    /// Destination ports; empty means all.
    ports: Vec<String>,
    origin: String,
    set: &'a str,
    added_at: String,
    expires_at: Option<String>,
    /// What the entry admitted (`list` only; null where the kernel does not count it).
    #[serde(skip_serializing_if = "Option::is_none")]
    hits: Option<Option<HitsView>>,
}

/// `list --json`'s hits of an entry.
#[derive(serde::Serialize)]
pub struct HitsView {
    packets: u64,
    bytes: u64,
    last_hit: Option<String>,
}

impl EntryView<'_> {
    /// With what the entry admitted (`None`: not counted).
    pub fn with_hits(self, hits: Option<&EntryHitsRow>) -> Self {
        EntryView {
            hits: Some(hits.map(|row| HitsView {
                packets: row.packets,
                bytes: row.bytes,
                last_hit: row.last_hit.map(format_time),
            })),
            ..self
        }
    }
}

impl<'a> From<&'a Entry> for EntryView<'a> {
    fn from(entry: &'a Entry) -> Self {
        EntryView {
            network: entry.network,
            description: &entry.description,
            ports: entry.ports.iter().map(ToString::to_string).collect(),
            origin: origin(entry),
            set: entry.set.as_str(),
            added_at: format_time(entry.added_at),
            expires_at: entry.expires_at.map(format_time),
            hits: None,
        }
    }
}

/// `check --json`: the verdict, with its entry shown as `list --json` shows entries.
#[derive(serde::Serialize)]
pub struct CheckView<'a> {
    address: IpAddr,
    mode: Mode,
    verdict: &'a str,
    reason: &'a str,
    entry: Option<EntryView<'a>>,
    /// What the kernel's table of dropped sources holds for the address.
    recent_drops: Vec<TopView<'a>>,
}

impl<'a> From<&'a CheckResult> for CheckView<'a> {
    fn from(check: &'a CheckResult) -> Self {
        CheckView {
            address: check.address,
            mode: check.mode,
            verdict: &check.verdict,
            reason: &check.reason,
            entry: check.entry.as_ref().map(EntryView::from),
            recent_drops: check.recent_drops.iter().map(TopView::from).collect(),
        }
    }
}

pub fn table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(header.iter().map(|h| h.to_string()));
    table
}

/// An entry's origin as `list` and `check` show it: a feed's entries name their feed.
fn origin(entry: &Entry) -> String {
    match entry.origin {
        Origin::Feed => format!("feed {}", entry.set),
        Origin::Fleet => format!("fleet {}", entry.set),
        Origin::Dns => format!("dns {}", entry.set),
        origin => origin.to_string(),
    }
}

pub fn print_entries(entries: &[Entry], hits: &BTreeMap<IpNet, EntryHitsRow>) {
    let mut out = table(&[
        "NETWORK",
        "PORTS",
        "DESCRIPTION",
        "ORIGIN",
        "SET",
        "ADDED",
        "EXPIRES",
        "HITS",
        "LAST HIT",
    ]);
    for entry in entries {
        let view = EntryView::from(entry);
        let (count, last) = match hits.get(&entry.network) {
            Some(row) => (
                row.packets.to_string(),
                row.last_hit.map_or_else(|| "never".into(), format_time),
            ),
            None => ("-".into(), "-".into()),
        };
        out.add_row(vec![
            view.network.to_string(),
            if view.ports.is_empty() {
                "all".to_string()
            } else {
                view.ports.join(",")
            },
            printable(view.description),
            view.origin,
            view.set.to_string(),
            view.added_at,
            view.expires_at.unwrap_or_else(|| "-".into()),
            count,
            last,
        ]);
    }
    println!("{out}");
    println!("{} entries", entries.len());
}

pub fn print_check(check: &CheckResult) {
    let decided = match &check.entry {
        Some(entry) => format!(
            "listed by {} ({}origin {}, set {})",
            entry.network,
            if entry.description.is_empty() {
                String::new()
            } else {
                format!("\"{}\", ", printable(&entry.description))
            },
            origin(entry),
            entry.set
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
    for drop in &check.recent_drops {
        println!(
            "  {} {} packets ({} bytes) on {} as {}, last {}",
            if drop.dropped {
                "dropped"
            } else {
                "monitor passed (enforce would drop)"
            },
            drop.packets,
            drop.bytes,
            printable(&drop.interface),
            drop.reason,
            format_time(drop.last_seen)
        );
    }
}

/// A row of `top --json` (and of `check --json`'s recent drops): times in RFC 3339.
#[derive(serde::Serialize)]
pub struct TopView<'a> {
    source: IpAddr,
    interface: &'a str,
    reason: &'a str,
    dropped: bool,
    packets: u64,
    bytes: u64,
    last_seen: String,
}

impl<'a> From<&'a DroppedRow> for TopView<'a> {
    fn from(row: &'a DroppedRow) -> Self {
        TopView {
            source: row.source,
            interface: &row.interface,
            reason: &row.reason,
            dropped: row.dropped,
            packets: row.packets,
            bytes: row.bytes,
            last_seen: format_time(row.last_seen),
        }
    }
}

pub fn print_top(rows: &[DroppedRow], would_drop: bool) {
    print!("{}", render_top(rows, None, would_drop));
}

/// `top`'s table; with the previous frame's rows and the time since (`--watch`), each
/// source's packets per second too.
pub fn render_top(
    rows: &[DroppedRow],
    previous: Option<(&[DroppedRow], Duration)>,
    would_drop: bool,
) -> String {
    let mut header = vec!["SOURCE", "PACKETS", "BYTES"];
    if previous.is_some() {
        header.push("PKT/S");
    }
    header.extend(["REASON", "INTERFACE", "LAST SEEN"]);
    let mut out = table(&header);
    for row in rows {
        let mut cells = vec![
            row.source.to_string(),
            row.packets.to_string(),
            row.bytes.to_string(),
        ];
        if let Some((before, elapsed)) = previous {
            let earlier = before
                .iter()
                .find(|old| {
                    old.source == row.source
                        && old.interface == row.interface
                        && old.reason == row.reason
                })
                .map_or(0, |old| old.packets);
            cells.push(format_rate(row.packets.saturating_sub(earlier), elapsed));
        }
        cells.extend([
            row.reason.clone(),
            printable(&row.interface),
            format_time(row.last_seen),
        ]);
        out.add_row(cells);
    }
    format!(
        "{out}\n{} {} {}\n",
        rows.len(),
        if rows.len() == 1 { "source" } else { "sources" },
        if would_drop {
            "that enforce would drop (monitor passed them)"
        } else {
            "dropped"
        }
    )
}

/// `stats --watch`: each counter that moved (or all), with packets/s and bits/s since
/// the previous frame.
pub fn render_stats_rates(
    stats: &Stats,
    previous: Option<(&Stats, Duration)>,
    all: bool,
) -> String {
    let mut out = table(&["REASON", "PACKETS", "BYTES", "PKT/S", "BIT/S"]);
    let mut rows: Vec<_> = stats
        .counters
        .iter()
        .filter(|(_, counter)| all || counter.packets > 0)
        .collect();
    rows.sort_by_key(|(reason, _)| reading_order(reason));
    for (reason, counter) in rows {
        let (packets, bits) = match previous {
            Some((before, elapsed)) => {
                let earlier = before.counters.get(reason).copied().unwrap_or_default();
                (
                    format_rate(counter.packets.saturating_sub(earlier.packets), elapsed),
                    format_rate(
                        counter
                            .bytes
                            .saturating_sub(earlier.bytes)
                            .saturating_mul(8),
                        elapsed,
                    ),
                )
            }
            None => ("-".into(), "-".into()),
        };
        out.add_row(vec![
            reason.clone(),
            counter.packets.to_string(),
            counter.bytes.to_string(),
            packets,
            bits,
        ]);
    }
    format!("{out}\n")
}

/// `count` per `elapsed`, per second, with k/M/G for thousands, millions, billions.
pub fn format_rate(count: u64, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return "-".into();
    }
    let rate = count as f64 / seconds;
    match rate {
        r if r >= 1e9 => format!("{:.2}G", r / 1e9),
        r if r >= 1e6 => format!("{:.2}M", r / 1e6),
        r if r >= 1e3 => format!("{:.2}k", r / 1e3),
        r => format!("{r:.0}"),
    }
}

/// `top --csv`: one row per source (its busiest), as `import` reads it.
pub fn print_top_csv(out: impl std::io::Write, rows: &[DroppedRow]) -> csv::Result<()> {
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record(allowlist_userspace::csv_format::HEADER)?;
    let mut seen = std::collections::BTreeSet::new();
    for row in rows {
        if !seen.insert(row.source) {
            continue;
        }
        let description = format!(
            "from allowlistctl top: {} packets as {} on {}, last {}",
            row.packets,
            row.reason,
            row.interface,
            format_time(row.last_seen)
        );
        writer.write_record([row.source.to_string(), description])?;
    }
    writer.flush()?;
    Ok(())
}

pub fn print_plan(plan: &ImportPlan) {
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

pub fn print_message(reply: &Reply) {
    if let Some(message) = &reply.message {
        println!("{message}");
    }
}

pub fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(error) => eprintln!("allowlistctl: {error}"),
    }
}

pub fn print_status(status: &Status) {
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
    println!("kernel:     {}", status.kernel);
    println!("interfaces:");
    if status.interfaces.is_empty() {
        println!("  none: attached nowhere, no traffic is judged (interfaces = [] in the config)");
    }
    for interface in &status.interfaces {
        let egress = match interface.egress {
            Some(EgressMechanism::Tcx) => "flow tracker on TCX",
            Some(EgressMechanism::Tc) => "flow tracker on a tc filter (no TCX)",
            None => "no flow tracker",
        };
        println!(
            "  {:<16} {:?} XDP, {egress}",
            interface.name, interface.xdp_mode
        );
    }
    if !status.feeds.is_empty() {
        println!("feeds:");
    }
    for feed in &status.feeds {
        let state = match (&feed.held, &feed.error) {
            (Some(held), _) => format!("held: {held}"),
            (None, Some(error)) => format!("error: {error}"),
            (None, None) => match feed.last_good {
                Some(at) => format!("fetched {}", format_time(at)),
                None if feed.format.is_none() => "preset".into(),
                None => "not fetched yet".into(),
            },
        };
        println!(
            "  {:<16} {} entries, {}",
            feed.name.to_string(),
            feed.entries,
            printable(&state)
        );
    }
}

/// `feeds`: one row per feed, then its error or held refresh under it.
pub fn print_feeds(feeds: &[FeedStatus]) {
    let mut out = table(&[
        "FEED",
        "ENTRIES",
        "LAST FETCH",
        "LAST CHANGE",
        "NEXT",
        "STATUS",
        "SOURCE",
    ]);
    let time = |at: Option<u64>| at.map_or_else(|| "-".to_string(), format_time);
    for feed in feeds {
        let state = if feed.held.is_some() {
            "held"
        } else if feed.error.is_some() {
            "error"
        } else if feed.format.is_none() {
            "preset"
        } else if feed.last_good.is_none() {
            "not fetched yet"
        } else {
            "ok"
        };
        out.add_row(vec![
            feed.name.to_string(),
            feed.entries.to_string(),
            time(feed.last_fetch),
            time(feed.last_change),
            if feed.format.is_some() {
                time(feed.next_refresh)
            } else {
                "-".into()
            },
            state.to_string(),
            printable(&feed.source),
        ]);
    }
    println!("{out}");
    for feed in feeds {
        for problem in feed.held.iter().chain(&feed.error) {
            println!("{}: {}", feed.name, printable(problem));
        }
    }
}

/// Counters in [`reading_order`]; rows that counted nothing are left out unless `all`.
pub fn print_stats(stats: &Stats, all: bool) {
    let mut out = table(&["REASON", "PACKETS", "BYTES"]);
    let mut rows: Vec<_> = stats
        .counters
        .iter()
        .filter(|(_, counter)| all || counter.packets > 0)
        .collect();
    rows.sort_by_key(|(reason, _)| reading_order(reason));
    for (reason, counter) in rows {
        out.add_row(vec![
            reason.clone(),
            counter.packets.to_string(),
            counter.bytes.to_string(),
        ]);
    }
    println!("{out}");
}

/// Where a counter goes in `stats`: passes, then what monitor would have dropped, then
/// drops; within each, in the order `Reason::ALL` lists them.
fn reading_order(reason: &str) -> (u8, usize) {
    let group = if reason.starts_with("passed_") {
        0
    } else if reason.starts_with("monitor_") {
        1
    } else {
        2
    };
    let position = Reason::ALL
        .iter()
        .position(|known| known.name() == reason)
        .unwrap_or(usize::MAX);
    (group, position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second_with_si_prefixes() {
        assert_eq!(format_rate(50, Duration::from_millis(500)), "100");
        assert_eq!(format_rate(3_000, Duration::from_secs(2)), "1.50k");
        assert_eq!(format_rate(8_000_000_000, Duration::from_secs(1)), "8.00G");
        assert_eq!(format_rate(1, Duration::ZERO), "-");
    }
}
