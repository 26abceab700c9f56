//! Control-protocol fuzzing against a running daemon: arbitrary bytes, and well-formed
//! requests with extreme field values (durations, sizes, counts, networks that are not
//! what they seem, strings with control characters). The daemon must answer every
//! request (or close the connection), never panic, and afterwards hold exactly the list
//! and mode of a model — written here from the README — that applies the requests the
//! daemon accepted. A refused request must change nothing.
//!
//! Runs for `ALLOWLIST_FUZZ_SECONDS` (default 30) from `ALLOWLIST_FUZZ_SEED` (default:
//! the clock; printed). `cargo xtask fuzz --seconds N control` runs it longer. Needs root.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allowlist_tests::rng::Rng;
use allowlist_tests::{ConfigBuilder, Daemon, Mode, Topology, ALLOWED_LINK};
use ipnet::IpNet;
use serde_json::{json, Value};

fn budget() -> Duration {
    let seconds = std::env::var("ALLOWLIST_FUZZ_SECONDS")
        .ok()
        .and_then(|seconds| seconds.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(seconds)
}

fn seed() -> u64 {
    std::env::var("ALLOWLIST_FUZZ_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|since| since.as_nanos() as u64)
                .unwrap_or(1)
        })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0)
}

/// The network the README says is listed for what an operator wrote: host bits cleared,
/// an IPv4-mapped IPv6 network taken as the IPv4 one it stands for.
fn listed_as(network: IpNet) -> IpNet {
    if let IpNet::V6(v6) = network {
        if v6.prefix_len() >= 96 {
            if let Some(v4) = v6.network().to_ipv4_mapped() {
                if let Ok(v4) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96) {
                    return IpNet::V4(v4.trunc());
                }
            }
        }
    }
    network.trunc()
}

/// One listed entry as the model keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Listed {
    description: String,
    /// Normalised as the daemon prints them ("22/tcp", "5985-5986/tcp"); empty: all.
    ports: Vec<String>,
    expires_at: Option<u64>,
}

/// The README's model of the daemon-owned list and the mode.
struct Model {
    entries: BTreeMap<IpNet, Listed>,
    mode: String,
    /// Networks the config file owns: never changed through the socket.
    config_owned: Vec<IpNet>,
}

/// A request and what the model does with it if the daemon accepts it.
struct Sent {
    line: String,
    apply: Box<dyn FnOnce(&mut Model)>,
}

fn no_change() -> Box<dyn FnOnce(&mut Model)> {
    Box::new(|_| {})
}

/// A row the model applies if the import is accepted: network, description, and the
/// ports and expiry when the row has those columns.
type ImportedRow = (IpNet, String, Option<(Vec<String>, Option<u64>)>);

struct Generator {
    rng: Rng,
}

impl Generator {
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.below(items.len() as u64) as usize]
    }

    fn network(&mut self) -> String {
        let written = [
            "198.51.100.7",
            "198.51.100.7/32",
            "198.51.100.77/24",
            "203.0.113.0/24",
            "203.0.113.9",
            "10.98.6.7/16",
            "0.0.0.0/0",
            "::/0",
            "2001:db8::1",
            "2001:db8:1234::/48",
            "::ffff:198.51.100.7",
            "::ffff:203.0.113.0/120",
            "10.10.1.2",
            "fd10:1::2",
        ];
        if self.rng.below(4) == 0 {
            let octets = self.rng.next_u64().to_be_bytes();
            let len = self.rng.below(33);
            return format!(
                "{}.{}.{}.{}/{len}",
                octets[0], octets[1], octets[2], octets[3]
            );
        }
        self.pick(&written).to_string()
    }

    fn description(&mut self) -> String {
        match self.rng.below(6) {
            0 => String::new(),
            1 => "office, \"quoted\"\nsecond line".into(),
            2 => "\u{1b}[2J\u{7}\r\u{202e}".into(),
            3 => "x".repeat(4096 + self.rng.below(2) as usize),
            4 => "=cmd|' /C calc'!A0".into(),
            _ => format!("entry {}", self.rng.below(1000)),
        }
    }

    fn ports(&mut self) -> Option<Vec<String>> {
        match self.rng.below(5) {
            0 => None,
            1 => Some(Vec::new()),
            2 => Some((0..20).map(|i| format!("{}/tcp", 1000 + 2 * i)).collect()),
            _ => Some(
                (0..1 + self.rng.below(3))
                    .map(|_| {
                        let port = *self.pick(&[22u16, 80, 443, 53, 5985, 65535]);
                        format!("{port}/{}", self.pick(&["tcp", "udp"]))
                    })
                    .collect(),
            ),
        }
    }

    /// Seconds for `--expires`/`--confirm`: out of range, or far enough ahead that
    /// nothing expires while the fuzzer runs (the model has no clock).
    fn seconds(&mut self) -> u64 {
        let hours = 3_600 * (1 + self.rng.below(20));
        *self.pick(&[
            0,
            1 << 63,
            u64::MAX,
            365 * 86_400 + 1,
            86_400 + 1,
            hours,
            365 * 86_400,
        ])
    }

    fn request(&mut self) -> Sent {
        match self.rng.below(12) {
            0..=3 => self.add(),
            4 => {
                let written = self.network();
                let line = json!({"command": "remove", "network": written_net(&written)}).to_string();
                Sent {
                    line,
                    apply: match parse_net(&written) {
                        Some(network) => Box::new(move |model: &mut Model| {
                            model.entries.remove(&listed_as(network));
                        }),
                        None => no_change(),
                    },
                }
            }
            5 | 6 => self.import(),
            7 => {
                let mode = *self.pick(&["off", "monitor", "enforce"]);
                let confirm = (self.rng.below(3) == 0).then(|| self.seconds());
                let mut request = json!({"command": "set_mode", "mode": mode});
                if let Some(secs) = confirm {
                    request["confirm_secs"] = json!(secs);
                }
                Sent {
                    line: request.to_string(),
                    apply: Box::new(move |model: &mut Model| model.mode = mode.to_string()),
                }
            }
            8 => Sent {
                line: json!({"command": "check", "address": "198.51.100.7", "port": "22/tcp"})
                    .to_string(),
                apply: no_change(),
            },
            9 => Sent {
                line: json!({"command": *self.pick(&["status", "stats", "list", "export", "confirm", "reload"])})
                    .to_string(),
                apply: no_change(),
            },
            _ => self.garbage(),
        }
    }

    fn add(&mut self) -> Sent {
        let written = self.network();
        let description = (self.rng.below(3) != 0).then(|| self.description());
        let ports = self.ports();
        let expiry = match self.rng.below(4) {
            0 => Some(Some(self.seconds())),
            1 => Some(None),
            _ => None,
        };
        let force = self.rng.below(3) == 0;
        let mut request = json!({"command": "add", "network": written_net(&written)});
        if let Some(description) = &description {
            request["description"] = json!(description);
        }
        if let Some(ports) = &ports {
            request["ports"] = json!(ports);
        }
        match expiry {
            Some(Some(secs)) => request["expires_in_secs"] = json!(secs),
            Some(None) => request["never_expires"] = json!(true),
            None => {}
        }
        if force {
            request["safety"] = json!({"force": true});
        }
        let sent_at = now();
        let apply: Box<dyn FnOnce(&mut Model)> = match parse_net(&written) {
            None => no_change(),
            Some(network) => Box::new(move |model: &mut Model| {
                let network = listed_as(network);
                let base = model.entries.get(&network).cloned().unwrap_or(Listed {
                    description: String::new(),
                    ports: Vec::new(),
                    expires_at: None,
                });
                let entry = Listed {
                    description: description.unwrap_or(base.description),
                    ports: ports.unwrap_or(base.ports),
                    expires_at: match expiry {
                        Some(Some(secs)) => Some(sent_at + secs),
                        Some(None) => None,
                        None => base.expires_at,
                    },
                };
                model.entries.insert(network, entry);
            }),
        };
        Sent {
            line: request.to_string(),
            apply,
        }
    }

    fn import(&mut self) -> Sent {
        let count = self.rng.below(6);
        let replace = self.rng.below(3) == 0;
        let dry_run = self.rng.below(5) == 0;
        let force = self.rng.below(3) == 0;
        let sent_at = now();
        let mut rows = Vec::new();
        let mut applied: Vec<ImportedRow> = Vec::new();
        for line in 0..count {
            let written = self.network();
            let Some(network) = parse_net(&written) else {
                continue;
            };
            let description = self.description();
            let scope = (self.rng.below(2) == 0).then(|| {
                let ports = self.ports().unwrap_or_default();
                // Far enough ahead that nothing expires while the fuzzer runs, or too far.
                let hours = 3_600 * (1 + self.rng.below(20));
                let ahead = *self.pick(&[hours, 365 * 86_400, 366 * 86_400, u64::MAX]);
                let expires_at = (self.rng.below(2) == 0).then(|| sent_at.saturating_add(ahead));
                (ports, expires_at)
            });
            let mut row = json!({"line": line + 2, "network": written_net(&written), "description": description});
            if let Some((ports, expires_at)) = &scope {
                let mut object = json!({"ports": ports});
                if let Some(at) = expires_at {
                    object["expires_at"] = json!(at);
                }
                row["scope"] = object;
            }
            rows.push(row);
            applied.push((listed_as(network), description, scope));
        }
        let request = json!({
            "command": "import",
            "rows": rows,
            "replace": replace,
            "dry_run": dry_run,
            "safety": {"force": force},
        });
        let apply: Box<dyn FnOnce(&mut Model)> = if dry_run {
            no_change()
        } else {
            Box::new(move |model: &mut Model| {
                let owned = model.config_owned.clone();
                if replace {
                    let named: Vec<IpNet> = applied.iter().map(|(network, ..)| *network).collect();
                    model.entries.retain(|network, _| named.contains(network));
                }
                for (network, description, scope) in applied {
                    if owned.contains(&network) {
                        continue;
                    }
                    let base = model.entries.get(&network).cloned().unwrap_or(Listed {
                        description: String::new(),
                        ports: Vec::new(),
                        expires_at: None,
                    });
                    let entry = match scope {
                        Some((ports, expires_at)) => Listed {
                            description,
                            ports,
                            expires_at,
                        },
                        None => Listed {
                            description,
                            ..base
                        },
                    };
                    model.entries.insert(network, entry);
                }
            })
        };
        Sent {
            line: request.to_string(),
            apply,
        }
    }

    /// Bytes no client should send: not JSON, wrong types, invalid UTF-8, control
    /// characters, deep nesting, numbers out of every range.
    fn garbage(&mut self) -> Sent {
        let line = match self.rng.below(6) {
            0 => (0..self.rng.below(300))
                .map(|_| (self.rng.next_u64() as u8 % 0x7f).max(0x20) as char)
                .collect(),
            1 => String::from_utf8_lossy(&(0..64).map(|_| self.rng.next_u64() as u8).filter(|byte| *byte != b'\n').collect::<Vec<u8>>()).into_owned(),
            2 => format!("{}{}", "[".repeat(200), "]".repeat(200)),
            3 => r#"{"command":"add","network":"10.0.0.1/32","expires_in_secs":-1}"#.into(),
            4 => r#"{"command":"add","network":"10.0.0.1/33"}"#.into(),
            _ => r#"{"command":"import","rows":[{"line":1,"network":"10.0.0.1/32"}],"replace":"yes"}"#.into(),
        };
        Sent {
            line,
            apply: no_change(),
        }
    }
}

/// The network a string names, as serde would read it for the request (an address is
/// sent as a /32 or /128: the protocol carries networks).
fn parse_net(written: &str) -> Option<IpNet> {
    written
        .parse::<IpNet>()
        .ok()
        .or_else(|| written.parse::<IpAddr>().ok().map(IpNet::from))
}

fn written_net(written: &str) -> String {
    parse_net(written).map_or_else(|| written.to_string(), |network| network.to_string())
}

/// Sends a line and reads the reply; `None` if the daemon closed the connection.
fn exchange(stream: &mut BufReader<UnixStream>, line: &str) -> Option<Value> {
    stream
        .get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .ok()?;
    let mut reply = String::new();
    match stream.read_line(&mut reply) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(serde_json::from_str(&reply).unwrap_or_else(|error| {
            panic!("a reply that is not JSON ({error}) to {line:?}: {reply:?}")
        })),
    }
}

fn connect(daemon: &Daemon) -> BufReader<UnixStream> {
    let stream = UnixStream::connect(&daemon.files().socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    BufReader::new(stream)
}

/// The daemon's managed entries and mode, as `list` and `status` report them.
fn daemon_state(
    daemon: &Daemon,
    stream: &mut BufReader<UnixStream>,
) -> (BTreeMap<IpNet, Listed>, String) {
    let list = exchange(stream, r#"{"command":"list"}"#).expect("list");
    let mut entries = BTreeMap::new();
    for entry in list["entries"].as_array().expect("entries") {
        if !matches!(entry["origin"].as_str(), Some("cli" | "csv_import")) {
            continue;
        }
        let network: IpNet = entry["network"].as_str().unwrap().parse().unwrap();
        let ports = entry["ports"]
            .as_array()
            .map(|ports| {
                ports
                    .iter()
                    .map(|port| port.as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        entries.insert(
            network,
            Listed {
                description: entry["description"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                ports,
                expires_at: entry["expires_at"].as_u64(),
            },
        );
    }
    let status = exchange(stream, r#"{"command":"status"}"#).expect("status");
    let mode = status["status"]["mode"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let _ = daemon;
    (entries, mode)
}

/// Equal up to the second or two between the model's clock and the daemon's.
fn same(model: &BTreeMap<IpNet, Listed>, daemon: &BTreeMap<IpNet, Listed>) -> bool {
    model.len() == daemon.len()
        && model.iter().zip(daemon).all(|((a_net, a), (b_net, b))| {
            a_net == b_net
                && a.description == b.description
                && a.ports == b.ports
                && match (a.expires_at, b.expires_at) {
                    (Some(x), Some(y)) => x.abs_diff(y) <= 2,
                    (x, y) => x == y,
                }
        })
}

#[test]
fn any_request_is_answered_and_the_daemon_keeps_exactly_the_accepted_changes() {
    let topology = Topology::new().unwrap();
    let config = ConfigBuilder::allowed_client(&topology).mode(Mode::Monitor);
    let daemon = Daemon::start(&topology, &config).unwrap();
    let seed = seed();
    eprintln!(
        "control fuzzing for {:?} from ALLOWLIST_FUZZ_SEED={seed}",
        budget()
    );
    let mut generator = Generator {
        rng: Rng::new(seed),
    };
    let mut model = Model {
        entries: BTreeMap::new(),
        mode: "monitor".into(),
        config_owned: vec![
            format!("{}/32", ALLOWED_LINK.client_v4).parse().unwrap(),
            format!("{}/128", ALLOWED_LINK.client_v6).parse().unwrap(),
        ],
    };
    let mut stream = connect(&daemon);
    let mut history: Vec<String> = Vec::new();
    let (mut accepted, mut refused) = (0usize, 0usize);
    let deadline = Instant::now() + budget();
    while Instant::now() < deadline {
        let sent = generator.request();
        history.push(sent.line.clone());
        match exchange(&mut stream, &sent.line) {
            Some(reply) if reply["ok"] == true => {
                accepted += 1;
                (sent.apply)(&mut model);
            }
            Some(_) => refused += 1,
            // Closed (an oversized or malformed stream): the next request on a new one.
            None => stream = connect(&daemon),
        }
        if history.len().is_multiple_of(25) {
            let (entries, mode) = daemon_state(&daemon, &mut stream);
            assert!(
                same(&model.entries, &entries) && mode == model.mode,
                "the daemon's state differs from the model's after (ALLOWLIST_FUZZ_SEED={seed}):\n{}\nmodel: {:?} mode {}\ndaemon: {entries:?} mode {mode}\nlog:\n{}",
                history.join("\n"),
                model.entries,
                model.mode,
                daemon.log()
            );
            history.clear();
        }
    }
    let (entries, mode) = daemon_state(&daemon, &mut stream);
    assert!(
        same(&model.entries, &entries) && mode == model.mode,
        "the daemon's state differs from the model's at the end (seed {seed}):\n{}",
        history.join("\n")
    );
    assert!(
        !daemon.log().contains("panicked"),
        "the daemon panicked:\n{}",
        daemon.log()
    );
    eprintln!(
        "{accepted} requests accepted, {refused} refused; the daemon matched the model throughout"
    );
    assert!(
        accepted > 0 && refused > 0,
        "the fuzzer never exercised both outcomes"
    );
}
