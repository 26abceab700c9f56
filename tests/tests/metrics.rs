//! Prometheus metrics: with `metrics_listen` the daemon serves `/metrics` over HTTP; the
//! text passes `promtool check metrics`, its counters are the ones `stats` shows, and a
//! real Prometheus server (Debian's, on loopback in the host's namespace) scrapes it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use allowlist_tests::{
    in_netns, udp_send, wait_until, ConfigBuilder, Daemon, Netns, Topology, UdpSink, ALLOWED_LINK,
    BLOCKED_LINK,
};
use serde_json::Value;

const UDP_PORT: u16 = 7501;
const WAIT: Duration = Duration::from_secs(30);

fn metrics_at() -> SocketAddr {
    "127.0.0.1:9720".parse().unwrap()
}

/// `GET path` over HTTP/1.0 from inside `netns`: the status line, the headers and the body.
fn http_get(netns: &Netns, at: SocketAddr, path: &str) -> (String, String, String) {
    http_get_with(netns, at, path, "")
}

/// As [`http_get`], with `headers` (each ending in CRLF) in the request.
fn http_get_with(
    netns: &Netns,
    at: SocketAddr,
    path: &str,
    headers: &str,
) -> (String, String, String) {
    let response = in_netns(netns, || {
        let mut stream = TcpStream::connect(at)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {at}\r\n{headers}\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok::<_, std::io::Error>(response)
    })
    .unwrap_or_else(|error| panic!("GET http://{at}{path}: {error}"));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers: {response:?}"));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_owned(), body.to_owned())
}

/// The value of the sample `name` (with its labels, as written) in exposition `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// A daemon guarding `topology` with metrics on, after 23 packets from the blocked client
/// and 11 from the allowed one have been counted.
fn daemon_with_traffic(topology: &Topology) -> Daemon<'_> {
    topology.disable_ipv6().unwrap();
    topology.pin_client_neighbours().unwrap();
    let config = ConfigBuilder::allowed_client_v4(topology).metrics_listen(metrics_at());
    let daemon = Daemon::start(topology, &config).unwrap();
    let sink = UdpSink::start(
        topology.host(),
        SocketAddr::new("0.0.0.0".parse().unwrap(), UDP_PORT),
    )
    .unwrap();
    udp_send(
        topology.blocked(),
        None,
        SocketAddr::new(BLOCKED_LINK.host_v4.into(), UDP_PORT),
        23,
        100,
    )
    .unwrap();
    udp_send(
        topology.allowed(),
        None,
        SocketAddr::new(ALLOWED_LINK.host_v4.into(), UDP_PORT),
        11,
        100,
    )
    .unwrap();
    assert!(sink.wait_for(ALLOWED_LINK.client_v4.into(), 11, WAIT));
    assert!(
        wait_until(WAIT, || daemon.stats().get("dropped_not_listed").packets
            == 23),
        "the blocked client's packets were not counted:\n{}",
        daemon.log()
    );
    daemon
}

const DROPPED: &str =
    "allowlist_packets_total{interface=\"to_blocked\",reason=\"dropped_not_listed\",verdict=\"drop\"}";

#[test]
fn the_metrics_endpoint_serves_what_stats_shows_and_promtool_accepts_it() {
    let topology = Topology::new().unwrap();
    let daemon = daemon_with_traffic(&topology);

    let (status, headers, body) = http_get(topology.host(), metrics_at(), "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{headers}\n{body}");
    assert!(
        headers.contains("Content-Type: text/plain; version=0.0.4"),
        "{headers}"
    );
    let stats = daemon.ctl_json(&["stats"]);
    for interface in ["to_allowed", "to_blocked"] {
        for (reason, verdict) in [("dropped_not_listed", "drop"), ("passed_listed", "pass")] {
            let labels =
                format!("interface=\"{interface}\",reason=\"{reason}\",verdict=\"{verdict}\"");
            let counted = &stats["interfaces"][interface][reason];
            let packets = format!("allowlist_packets_total{{{labels}}}");
            let bytes = format!("allowlist_bytes_total{{{labels}}}");
            assert_eq!(
                sample(&body, &packets),
                counted["packets"].as_f64(),
                "{packets}:\n{body}"
            );
            assert_eq!(
                sample(&body, &bytes),
                counted["bytes"].as_f64(),
                "{bytes}:\n{body}"
            );
        }
    }
    assert_eq!(sample(&body, DROPPED), Some(23.0), "{body}");
    assert_eq!(sample(&body, "allowlist_mode{mode=\"enforce\"}"), Some(1.0));
    assert_eq!(
        sample(
            &body,
            "allowlist_entries{family=\"ipv4\",origin=\"config\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert!(
        body.contains("allowlist_interface_attached{interface=\"to_blocked\""),
        "{body}"
    );
    assert!(body.contains("allowlist_apply_duration_seconds_count{kind=\"whole\"}"));
    assert!(body.contains("allowlist_build_info{version="), "{body}");
    // No source address is a label.
    assert!(
        !body.contains(&BLOCKED_LINK.client_v4.to_string()),
        "a source address in the metrics:\n{body}"
    );

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; cargo xtask setup installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics refused the text: {}{}\n{body}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // A scraper that asks for OpenMetrics (as Prometheus does) gets it.
    let (_, headers, openmetrics) = http_get_with(
        topology.host(),
        metrics_at(),
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n",
    );
    assert!(
        headers.contains("Content-Type: application/openmetrics-text"),
        "{headers}"
    );
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    assert_eq!(sample(&openmetrics, DROPPED), Some(23.0), "{openmetrics}");

    let (status, _, _) = http_get(topology.host(), metrics_at(), "/other");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

/// A Prometheus server in `netns`, killed when dropped.
struct Prometheus {
    child: Child,
    _storage: tempfile::TempDir,
}

impl Prometheus {
    fn start(netns: &Netns, target: SocketAddr, web: SocketAddr) -> Self {
        let storage = tempfile::tempdir().unwrap();
        let config = storage.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: allowlist\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.path().display()))
            .arg("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                storage.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus; cargo xtask setup installs it)");
        Prometheus {
            child,
            _storage: storage,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_prometheus_server_scrapes_the_endpoint_and_its_counter_matches_stats() {
    let topology = Topology::new().unwrap();
    let daemon = daemon_with_traffic(&topology);
    let web: SocketAddr = "127.0.0.1:9090".parse().unwrap();
    let _prometheus = Prometheus::start(topology.host(), metrics_at(), web);

    let expected = daemon.stats().get("dropped_not_listed").packets;
    // sum(allowlist_packets_total{reason="dropped_not_listed"}): every interface's series
    // add up to the total `stats` shows.
    let query = "/api/v1/query?query=sum%28allowlist_packets_total%7Breason%3D%22dropped_not_listed%22%7D%29";
    let mut answer = Value::Null;
    let scraped = wait_until(WAIT, || {
        let Ok(result) = std::panic::catch_unwind(|| http_get(topology.host(), web, query)) else {
            return false; // not listening yet
        };
        answer = serde_json::from_str(&result.2).unwrap_or(Value::Null);
        // Prometheus gives sample values as strings.
        answer["data"]["result"][0]["value"][1].as_str() == Some(expected.to_string().as_str())
    });
    assert!(
        scraped,
        "Prometheus never reported {expected} for dropped_not_listed: {answer:#}"
    );
}

#[test]
fn stats_counts_each_interface_apart_the_totals_add_up_and_a_restart_keeps_them() {
    let topology = Topology::new().unwrap();
    let mut daemon = daemon_with_traffic(&topology);
    let counted = |daemon: &Daemon, interface: &str, reason: &str| {
        daemon.ctl_json(&["stats", "--interface", interface])["counters"][reason]["packets"]
            .as_u64()
            .unwrap()
    };
    let on_each = |daemon: &Daemon| {
        (
            counted(daemon, "to_blocked", "dropped_not_listed"),
            counted(daemon, "to_blocked", "passed_listed"),
            counted(daemon, "to_allowed", "dropped_not_listed"),
            counted(daemon, "to_allowed", "passed_listed") >= 11,
        )
    };
    assert_eq!(on_each(&daemon), (23, 0, 0, true), "{}", daemon.log());
    let total = daemon.stats();
    let all = daemon.ctl_json(&["stats"]);
    for reason in ["dropped_not_listed", "passed_listed"] {
        let sum: u64 = ["to_allowed", "to_blocked"]
            .iter()
            .map(|interface| {
                all["interfaces"][interface][reason]["packets"]
                    .as_u64()
                    .unwrap()
            })
            .sum();
        assert_eq!(sum, total.get(reason).packets, "{reason}: {all:#}");
    }

    let text = daemon.ctl_ok(&["stats", "--interface", "to_blocked"]);
    assert!(
        text.lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>()[..2]
                == ["dropped_not_listed", "23"]),
        "{text}"
    );
    let unknown = daemon.ctl(&["stats", "--interface", "eth9"]);
    assert!(!unknown.status.success());
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        said.contains("eth9") && said.contains("to_allowed, to_blocked"),
        "{said}"
    );

    daemon.terminate().unwrap();
    daemon.restart().unwrap();
    assert_eq!(on_each(&daemon), (23, 0, 0, true), "{}", daemon.log());
}
