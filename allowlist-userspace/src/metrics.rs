//! Prometheus metrics: `metrics_listen = "127.0.0.1:9720"` in the config makes the
//! daemon serve `GET /metrics` there, encoded by the prometheus-client crate: in the
//! OpenMetrics text format to a scraper that asks for it (Prometheus does), otherwise in
//! the classic Prometheus text format (curl, `promtool check metrics`).
//!
//! Every scrape reads the kernel's counters afresh, so there is nothing to fall behind.
//! No label holds a source address: their number is unbounded, and `allowlistctl top`
//! is where sources are.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `allowlist_packets_total`, `allowlist_bytes_total` | counter | `interface`, `reason`, `verdict` |
//! | `allowlist_mode` | gauge (1 for the mode in force) | `mode` |
//! | `allowlist_entries` | gauge | `family`, `origin` |
//! | `allowlist_prefixes` | gauge | `family` |
//! | `allowlist_interface_attached` | gauge | `interface`, `xdp_mode` |
//! | `allowlist_apply_duration_seconds` | histogram | `kind` (`whole`, `region`) |
//! | `allowlist_last_apply_timestamp_seconds`, `allowlist_last_apply_duration_seconds` | gauge | |
//! | `allowlist_last_change_timestamp_seconds` | gauge | |
//! | `allowlist_expired_entries_total`, `allowlist_rollbacks_total` | counter | |
//! | `allowlist_build_info` | gauge (1) | `version` |

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tracing::{debug, warn};

use crate::{config::Mode, daemon::Daemon, filter::Counters};

/// What the daemon counts of its own work, between scrapes.
#[derive(Clone, Debug)]
pub struct Events {
    /// Unix time (seconds, fractional) of the last whole apply, and what it took.
    pub last_apply: Option<(f64, Duration)>,
    /// Unix time of the last change that reached the kernel and the disk.
    pub last_change: Option<f64>,
    pub expired: u64,
    pub rollbacks: u64,
    apply_durations: Family<ApplyLabels, Histogram, fn() -> Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApplyLabels {
    kind: &'static str,
}

fn apply_histogram() -> Histogram {
    // 50 µs to about 13 s, each bucket 4 times the last.
    Histogram::new(exponential_buckets(0.000_05, 4.0, 10))
}

impl Default for Events {
    fn default() -> Self {
        Self {
            last_apply: None,
            last_change: None,
            expired: 0,
            rollbacks: 0,
            apply_durations: Family::new_with_constructor(apply_histogram),
        }
    }
}

impl Events {
    /// A whole list written and the program pointed at it.
    pub fn applied_whole(&mut self, took: Duration) {
        self.last_apply = Some((unix_now(), took));
        self.observe("whole", took);
    }

    /// One entry's region changed in place.
    pub fn applied_region(&mut self, took: Duration) {
        self.observe("region", took);
    }

    pub fn changed(&mut self) {
        self.last_change = Some(unix_now());
    }

    fn observe(&self, kind: &'static str, took: Duration) {
        self.apply_durations
            .get_or_create(&ApplyLabels { kind })
            .observe(took.as_secs_f64());
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// What one scrape shows, read from the daemon under its lock.
pub struct Snapshot {
    /// Totals over every interface.
    pub counters: Counters,
    /// Each attached interface's counters.
    pub interface_counters: BTreeMap<String, Counters>,
    pub mode: Mode,
    /// (family, origin) → entries.
    pub entries: Vec<((&'static str, String), usize)>,
    pub prefixes: (usize, usize),
    /// (interface, XDP mode).
    pub interfaces: Vec<(String, String)>,
    pub events: Events,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    interface: String,
    reason: &'static str,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EntryLabels {
    family: &'static str,
    origin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabels {
    family: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterfaceLabels {
    interface: String,
    xdp_mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The snapshot in the OpenMetrics text format.
pub fn encode_snapshot(snapshot: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("allowlist");

    let packets = Family::<ReasonLabels, Counter>::default();
    let bytes = Family::<ReasonLabels, Counter>::default();
    for reason in allowlist_common::Reason::ALL {
        let of = |counters: &Counters| counters.get(reason.name()).copied().unwrap_or_default();
        let labels = |interface: &str| ReasonLabels {
            interface: interface.to_string(),
            reason: reason.name(),
            verdict: if reason.drops() { "drop" } else { "pass" },
        };
        let mut unattributed = of(&snapshot.counters);
        for (interface, counters) in &snapshot.interface_counters {
            let counter = of(counters);
            packets
                .get_or_create(&labels(interface))
                .inc_by(counter.packets);
            bytes
                .get_or_create(&labels(interface))
                .inc_by(counter.bytes);
            unattributed.packets = unattributed.packets.saturating_sub(counter.packets);
            unattributed.bytes = unattributed.bytes.saturating_sub(counter.bytes);
        }
        // What no attached interface counted (before per-interface counting, or on an
        // interface since detached), so that the series add up to the totals.
        if unattributed.packets > 0 || snapshot.interface_counters.is_empty() {
            packets
                .get_or_create(&labels(""))
                .inc_by(unattributed.packets);
            bytes.get_or_create(&labels("")).inc_by(unattributed.bytes);
        }
    }
    registry.register(
        "packets",
        "Packets the XDP program judged, by interface (empty: none attached now), the reason it counted them under (allowlistctl stats) and whether it passed or dropped them",
        packets,
    );
    registry.register(
        "bytes",
        "Bytes of the frames the XDP program judged (Ethernet header included), by interface, reason and verdict",
        bytes,
    );

    let mode = Family::<ModeLabels, Gauge>::default();
    for (name, value) in [
        ("off", Mode::Off),
        ("monitor", Mode::Monitor),
        ("enforce", Mode::Enforce),
    ] {
        mode.get_or_create(&ModeLabels { mode: name })
            .set(i64::from(snapshot.mode == value));
    }
    registry.register(
        "mode",
        "The mode the kernel is in: 1 for the one in force",
        mode,
    );

    let entries = Family::<EntryLabels, Gauge>::default();
    for ((family, origin), count) in &snapshot.entries {
        entries
            .get_or_create(&EntryLabels {
                family,
                origin: origin.clone(),
            })
            .set(gauge_value(*count));
    }
    registry.register(
        "entries",
        "Entries on the list, by address family and origin (config, always, cli, csv-import)",
        entries,
    );

    let prefixes = Family::<FamilyLabels, Gauge>::default();
    for (family, count) in [("ipv4", snapshot.prefixes.0), ("ipv6", snapshot.prefixes.1)] {
        prefixes
            .get_or_create(&FamilyLabels { family })
            .set(gauge_value(count));
    }
    registry.register(
        "prefixes",
        "Prefixes in the kernel's active list after compiling, by address family",
        prefixes,
    );

    let interfaces = Family::<InterfaceLabels, Gauge>::default();
    for (interface, xdp_mode) in &snapshot.interfaces {
        interfaces
            .get_or_create(&InterfaceLabels {
                interface: interface.clone(),
                xdp_mode: xdp_mode.clone(),
            })
            .set(1);
    }
    registry.register(
        "interface_attached",
        "Interfaces the XDP program is attached to (1), with the XDP mode",
        interfaces,
    );

    registry.register(
        "apply_duration_seconds",
        "Time the kernel took to take a list change: whole (a new list into the standby slot, flip, sync) or region (one entry in place)",
        snapshot.events.apply_durations.clone(),
    );
    if let Some((at, took)) = snapshot.events.last_apply {
        let timestamp = FloatGauge::default();
        timestamp.set(at);
        registry.register(
            "last_apply_timestamp_seconds",
            "Unix time the active slot was last written whole",
            timestamp,
        );
        let duration = FloatGauge::default();
        duration.set(took.as_secs_f64());
        registry.register(
            "last_apply_duration_seconds",
            "Time the last whole write of the active slot took",
            duration,
        );
    }
    if let Some(at) = snapshot.events.last_change {
        let timestamp = FloatGauge::default();
        timestamp.set(at);
        registry.register(
            "last_change_timestamp_seconds",
            "Unix time of the last change to the list or mode that reached the kernel and the disk",
            timestamp,
        );
    }
    let expired = Counter::<u64>::default();
    expired.inc_by(snapshot.events.expired);
    registry.register(
        "expired_entries",
        "Temporary entries that expired and left the kernel",
        expired,
    );
    let rollbacks = Counter::<u64>::default();
    rollbacks.inc_by(snapshot.events.rollbacks);
    registry.register(
        "rollbacks",
        "Changes the kernel or the disk refused, undone",
        rollbacks,
    );

    let build = Family::<BuildLabels, Gauge>::default();
    build
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
    registry.register("build_info", "The running allowlistd's version", build);

    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Binds the metrics listener; called before the daemon reports ready, so a port in use
/// fails the start with the address named.
pub async fn bind(at: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(at).await.map_err(|error| {
        format!("metrics_listen = \"{at}\": cannot listen there: {error}; pick a free port or remove metrics_listen")
    })
}

/// Longest request head read from a scraper.
const MAX_REQUEST_HEAD: usize = 8 << 10;
/// A scraper that sends nothing (or takes nothing) for this long is disconnected.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Scrapes answered at once; connections beyond are closed unanswered, so no one who
/// can reach the port ties up the daemon (each scrape reads the kernel under its lock).
const MAX_CONCURRENT_SCRAPES: usize = 8;

/// Serves `GET /metrics` until the daemon stops. One request per connection.
pub async fn serve(listener: TcpListener, daemon: Arc<Mutex<Daemon>>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_SCRAPES));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    debug!(%peer, "too many metrics scrapes at once; closed");
                    continue;
                };
                let daemon = Arc::clone(&daemon);
                tokio::spawn(async move {
                    if let Err(error) =
                        tokio::time::timeout(SCRAPE_TIMEOUT, answer(stream, daemon)).await
                    {
                        debug!(%peer, %error, "metrics scrape timed out");
                    }
                    drop(slot);
                });
            }
            Err(error) => {
                warn!(%error, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, daemon: Arc<Mutex<Daemon>>) {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
        if head.len() > MAX_REQUEST_HEAD {
            let _ = respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
            return;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let openmetrics = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("accept") && value.contains("application/openmetrics-text")
        })
    });
    let line = head.lines().next().unwrap_or_default();
    let mut words = line.split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        let _ = respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "only GET /metrics\n",
        )
        .await;
        return;
    }
    if path != "/metrics" {
        let _ = respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            "allowlistd serves /metrics\n",
        )
        .await;
        return;
    }
    let scraped = tokio::task::spawn_blocking(move || {
        let daemon = daemon
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        daemon
            .metrics_snapshot()
            .map(|snapshot| encode_snapshot(&snapshot))
    })
    .await;
    let _ = match scraped {
        Ok(Ok(text)) => {
            let (content_type, text) = if openmetrics {
                (OPENMETRICS, text)
            } else {
                (CLASSIC, classic_text(&text))
            };
            let body = if method == "HEAD" { "" } else { text.as_str() };
            respond(&mut stream, "200 OK", content_type, body).await
        }
        Ok(Err(error)) => {
            warn!(%error, "reading the kernel's counters for a metrics scrape failed");
            respond(
                &mut stream,
                "500 Internal Server Error",
                "text/plain",
                &format!("{error}\n"),
            )
            .await
        }
        Err(_) => respond(&mut stream, "500 Internal Server Error", "text/plain", "").await,
    };
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics text as the classic Prometheus text format: there a counter's HELP and
/// TYPE name its samples' name (`_total` included), and there is no `# EOF` or `# UNIT`.
fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].into_iter().find_map(|comment| {
            let rest = line.strip_prefix(comment)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{comment}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => text.push_str(&line),
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_follows_prometheus_naming_and_its_series_add_up_to_the_totals() {
        let mut counters = Counters::new();
        counters.insert(
            "dropped_not_listed",
            allowlist_common::Counter {
                packets: 23,
                bytes: 2_300,
            },
        );
        let mut events = Events::default();
        events.applied_whole(Duration::from_millis(3));
        events.changed();
        let mut interface_counters = BTreeMap::new();
        interface_counters.insert("eth0".to_string(), counters.clone());
        counters.insert(
            "dropped_not_listed",
            allowlist_common::Counter {
                packets: 30,
                bytes: 3_000,
            },
        );
        let text = encode_snapshot(&Snapshot {
            counters,
            interface_counters,
            mode: Mode::Enforce,
            entries: vec![(("ipv4", "config".into()), 2)],
            prefixes: (2, 0),
            interfaces: vec![("eth0".into(), "native".into())],
            events,
        });
        for expected in [
            "allowlist_packets_total{interface=\"eth0\",reason=\"dropped_not_listed\",verdict=\"drop\"} 23\n",
            "allowlist_bytes_total{interface=\"eth0\",reason=\"dropped_not_listed\",verdict=\"drop\"} 2300\n",
            "allowlist_packets_total{interface=\"\",reason=\"dropped_not_listed\",verdict=\"drop\"} 7\n",
            "allowlist_packets_total{interface=\"eth0\",reason=\"passed_listed\",verdict=\"pass\"} 0\n",
            "allowlist_mode{mode=\"enforce\"} 1\n",
            "allowlist_mode{mode=\"monitor\"} 0\n",
            "allowlist_entries{family=\"ipv4\",origin=\"config\"} 2\n",
            "allowlist_apply_duration_seconds_count{kind=\"whole\"} 1\n",
            "allowlist_build_info{version=",
            "# EOF\n",
        ] {
            assert!(text.contains(expected), "{expected:?} missing:\n{text}");
        }
        let classic = classic_text(&text);
        assert!(
            classic.contains("# TYPE allowlist_packets_total counter\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP allowlist_packets_total Packets"),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE allowlist_mode gauge\n"),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"), "{classic}");
    }
}
