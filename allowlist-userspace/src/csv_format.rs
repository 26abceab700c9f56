//! The allowlist's CSV format, shared by `import` and `export`.
//!
//! A header row, then one row per network, RFC 4180 quoting (descriptions may hold
//! commas, quotes, newlines and any Unicode). The header is the hosted products'
//! `ip_address,description`, optionally followed by `ports` and `expires_at`, which
//! `export` always writes so that copying a list to another host keeps its access rules:
//!
//! ```text
//! ip_address,description,ports,expires_at
//! 192.0.2.10,deploy host,"22/tcp,5985-5986/tcp",
//! 198.51.100.7,dynamic worker,,2026-12-01T08:00:00Z
//! ```
//!
//! An empty (or `all`) `ports` cell means all ports, an empty `expires_at` cell no
//! expiry. A
//! description starting with `=`, `+`, `-`, `@`, a tab or a carriage return, which a
//! spreadsheet would run as a formula, is written with a `'` in front, and so is one that
//! starts with `'` already; import takes that one `'` off again, so export → import gives
//! back exactly what was exported.

use std::io::{Read, Write};

use crate::{
    allowlist::{Entry, ImportRow, RowScope},
    clock,
    config::parse_network_noting,
    ports,
};

/// The columns every file has, in this order.
pub const HEADER: [&str; 2] = ["ip_address", "description"];
/// The columns `export` writes; a file may have the first two, three or all four.
pub const FULL_HEADER: [&str; 4] = ["ip_address", "description", "ports", "expires_at"];

/// A row that cannot be imported, with its line in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRow {
    pub line: u64,
    pub problem: String,
}

/// The rows of a file, and notes for the operator about some of them (host bits
/// cleared, an entry that expired already and is left out, …), by line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rows {
    pub rows: Vec<ImportRow>,
    pub notes: Vec<(u64, String)>,
}

/// Reads every row; if any is bad, returns all the bad ones (so one pass fixes the
/// file). `now` decides which expiry times are past (those rows are left out, with a
/// note) or too far ahead ([`clock::MAX_EXPIRY`]).
pub fn read_rows(reader: impl Read, now: u64) -> Result<Rows, Vec<BadRow>> {
    let mut rows = Vec::new();
    let notes = read_rows_each(reader, now, |row| rows.push(row))?;
    Ok(Rows { rows, notes })
}

/// As [`read_rows`], handing each good row to `take` as it is read instead of keeping
/// them (an import streams them to the daemon). After the first bad row no more are
/// handed over, but the rest are still read so that every bad one is reported. Returns
/// the notes.
pub fn read_rows_each(
    reader: impl Read,
    now: u64,
    mut take: impl FnMut(ImportRow),
) -> Result<Vec<(u64, String)>, Vec<BadRow>> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(reader);
    let mut notes = Vec::new();
    let mut bad = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut columns = None;
    loop {
        let line = csv.position().line();
        match csv.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(error) => {
                let line = error.position().map_or(line, csv::Position::line);
                bad.push(BadRow {
                    line,
                    problem: csv_problem(&error),
                });
                if matches!(error.kind(), csv::ErrorKind::Io(_)) {
                    break;
                }
                continue;
            }
        }
        let line = record.position().map_or(line, csv::Position::line);
        let Some(columns) = columns else {
            let found: Vec<&str> = record.iter().map(str::trim).collect();
            if found.len() < HEADER.len() || !FULL_HEADER.starts_with(&found) {
                bad.push(BadRow {
                    line,
                    problem: format!(
                        "the first row must be the header `ip_address,description` (optionally followed by `,ports,expires_at`), found `{}`",
                        record.iter().collect::<Vec<_>>().join(",")
                    ),
                });
                return Err(bad);
            }
            columns = Some(found.len());
            continue;
        };
        if record.len() > columns {
            bad.push(BadRow {
                line,
                problem: format!(
                    "expected at most {columns} fields ({}), found {}",
                    FULL_HEADER[..columns].join(","),
                    record.len()
                ),
            });
            continue;
        }
        match parse_row(&record, columns, line, now) {
            Ok(Parsed::Row(row, note)) => {
                if let Some(note) = note {
                    notes.push((line, note));
                }
                if bad.is_empty() {
                    take(row);
                }
            }
            Ok(Parsed::Expired(note)) => notes.push((line, note)),
            Err(problem) => bad.push(BadRow { line, problem }),
        }
    }
    if columns.is_none() {
        bad.push(BadRow {
            line: 1,
            problem: "the file is empty; it needs the header `ip_address,description`".into(),
        });
    }
    if bad.is_empty() {
        Ok(notes)
    } else {
        Err(bad)
    }
}

enum Parsed {
    Row(ImportRow, Option<String>),
    /// An entry whose expiry time has passed: nothing to import.
    Expired(String),
}

fn parse_row(
    record: &csv::StringRecord,
    columns: usize,
    line: u64,
    now: u64,
) -> Result<Parsed, String> {
    let (network, note) = parse_network_noting(&record[0])?;
    let description = restore_description(record.get(1).unwrap_or_default());
    crate::allowlist::check_description(&description)?;
    let scope = if columns > HEADER.len() {
        let ports = match record.get(2).map(str::trim).unwrap_or_default() {
            cell if cell.eq_ignore_ascii_case("all") => Vec::new(),
            cell => ports::parse_list(cell)?,
        };
        ports::check_kernel_fit(&ports)?;
        let expires_at = match record.get(3).map(str::trim).unwrap_or_default() {
            "" => None,
            given => {
                let at = parse_expiry(given)?;
                if at <= now {
                    return Ok(Parsed::Expired(format!(
                        "{network} expired at {given}; left out"
                    )));
                }
                clock::check_duration("expires_at", at - now, clock::MAX_EXPIRY)
                    .map_err(|error| format!("{given}: {error} from now"))?;
                Some(at)
            }
        };
        Some(RowScope { ports, expires_at })
    } else {
        None
    };
    Ok(Parsed::Row(
        ImportRow {
            line,
            network,
            description,
            scope,
        },
        note,
    ))
}

fn parse_expiry(given: &str) -> Result<u64, String> {
    let at = humantime::parse_rfc3339(given).map_err(|error| {
        format!("invalid expires_at {given:?} ({error}): expected an RFC 3339 time in UTC, e.g. 2026-12-01T08:00:00Z, or nothing for no expiry")
    })?;
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0))
}

fn csv_problem(error: &csv::Error) -> String {
    match error.kind() {
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8; save the file as UTF-8".into(),
        csv::ErrorKind::Io(io) => format!("cannot read: {io}"),
        _ => error.to_string(),
    }
}

/// Characters that make a spreadsheet cell a formula when they start it (plus `'`, the
/// quote this format puts in front of them, so that it can be taken off unambiguously).
fn needs_quote_mark(description: &str) -> bool {
    description.starts_with(['=', '+', '-', '@', '\t', '\r', '\''])
}

/// A description as written to a file: formula-like text gets a `'` in front.
pub fn neutralize_description(description: &str) -> std::borrow::Cow<'_, str> {
    if needs_quote_mark(description) {
        format!("'{description}").into()
    } else {
        description.into()
    }
}

/// The reverse of [`neutralize_description`]: takes off a `'` that it put there. A `'`
/// in front of anything else is the description's own (a file written elsewhere).
pub fn restore_description(cell: &str) -> String {
    match cell.strip_prefix('\'') {
        Some(rest) if needs_quote_mark(rest) => rest.to_string(),
        _ => cell.to_string(),
    }
}

/// Writes the full header and one row per entry, quoting only where needed.
pub fn write_rows<E: std::borrow::Borrow<Entry>>(
    writer: impl Write,
    entries: impl IntoIterator<Item = E>,
) -> csv::Result<()> {
    let mut csv = csv::Writer::from_writer(writer);
    csv.write_record(FULL_HEADER)?;
    for entry in entries {
        let entry = entry.borrow();
        let ports: Vec<String> = entry.ports.iter().map(ToString::to_string).collect();
        let expires_at = entry.expires_at.map(clock::format_time).unwrap_or_default();
        csv.write_record([
            entry.network.to_string().as_str(),
            &neutralize_description(&entry.description),
            &ports.join(","),
            &expires_at,
        ])?;
    }
    csv.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use ipnet::IpNet;

    use super::*;
    use crate::allowlist::Origin;

    const NOW: u64 = 1_800_000_000;

    fn read(file: &str) -> Result<Rows, Vec<BadRow>> {
        read_rows(file.as_bytes(), NOW)
    }

    fn entry(network: &str, description: &str, ports: &str, expires_at: Option<u64>) -> Entry {
        Entry {
            network: network.parse().unwrap(),
            description: description.into(),
            origin: Origin::Cli,
            set: Default::default(),
            added_at: 1,
            expires_at,
            ports: ports::parse_list(ports).unwrap(),
        }
    }

    #[test]
    fn quoted_descriptions_ipv6_and_bare_addresses_are_read() {
        let file = "ip_address,description\n10.0.0.1,\"office, \"\"main\"\" floor\"\n2001:db8::/48,Zürich ☃\n192.0.2.0/24,\n198.51.100.7\n";
        let rows = read(file).unwrap().rows;
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].description, "office, \"main\" floor");
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[0].scope, None, "a two-column file carries no scope");
        assert_eq!(rows[1].network.to_string(), "2001:db8::/48");
        assert_eq!(rows[1].description, "Zürich ☃");
        assert_eq!(rows[3].network.to_string(), "198.51.100.7/32");
    }

    #[test]
    fn every_bad_row_is_reported_with_its_line() {
        let file =
            "ip_address,description\n10.0.0.1,ok\nnot-an-ip,x\n10.0.0.2,a,b\n10.0.0.300/8,y\n";
        let bad = read(file).unwrap_err();
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), [3, 4, 5]);
        assert!(bad[0].problem.contains("not-an-ip"), "{bad:?}");
        assert!(bad[1].problem.contains("found 3"), "{bad:?}");
    }

    /// Fixed with the fuzzers (issue 17): the CSV reader accepted what the daemon refused.
    #[test]
    fn a_description_longer_than_the_daemon_keeps_is_refused_with_its_line() {
        let longest = "d".repeat(crate::allowlist::MAX_DESCRIPTION_BYTES);
        let file = format!("ip_address,description\n10.0.0.1,{longest}\n10.0.0.2,{longest}d\n");
        let bad = read(&file).unwrap_err();
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), [3]);
        assert!(bad[0].problem.contains("4097 bytes"), "{bad:?}");
    }

    #[test]
    fn host_bits_and_ipv4_mapped_addresses_are_noted_with_their_line() {
        let file = "ip_address,description\n10.98.6.7/8,typo?\n::ffff:10.99.2.2,mapped\n0.0.0.0/0,everyone\n";
        let rows = read(file).unwrap();
        let networks: Vec<String> = rows.rows.iter().map(|r| r.network.to_string()).collect();
        assert_eq!(networks, ["10.0.0.0/8", "10.99.2.2/32", "0.0.0.0/0"]);
        let lines: Vec<u64> = rows.notes.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, [2, 3, 4]);
        assert!(rows.notes[0].1.contains("host bits"), "{:?}", rows.notes);
        assert!(rows.notes[1].1.contains("IPv4-mapped"), "{:?}", rows.notes);
        assert!(
            rows.notes[2].1.contains("every IPv4 source"),
            "{:?}",
            rows.notes
        );
    }

    #[test]
    fn a_spreadsheet_byte_order_mark_and_crlf_line_ends_are_accepted() {
        let rows = read("\u{feff}ip_address,description\r\n10.0.0.1,x\r\n")
            .unwrap()
            .rows;
        assert_eq!(rows[0].description, "x");
    }

    #[test]
    fn a_missing_or_reordered_header_is_refused() {
        let bad = read("description,ip_address\nx,10.0.0.1\n").unwrap_err();
        assert_eq!(bad[0].line, 1);
        assert!(read("").is_err());
        assert!(read("ip_address,description,expires_at\n").is_err());
    }

    #[test]
    fn ports_and_expiry_columns_scope_the_rows_and_bad_ones_are_refused() {
        let file = format!(
            "ip_address,description,ports,expires_at\n192.0.2.10,deploy,\"22/tcp,5985-5986/tcp\",\n198.51.100.7,worker,,{}\n203.0.113.1,gone,,{}\n",
            clock::format_time(NOW + 3600),
            clock::format_time(NOW - 1)
        );
        let rows = read(&file).unwrap();
        assert_eq!(rows.rows.len(), 2, "the expired row is left out");
        let deploy = rows.rows[0].scope.clone().unwrap();
        assert_eq!(
            deploy.ports,
            ports::parse_list("22/tcp,5985-5986/tcp").unwrap()
        );
        assert_eq!(deploy.expires_at, None);
        assert_eq!(
            rows.rows[1].scope.clone().unwrap().expires_at,
            Some(NOW + 3600)
        );
        assert!(rows
            .notes
            .iter()
            .any(|(line, note)| *line == 4 && note.contains("expired")));

        let too_far = clock::format_time(NOW + clock::MAX_EXPIRY.as_secs() + 1);
        let scattered: Vec<String> = (1..=17).map(|i| format!("{}/tcp", i * 10)).collect();
        let file = format!(
            "ip_address,description,ports,expires_at\n10.0.0.1,,22/icmp,\n10.0.0.2,,,tomorrow\n10.0.0.3,,,{too_far}\n10.0.0.4,,\"{}\",\n",
            scattered.join(",")
        );
        let bad = read(&file).unwrap_err();
        assert_eq!(
            bad.iter().map(|b| b.line).collect::<Vec<_>>(),
            [2, 3, 4, 5],
            "{bad:?}"
        );
    }

    #[test]
    fn formula_like_descriptions_are_neutralised_on_export_and_restored_on_import() {
        for description in [
            "=HYPERLINK(\"x\")",
            "+1",
            "-1",
            "@SUM(A1)",
            "\tx",
            "'=x",
            "'quoted'",
            "''",
            "plain",
        ] {
            let cell = neutralize_description(description);
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "{description:?} written as {cell:?}"
            );
            assert_eq!(restore_description(&cell), description);
        }
        assert_eq!(
            restore_description("'quoted'"),
            "'quoted'",
            "a foreign leading quote stays"
        );
    }

    #[test]
    fn export_then_import_gives_the_same_rows() {
        let entries = [
            entry("10.0.0.0/8", "a,b \"c\"\nd", "", None),
            entry(
                "192.0.2.10/32",
                "=cmd|' /C calc'!A0",
                "22/tcp,5985-5986/tcp",
                Some(NOW + 60),
            ),
            entry("2001:db8::1/128", "", "53/udp", None),
        ];
        let mut out = Vec::new();
        write_rows(&mut out, &entries).unwrap();
        let rows = read_rows(out.as_slice(), NOW).unwrap().rows;
        let back: Vec<(IpNet, String, Option<RowScope>)> = rows
            .into_iter()
            .map(|r| (r.network, r.description, r.scope))
            .collect();
        let expected: Vec<(IpNet, String, Option<RowScope>)> = entries
            .iter()
            .map(|e| {
                let scope = RowScope {
                    ports: e.ports.clone(),
                    expires_at: e.expires_at,
                };
                (e.network, e.description.clone(), Some(scope))
            })
            .collect();
        assert_eq!(back, expected);
    }

    mod round_trip {
        use std::net::{Ipv4Addr, Ipv6Addr};

        use ipnet::{Ipv4Net, Ipv6Net};
        use proptest::prelude::*;

        use super::*;
        use crate::{
            allowlist::{Allowlist, EntryUpdate},
            ports::PortSpec,
        };

        fn network() -> impl Strategy<Value = IpNet> {
            prop_oneof![
                (any::<u32>(), 0u8..=32).prop_map(|(bits, len)| IpNet::V4(
                    Ipv4Net::new(Ipv4Addr::from(bits), len).unwrap().trunc()
                )),
                (any::<u128>(), 0u8..=128).prop_map(|(bits, len)| IpNet::V6(
                    Ipv6Net::new(Ipv6Addr::from(bits), len).unwrap().trunc()
                )),
            ]
        }

        fn port_spec() -> impl Strategy<Value = PortSpec> {
            (prop_oneof![Just(6u8), Just(17u8)], 1u16..=65535, 0u16..100).prop_map(
                |(protocol, first, span)| PortSpec {
                    protocol,
                    first,
                    last: first.saturating_add(span),
                },
            )
        }

        fn update() -> impl Strategy<Value = EntryUpdate> {
            (
                any::<String>(),
                proptest::collection::vec(port_spec(), 0..4),
                proptest::option::of(1..clock::MAX_EXPIRY.as_secs()),
            )
                .prop_map(|(description, ports, expires_in)| EntryUpdate {
                    description: Some(description),
                    ports: Some(ports),
                    expires_at: Some(expires_in.map(|secs| clock::now() + secs)),
                })
        }

        proptest! {
            #[test]
            fn exporting_a_list_and_importing_it_with_replace_changes_nothing(
                entries in proptest::collection::btree_map(network(), update(), 1..40)
            ) {
                let config = crate::config::Config::parse(std::path::Path::new("t.toml"), "interfaces = [\"lo\"]\nmode = \"off\"\n").unwrap();
                let mut list = Allowlist::new(&config, vec![], &Default::default());
                for (network, update) in &entries {
                    list.add(*network, &Default::default(), update.clone()).unwrap();
                }
                let mut file = Vec::new();
                write_rows(&mut file, list.managed()).unwrap();
                let rows = read_rows(file.as_slice(), clock::now()).unwrap().rows;
                prop_assert_eq!(rows.len(), entries.len());
                let before = list.clone();
                let plan = list.import(&rows, &Default::default(), true).unwrap();
                prop_assert!(plan.added.is_empty() && plan.updated.is_empty() && plan.removed.is_empty(), "{:?}", plan);
                prop_assert_eq!(list, before);
            }
        }
    }
}
