//! The allowlist's CSV format, shared by `import` and `export`: a header row
//! `ip_address,description` in that order, then one row per network (RFC 4180 quoting,
//! so descriptions may hold commas, quotes, newlines and any Unicode).

use std::io::{Read, Write};

use ipnet::IpNet;

use crate::{allowlist::ImportRow, config::parse_network};

pub const HEADER: [&str; 2] = ["ip_address", "description"];

/// A row that cannot be imported, with its line in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRow {
    pub line: u64,
    pub problem: String,
}

/// Reads every row; if any is bad, returns all the bad ones (so one pass fixes the file).
pub fn read_rows(reader: impl Read) -> Result<Vec<ImportRow>, Vec<BadRow>> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(reader);
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut header_seen = false;
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
        if !header_seen {
            header_seen = true;
            let found: Vec<&str> = record.iter().map(str::trim).collect();
            if found != HEADER {
                bad.push(BadRow {
                    line,
                    problem: format!(
                        "the first row must be the header `ip_address,description`, found `{}`",
                        record.iter().collect::<Vec<_>>().join(",")
                    ),
                });
                return Err(bad);
            }
            continue;
        }
        match record.len() {
            1 | 2 => {}
            fields => {
                bad.push(BadRow {
                    line,
                    problem: format!("expected 2 fields (ip_address,description), found {fields}"),
                });
                continue;
            }
        }
        let given = &record[0];
        match parse_network(given) {
            Ok(network) => rows.push(ImportRow {
                line,
                network,
                description: record.get(1).unwrap_or_default().to_string(),
            }),
            Err(problem) => bad.push(BadRow { line, problem }),
        }
    }
    if !header_seen {
        bad.push(BadRow {
            line: 1,
            problem: "the file is empty; it needs the header `ip_address,description`".into(),
        });
    }
    if bad.is_empty() {
        Ok(rows)
    } else {
        Err(bad)
    }
}

fn csv_problem(error: &csv::Error) -> String {
    match error.kind() {
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8; save the file as UTF-8".into(),
        csv::ErrorKind::Io(io) => format!("cannot read: {io}"),
        _ => error.to_string(),
    }
}

/// Writes the header and one row per entry, quoting only where needed.
pub fn write_rows<'a>(
    writer: impl Write,
    entries: impl IntoIterator<Item = (IpNet, &'a str)>,
) -> csv::Result<()> {
    let mut csv = csv::Writer::from_writer(writer);
    csv.write_record(HEADER)?;
    for (network, description) in entries {
        csv.write_record([network.to_string().as_str(), description])?;
    }
    csv.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_descriptions_ipv6_and_bare_addresses_are_read() {
        let file = "ip_address,description\n10.0.0.1,\"office, \"\"main\"\" floor\"\n2001:db8::/48,Zürich ☃\n192.0.2.0/24,\n198.51.100.7\n";
        let rows = read_rows(file.as_bytes()).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].description, "office, \"main\" floor");
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[1].network.to_string(), "2001:db8::/48");
        assert_eq!(rows[1].description, "Zürich ☃");
        assert_eq!(rows[3].network.to_string(), "198.51.100.7/32");
    }

    #[test]
    fn every_bad_row_is_reported_with_its_line() {
        let file =
            "ip_address,description\n10.0.0.1,ok\nnot-an-ip,x\n10.0.0.2,a,b\n10.0.0.300/8,y\n";
        let bad = read_rows(file.as_bytes()).unwrap_err();
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), [3, 4, 5]);
        assert!(bad[0].problem.contains("not-an-ip"), "{bad:?}");
        assert!(bad[1].problem.contains("found 3"), "{bad:?}");
    }

    #[test]
    fn a_spreadsheet_byte_order_mark_and_crlf_line_ends_are_accepted() {
        let rows =
            read_rows("\u{feff}ip_address,description\r\n10.0.0.1,x\r\n".as_bytes()).unwrap();
        assert_eq!(rows[0].description, "x");
    }

    #[test]
    fn a_missing_or_reordered_header_is_refused() {
        let bad = read_rows("description,ip_address\nx,10.0.0.1\n".as_bytes()).unwrap_err();
        assert_eq!(bad[0].line, 1);
        assert!(read_rows("".as_bytes()).is_err());
    }

    #[test]
    fn export_then_import_gives_the_same_rows() {
        let entries = [
            ("10.0.0.0/8".parse().unwrap(), "a,b \"c\"\nd"),
            ("2001:db8::1/128".parse().unwrap(), ""),
        ];
        let mut out = Vec::new();
        write_rows(&mut out, entries).unwrap();
        let rows = read_rows(out.as_slice()).unwrap();
        let back: Vec<(IpNet, &str)> = rows
            .iter()
            .map(|r| (r.network, r.description.as_str()))
            .collect();
        assert_eq!(back, entries);
    }

    mod round_trip {
        use std::net::{Ipv4Addr, Ipv6Addr};

        use ipnet::{Ipv4Net, Ipv6Net};
        use proptest::prelude::*;

        use super::*;
        use crate::allowlist::{Allowlist, ImportRow};

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

        proptest! {
            #[test]
            fn any_networks_and_descriptions_survive_export_then_import(
                entries in proptest::collection::btree_map(network(), any::<String>(), 0..40)
            ) {
                let mut file = Vec::new();
                write_rows(&mut file, entries.iter().map(|(n, d)| (*n, d.as_str()))).unwrap();
                let rows = read_rows(file.as_slice()).unwrap();
                let back: Vec<(IpNet, String)> = rows.into_iter().map(|r| (r.network, r.description)).collect();
                let expected: Vec<(IpNet, String)> = entries.into_iter().collect();
                prop_assert_eq!(back, expected);
            }

            #[test]
            fn exporting_a_list_and_importing_it_with_replace_changes_nothing(
                entries in proptest::collection::btree_map(network(), any::<String>(), 1..40)
            ) {
                let config = crate::config::Config::parse(std::path::Path::new("t.toml"), "interfaces = [\"lo\"]\nmode = \"off\"\n").unwrap();
                let mut list = Allowlist::new(&config, vec![], &Default::default());
                for (network, description) in &entries {
                    list.add(*network, Some(description.clone()), None, vec![]).unwrap();
                }
                let mut file = Vec::new();
                write_rows(&mut file, list.managed().map(|e| (e.network, e.description.as_str()))).unwrap();
                let rows: Vec<ImportRow> = read_rows(file.as_slice()).unwrap();
                let before = list.clone();
                let plan = list.import(&rows, true);
                prop_assert!(plan.added.is_empty() && plan.updated.is_empty() && plan.removed.is_empty(), "{:?}", plan);
                prop_assert_eq!(list, before);
            }
        }
    }
}
