//! The daemon's TOML configuration: parsing and validation.
//!
//! Every error names the file, the line and the offending value, and says what to do,
//! because an operator reads it while the host's access is at stake. Validation is
//! complete before anything touches the kernel. Past 500 lines only with its unit tests.

use std::{
    collections::HashMap,
    fmt, fs,
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::{
    feeds::{
        config::{FeedConfig, MAX_FEEDS},
        dns::DnsSettings,
    },
    ports::PortSpec,
};

pub const DEFAULT_CONFIG: &str = "/etc/allowlist/allowlist.toml";
pub const DEFAULT_SOCKET: &str = "/run/allowlist/control.sock";
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/allowlist";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/allowlist";

/// What the filter does with IP packets from sources that are not listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Off,
    Monitor,
    Enforce,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Monitor => "monitor",
            Mode::Enforce => "enforce",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Mode> for allowlist_common::Mode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Off => allowlist_common::Mode::Off,
            Mode::Monitor => allowlist_common::Mode::Monitor,
            Mode::Enforce => allowlist_common::Mode::Enforce,
        }
    }
}

/// How the XDP program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode when the driver supports it, else generic.
    Auto,
    /// Driver mode only: fails on drivers without XDP support.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
}

/// What happens to IP the filter cannot see into: behind a third VLAN tag, in a PPPoE
/// session, under MPLS labels (`encapsulated_ip`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EncapsulatedIp {
    /// Judged like an unlisted source: dropped when enforcing, counted when monitoring
    /// (the default).
    Drop,
    /// Passed unjudged, counted as `passed_encapsulated`: for hosts that terminate such
    /// encapsulations themselves (a PPPoE client, stacked VLAN devices, MPLS).
    Pass,
}

/// One `[[allow]]` entry after validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowEntry {
    /// The network, host bits cleared.
    pub network: IpNet,
    pub description: String,
    /// Destination ports the network may reach; empty means all.
    pub ports: Vec<PortSpec>,
    /// Line of the entry's `cidr` in the config file, for messages.
    pub line: usize,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub path: PathBuf,
    pub interfaces: Vec<String>,
    pub mode: Mode,
    pub xdp_mode: XdpMode,
    pub socket: PathBuf,
    pub pin_path: PathBuf,
    pub state_dir: PathBuf,
    pub allow: Vec<AllowEntry>,
    /// Sources the host needs to function; enforced whatever the rest of the list says.
    pub always: Vec<AllowEntry>,
    /// Group (besides root) allowed to change the allowlist through the socket.
    pub socket_group: Option<String>,
    /// Whether everyone may use read-only commands (status, stats, list, check, export).
    pub socket_readable_by_all: bool,
    /// Replies to flows the host opened pass without listing the remote.
    pub return_traffic: bool,
    /// DHCP (and DHCPv6) replies to the host's client pass.
    pub dhcp_client: bool,
    /// What happens to IP behind a third VLAN tag, in a PPPoE session or under MPLS.
    pub encapsulated_ip: EncapsulatedIp,
    /// Destination ports every source may reach.
    pub public_ports: Vec<PortSpec>,
    /// How many dropped sources the kernel remembers for `allowlistctl top`; 0: none.
    pub dropped_sources: u32,
    /// Where the daemon serves Prometheus metrics (`/metrics`); `None`: nowhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[[feed]]`: provider lists fetched (or preset), each a read-only set; and each
    /// `[[allow]] host` (and `allowlistctl add --host`) name, a set of its own.
    pub feeds: Vec<FeedConfig>,
    /// How `host` names are resolved.
    pub dns: DnsSettings,
    /// `[fleet]`: the etcd this host follows; its `sets` are in `feeds` too (each a
    /// read-only set whose source is etcd).
    pub fleet: Option<crate::fleet::FleetConfig>,
    /// Notes worth logging that do not stop the config from loading (e.g. host bits).
    pub warnings: Vec<String>,
}

/// A config that cannot be used. Displayed as `FILE:LINE: message`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config file: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interfaces: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    mode: Option<Spanned<Mode>>,
    #[serde(default)]
    xdp_mode: Option<XdpMode>,
    #[serde(default)]
    socket: Option<PathBuf>,
    #[serde(default)]
    pin_path: Option<PathBuf>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    socket_group: Option<Spanned<String>>,
    #[serde(default)]
    socket_readable_by_all: bool,
    #[serde(default)]
    return_traffic: Option<bool>,
    #[serde(default)]
    dhcp_client: Option<bool>,
    #[serde(default)]
    encapsulated_ip: Option<EncapsulatedIp>,
    #[serde(default)]
    public_ports: Vec<Spanned<String>>,
    #[serde(default)]
    dropped_sources: Option<Spanned<i64>>,
    #[serde(default)]
    metrics_listen: Option<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<RawAllow>>,
    #[serde(default)]
    always: Vec<Spanned<RawAllow>>,
    #[serde(default)]
    feed: Vec<crate::feeds::config::RawFeed>,
    #[serde(default)]
    fleet: Option<crate::fleet::config::RawFleet>,
    #[serde(default)]
    dns_servers: Vec<Spanned<String>>,
    #[serde(default)]
    dns_min_ttl: Option<Spanned<String>>,
    #[serde(default)]
    dns_max_ttl: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    #[serde(default)]
    cidr: Option<Spanned<String>>,
    /// A DNS name whose A and AAAA records are allowed (`[[allow]]` only).
    #[serde(default)]
    host: Option<Spanned<String>>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    ports: Vec<Spanned<String>>,
}

impl Config {
    /// Reads and validates the config at `path`.
    /// Reads and validates the file at `path`, which is kept absolute: `status` and
    /// every message name it so it can be found from anywhere.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let text = fs::read_to_string(&path).map_err(|cause| ConfigError::Read {
            path: path.display().to_string(),
            cause,
        })?;
        Self::parse(&path, &text)
    }

    /// Validates `text` as the contents of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let raw: RawConfig = toml::from_str(text).map_err(|error| syntax_error(&shown, error))?;
        let lines = Lines::of(text);
        let invalid = |span: Range<usize>, message: String| ConfigError::Invalid {
            path: shown.clone(),
            line: lines.line_of(span.start),
            message,
        };

        let interfaces_span = raw.interfaces.span();
        let interfaces = raw.interfaces.into_inner();
        let mut warnings = Vec::new();
        // Allowed so that a freshly installed package can run its service without
        // guessing which interface carries the operator's own session.
        if interfaces.is_empty() {
            warnings.push(format!(
                "{shown}:{}: interfaces = []: the filter is attached nowhere and judges no traffic; name the interfaces to protect, e.g. interfaces = [\"eth0\"], and reload",
                lines.line_of(interfaces_span.start)
            ));
        }
        let mut names = Vec::with_capacity(interfaces.len());
        for interface in interfaces {
            let span = interface.span();
            let name = interface.into_inner();
            if !interface_exists(&name) {
                return Err(invalid(
                    span,
                    format!(
                        "interface {name:?} does not exist in this network namespace; `ip link` lists the names"
                    ),
                ));
            }
            if names.contains(&name) {
                return Err(invalid(span, format!("interface {name:?} is listed twice")));
            }
            names.push(name);
        }

        // Where each network was first listed, to name both lines of a duplicate.
        let mut seen: HashMap<IpNet, (usize, &'static str)> = HashMap::new();
        let mut hosts: Vec<(Spanned<String>, RawAllow)> = Vec::new();
        let by_cidr = |raw: Vec<Spanned<RawAllow>>,
                       table: &'static str,
                       hosts: Option<&mut Vec<(Spanned<String>, RawAllow)>>|
         -> Result<Vec<(Spanned<String>, RawAllow)>, ConfigError> {
            let mut cidrs = Vec::with_capacity(raw.len());
            let mut hosts = hosts;
            for entry in raw {
                let span = entry.span();
                let mut entry = entry.into_inner();
                match (entry.cidr.take(), entry.host.take(), hosts.as_mut()) {
                    (Some(cidr), None, _) => cidrs.push((cidr, entry)),
                    (None, Some(host), Some(hosts)) => hosts.push((host, entry)),
                    (None, Some(host), None) => {
                        return Err(invalid(
                            host.span(),
                            format!("{table} takes cidr, not host: the sources the host needs to function are listed by address"),
                        ))
                    }
                    (Some(cidr), Some(_), _) => {
                        return Err(invalid(
                            cidr.span(),
                            format!("{table}: give either cidr or host, not both"),
                        ))
                    }
                    (None, None, _) => {
                        return Err(invalid(
                            span,
                            format!("{table} needs cidr = \"ADDRESS/PREFIX\"{}", if table == "[[allow]]" { " or host = \"NAME\"" } else { "" }),
                        ))
                    }
                }
            }
            Ok(cidrs)
        };
        let raw_allow = by_cidr(raw.allow, "[[allow]]", Some(&mut hosts))?;
        let raw_always = by_cidr(raw.always, "[[always]]", None)?;
        let mut entries = |raw: Vec<(Spanned<String>, RawAllow)>,
                           table: &'static str|
         -> Result<Vec<AllowEntry>, ConfigError> {
            let mut entries = Vec::with_capacity(raw.len());
            for (cidr, entry) in raw {
                let span = cidr.span();
                let line = lines.line_of(span.start);
                let given = cidr.into_inner();
                let (network, note) = parse_network_noting(&given)
                    .map_err(|message| invalid(span.clone(), message))?;
                if let Some((first, first_table)) = seen.insert(network, (line, table)) {
                    return Err(invalid(
                        span,
                        format!(
                            "{network} is listed twice: at line {first} ({first_table}) and here ({table}); keep one entry (give it the union of the ports both allow)"
                        ),
                    ));
                }
                if let Some(note) = note {
                    warnings.push(format!("{shown}:{line}: {note}"));
                }
                crate::allowlist::check_description(&entry.description)
                    .map_err(|message| invalid(span.clone(), message))?;
                let ports_span = entry.ports.first().map(|port| port.span());
                let ports =
                    parse_ports(entry.ports).map_err(|(span, message)| invalid(span, message))?;
                crate::ports::check_kernel_fit(&ports).map_err(|message| {
                    invalid(ports_span.clone().unwrap_or(span.clone()), message)
                })?;
                entries.push(AllowEntry {
                    network,
                    description: entry.description,
                    ports,
                    line,
                });
            }
            Ok(entries)
        };
        let allow = entries(raw_allow, "[[allow]]")?;
        let always = entries(raw_always, "[[always]]")?;
        let public_ports_span = raw.public_ports.first().map(|port| port.span());
        let public_ports =
            parse_ports(raw.public_ports).map_err(|(span, message)| invalid(span, message))?;
        if let Some(span) = public_ports_span {
            crate::ports::check_kernel_fit(&public_ports)
                .map_err(|message| invalid(span, message))?;
        }

        if raw.feed.len() > MAX_FEEDS {
            return Err(ConfigError::Invalid {
                path: shown.clone(),
                line: 1,
                message: format!("{} [[feed]] tables; at most {MAX_FEEDS}", raw.feed.len()),
            });
        }
        let mut feeds: Vec<FeedConfig> = Vec::with_capacity(raw.feed.len());
        for feed in raw.feed {
            let feed = FeedConfig::validate(
                feed,
                |offset| lines.line_of(offset),
                parse_ports,
                &mut warnings,
            )
            .map_err(|(span, message)| invalid(span, message))?;
            if let Some(first) = feeds.iter().find(|other| other.name == feed.name) {
                return Err(ConfigError::Invalid {
                    path: shown.clone(),
                    line: feed.line,
                    message: format!(
                        "feed {} is defined twice: at line {} and here; feed names are set names and must differ",
                        feed.name, first.line
                    ),
                });
            }
            feeds.push(feed);
        }
        let dns = dns_settings(raw.dns_servers, raw.dns_min_ttl, raw.dns_max_ttl)
            .map_err(|(span, message)| invalid(span, message))?;
        if hosts.len() > crate::feeds::dns::MAX_HOSTS {
            return Err(invalid(
                hosts[crate::feeds::dns::MAX_HOSTS].0.span(),
                format!(
                    "{} [[allow]] host entries; at most {}",
                    hosts.len(),
                    crate::feeds::dns::MAX_HOSTS
                ),
            ));
        }
        for (host, entry) in hosts {
            let span = host.span();
            let line = lines.line_of(span.start);
            let name = crate::feeds::dns::check_host(host.get_ref())
                .map_err(|message| invalid(span.clone(), message))?;
            let ports_span = entry.ports.first().map(|port| port.span());
            let ports =
                parse_ports(entry.ports).map_err(|(span, message)| invalid(span, message))?;
            crate::ports::check_kernel_fit(&ports)
                .map_err(|message| invalid(ports_span.clone().unwrap_or(span.clone()), message))?;
            let feed = FeedConfig::host(name, dns.clone(), ports, Some(entry.description), line)
                .map_err(|message| invalid(span.clone(), message))?;
            if let Some(first) = feeds.iter().find(|other| other.name == feed.name) {
                return Err(invalid(
                    span,
                    format!(
                        "{} is listed twice: at line {} and here; a host's set is named after it, so hosts and feeds must differ",
                        feed.name, first.line
                    ),
                ));
            }
            feeds.push(feed);
        }
        let fleet = match raw.fleet {
            None => None,
            Some(fleet) => Some(
                crate::fleet::FleetConfig::validate(fleet, |offset| lines.line_of(offset))
                    .map_err(|(span, message)| invalid(span, message))?,
            ),
        };
        for set in fleet.iter().flat_map(|fleet| fleet.sets.iter()) {
            let fleet = fleet.as_ref().map_or(0, |fleet| fleet.line);
            if let Some(first) = feeds.iter().find(|other| other.name == *set) {
                return Err(ConfigError::Invalid {
                    path: shown.clone(),
                    line: fleet,
                    message: format!(
                        "[fleet] sets names {set}, which is {} at line {}; a set has one source",
                        first.label(),
                        first.line
                    ),
                });
            }
            if feeds.len()
                >= MAX_FEEDS + crate::feeds::dns::MAX_HOSTS + crate::fleet::config::MAX_SETS
            {
                break;
            }
            feeds.push(FeedConfig::fleet(set.clone(), fleet));
        }
        for warning in warnings.iter_mut().filter(|w| w.starts_with("line ")) {
            *warning = format!("{shown}:{}", &warning["line ".len()..]);
        }

        let socket_group = match raw.socket_group {
            None => None,
            Some(group) => {
                let span = group.span();
                let name = group.into_inner();
                match nix::unistd::Group::from_name(&name) {
                    Ok(Some(_)) => Some(name),
                    _ => {
                        return Err(invalid(
                            span,
                            format!("socket_group {name:?} does not exist; create it (groupadd {name}) or remove the key"),
                        ))
                    }
                }
            }
        };
        let mode = raw.mode.map_or(Mode::Enforce, |mode| *mode.get_ref());
        let dropped_sources = match raw.dropped_sources {
            None => allowlist_common::DEFAULT_DROPPED_SOURCES,
            Some(value) => {
                let span = value.span();
                let value = value.into_inner();
                u32::try_from(value)
                    .ok()
                    .filter(|value| *value <= allowlist_common::MAX_DROPPED_SOURCES)
                    .ok_or_else(|| {
                        invalid(
                            span,
                            format!(
                                "dropped_sources = {value} is out of range: give 0 (remember none) to {} sources (default {})",
                                allowlist_common::MAX_DROPPED_SOURCES,
                                allowlist_common::DEFAULT_DROPPED_SOURCES
                            ),
                        )
                    })?
            }
        };
        let metrics_listen = match raw.metrics_listen {
            None => None,
            Some(value) => {
                let span = value.span();
                let text = value.into_inner();
                Some(text.parse::<std::net::SocketAddr>().map_err(|_| {
                    invalid(
                        span,
                        format!(
                            "metrics_listen {text:?} is not an address and port: write e.g. \"127.0.0.1:9720\" or \"[::1]:9720\""
                        ),
                    )
                })?)
            }
        };

        Ok(Config {
            path: path.to_path_buf(),
            interfaces: names,
            mode,
            xdp_mode: raw.xdp_mode.unwrap_or(XdpMode::Auto),
            socket: raw.socket.unwrap_or_else(|| DEFAULT_SOCKET.into()),
            pin_path: raw.pin_path.unwrap_or_else(|| DEFAULT_PIN_PATH.into()),
            state_dir: raw.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            allow,
            always,
            socket_group,
            socket_readable_by_all: raw.socket_readable_by_all,
            return_traffic: raw.return_traffic.unwrap_or(true),
            dhcp_client: raw.dhcp_client.unwrap_or(true),
            encapsulated_ip: raw.encapsulated_ip.unwrap_or(EncapsulatedIp::Drop),
            public_ports,
            dropped_sources,
            metrics_listen,
            feeds,
            dns,
            fleet,
            warnings,
        })
    }

    /// Adds the names added with `allowlistctl add --host` (from the state file or the
    /// running daemon) as feeds, with this file's resolver settings. A name the file
    /// lists itself is the file's; one that no longer fits is left out with a warning.
    pub fn add_cli_hosts(&mut self, hosts: &[crate::feeds::dns::CliHost]) {
        for host in hosts {
            match FeedConfig::cli_host(host, self.dns.clone()) {
                Ok(feed) if self.feeds.iter().all(|other| other.name != feed.name) => {
                    self.feeds.push(feed);
                }
                Ok(_) => {}
                Err(error) => self.warnings.push(format!(
                    "host {} added with allowlistctl is left out: {error}",
                    host.host
                )),
            }
        }
    }

    /// The names added with `allowlistctl add --host`.
    pub fn cli_hosts(&self) -> Vec<crate::feeds::dns::CliHost> {
        self.feeds
            .iter()
            .filter_map(FeedConfig::as_cli_host)
            .collect()
    }
}

/// `dns_servers`, `dns_min_ttl` and `dns_max_ttl`, within their bounds.
fn dns_settings(
    servers: Vec<Spanned<String>>,
    min_ttl: Option<Spanned<String>>,
    max_ttl: Option<Spanned<String>>,
) -> Result<DnsSettings, (Range<usize>, String)> {
    use crate::feeds::dns::{
        DEFAULT_MAX_TTL_SECS, DEFAULT_MIN_TTL_SECS, MAX_DNS_SERVERS, MAX_TTL_CEILING_SECS,
        MIN_TTL_FLOOR_SECS,
    };
    if let Some(extra) = servers.get(MAX_DNS_SERVERS) {
        return Err((
            extra.span(),
            format!("{} dns_servers; at most {MAX_DNS_SERVERS}", servers.len()),
        ));
    }
    let mut addresses = Vec::with_capacity(servers.len());
    for server in servers {
        let given = server.get_ref().trim();
        let address = given
            .parse::<std::net::SocketAddr>()
            .or_else(|_| {
                given
                    .parse::<std::net::IpAddr>()
                    .map(|ip| std::net::SocketAddr::new(ip, 53))
            })
            .map_err(|_| {
                (
                    server.span(),
                    format!("dns_servers: {given:?} is not an address (and port): write e.g. \"10.0.0.1\", \"10.0.0.1:53\" or \"[2001:db8::1]:53\""),
                )
            })?;
        addresses.push(address);
    }
    let ttl = |value: Option<Spanned<String>>, key: &str, default: u64| {
        match value {
        None => Ok(default),
        Some(value) => parse_duration_within(value.get_ref(), MIN_TTL_FLOOR_SECS, MAX_TTL_CEILING_SECS)
            .map_err(|()| {
                (
                    value.span(),
                    format!(
                        "{key} = {:?}: give a duration such as \"30s\", \"5m\" or \"1h\", from {MIN_TTL_FLOOR_SECS}s to {}h",
                        value.get_ref(),
                        MAX_TTL_CEILING_SECS / 3600
                    ),
                )
            }),
    }
    };
    let min_span = min_ttl.as_ref().map(Spanned::span);
    let min_ttl_secs = ttl(min_ttl, "dns_min_ttl", DEFAULT_MIN_TTL_SECS)?;
    let max_span = max_ttl.as_ref().map(Spanned::span);
    let max_ttl_secs = ttl(max_ttl, "dns_max_ttl", DEFAULT_MAX_TTL_SECS)?;
    if min_ttl_secs > max_ttl_secs {
        return Err((
            max_span.or(min_span).unwrap_or(0..0),
            format!("dns_min_ttl ({min_ttl_secs}s) is above dns_max_ttl ({max_ttl_secs}s); the lower bound must not exceed the upper one"),
        ));
    }
    Ok(DnsSettings {
        servers: addresses,
        min_ttl_secs,
        max_ttl_secs,
    })
}

/// `30s`, `15m`, `2h`, `1d` (or bare seconds), within `min..=max` seconds.
fn parse_duration_within(given: &str, min: u64, max: u64) -> Result<u64, ()> {
    let given = given.trim();
    let split = given
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(given.len());
    let (number, unit) = given.split_at(split);
    let number: u64 = number.parse().map_err(|_| ())?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(()),
    };
    let secs = number.checked_mul(scale).ok_or(())?;
    if (min..=max).contains(&secs) {
        Ok(secs)
    } else {
        Err(())
    }
}

/// Where a config keeps its runtime files, read without validating the rest, so that
/// `allowlistd uninstall` works even when the config no longer is (e.g. an interface is gone).
#[derive(Clone, Debug, Deserialize)]
pub struct Locations {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    #[serde(default = "default_pin_path")]
    pub pin_path: PathBuf,
}

fn default_socket() -> PathBuf {
    DEFAULT_SOCKET.into()
}

fn default_pin_path() -> PathBuf {
    DEFAULT_PIN_PATH.into()
}

impl Default for Locations {
    fn default() -> Self {
        Locations {
            socket: default_socket(),
            pin_path: default_pin_path(),
        }
    }
}

impl Locations {
    pub fn load(path: &Path) -> Result<Locations, ConfigError> {
        let shown = path.display().to_string();
        let text = fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: shown.clone(),
            cause,
        })?;
        toml::from_str(&text).map_err(|error| syntax_error(&shown, error))
    }
}

/// Parses "203.0.113.7", "203.0.113.0/24", "2001:db8::/32" into the network the filter
/// judges by ([`normalize`]).
pub fn parse_network(given: &str) -> Result<IpNet, String> {
    parse_network_noting(given).map(|(network, _)| network)
}

/// As [`parse_network`], with a note for the operator when what was written is not what
/// is listed: host bits cleared, an IPv4-mapped address taken as IPv4, or a network that
/// allows every source.
pub fn parse_network_noting(given: &str) -> Result<(IpNet, Option<String>), String> {
    let trimmed = given.trim();
    let parsed = if trimmed.contains('/') {
        trimmed.parse::<IpNet>().map_err(|_| ())
    } else {
        trimmed.parse::<IpAddr>().map(IpNet::from).map_err(|_| ())
    };
    let written = parsed.map_err(|()| {
        format!(
            "invalid cidr {given:?}: expected an IPv4/IPv6 address (203.0.113.7, 2001:db8::7) or network (203.0.113.0/24, 2001:db8::/48)"
        )
    })?;
    let network = normalize(written);
    let mut notes = Vec::new();
    if is_ipv4_mapped(written) {
        notes.push(format!(
            "{trimmed} is an IPv4-mapped IPv6 address; listed as {network}, the IPv4 source the filter sees"
        ));
    } else if network != written {
        notes.push(format!("{trimmed} has host bits set; listed as {network}"));
    }
    if allows_everyone(network) {
        notes.push(format!("{network} allows every {} source", family(network)));
    }
    Ok((network, (!notes.is_empty()).then(|| notes.join("; "))))
}

/// The network the filter judges by: host bits cleared, and an IPv4-mapped IPv6 network
/// (`::ffff:a.b.c.d/96+n`) turned into the IPv4 one it stands for, since clients reach
/// the host as IPv4 and the IPv6 list would never match them.
pub fn normalize(network: IpNet) -> IpNet {
    match network {
        IpNet::V6(v6) if is_ipv4_mapped(network) => v6
            .network()
            .to_ipv4_mapped()
            .and_then(|v4| ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).ok())
            .map_or(network.trunc(), |v4| IpNet::V4(v4.trunc())),
        _ => network.trunc(),
    }
}

fn is_ipv4_mapped(network: IpNet) -> bool {
    match network {
        IpNet::V6(v6) => v6.prefix_len() >= 96 && v6.network().to_ipv4_mapped().is_some(),
        IpNet::V4(_) => false,
    }
}

/// 0.0.0.0/0 or ::/0: listing it turns the allowlist off for that family.
pub fn allows_everyone(network: IpNet) -> bool {
    network.prefix_len() == 0
}

fn family(network: IpNet) -> &'static str {
    match network {
        IpNet::V4(_) => "IPv4",
        IpNet::V6(_) => "IPv6",
    }
}

fn parse_ports(raw: Vec<Spanned<String>>) -> Result<Vec<PortSpec>, (Range<usize>, String)> {
    raw.into_iter()
        .map(|given| {
            let span = given.span();
            given
                .into_inner()
                .parse::<PortSpec>()
                .map_err(|message| (span, message))
        })
        .collect()
}

fn syntax_error(path: &str, error: toml::de::Error) -> ConfigError {
    // toml's message already says "TOML parse error at line N, column M" and quotes
    // the offending line; keep it whole.
    ConfigError::Syntax {
        path: path.to_string(),
        message: error.to_string().trim_end().to_string(),
    }
}

/// Line numbers of byte offsets in a text, found by binary search over where each line
/// starts: computed once, so locating every entry of a large file stays n log n.
struct Lines(Vec<usize>);

impl Lines {
    fn of(text: &str) -> Lines {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(at, _)| at + 1))
            .collect();
        Lines(starts)
    }

    /// The 1-based line holding byte `offset`.
    fn line_of(&self, offset: usize) -> usize {
        self.0.partition_point(|start| *start <= offset)
    }
}

fn interface_exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/allowlist.toml"), text)
    }

    #[test]
    fn a_full_config_loads_with_defaults_for_missing_keys() {
        let config = parse(
            r#"
interfaces = ["lo"]
mode = "monitor"

[[allow]]
cidr = "203.0.113.9/24"
description = "office VPN"

[[allow]]
cidr = "2001:db8::1"
"#,
        )
        .unwrap();
        assert_eq!(config.interfaces, ["lo"]);
        assert_eq!(config.mode, Mode::Monitor);
        assert_eq!(config.xdp_mode, XdpMode::Auto);
        assert_eq!(config.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(config.allow[0].network.to_string(), "203.0.113.0/24");
        assert_eq!(config.allow[0].line, 6);
        assert_eq!(config.allow[1].network.to_string(), "2001:db8::1/128");
        assert_eq!(config.warnings.len(), 1, "host bits are reported");
    }

    #[test]
    fn ports_public_ports_and_return_traffic_are_read() {
        let config = parse(
            "interfaces = [\"lo\"]\nreturn_traffic = false\npublic_ports = [\"443/tcp\"]\n[[allow]]\ncidr = \"10.0.0.1\"\nports = [\"22/tcp\", \"5985-5986/tcp\"]\n",
        )
        .unwrap();
        assert!(!config.return_traffic && config.dhcp_client);
        assert_eq!(config.public_ports[0].to_string(), "443/tcp");
        assert_eq!(config.allow[0].ports.len(), 2);
        let error =
            parse("interfaces = [\"lo\"]\n[[allow]]\ncidr = \"10.0.0.1\"\nports = [\"22\"]\n")
                .unwrap_err()
                .to_string();
        assert!(
            error.starts_with("/etc/allowlist.toml:4: ") && error.contains("\"22\""),
            "{error}"
        );
    }

    #[test]
    fn encapsulated_ip_is_dropped_unless_the_config_says_pass() {
        let config = parse("interfaces = [\"lo\"]\n").unwrap();
        assert_eq!(config.encapsulated_ip, EncapsulatedIp::Drop);
        for (value, expected) in [
            ("drop", EncapsulatedIp::Drop),
            ("pass", EncapsulatedIp::Pass),
        ] {
            let config = parse(&format!(
                "interfaces = [\"lo\"]\nencapsulated_ip = \"{value}\"\n"
            ))
            .unwrap();
            assert_eq!(config.encapsulated_ip, expected, "{value}");
        }
        let error =
            parse("interfaces = [\"lo\"]\nmode = \"monitor\"\nencapsulated_ip = \"allow\"\n")
                .unwrap_err()
                .to_string();
        assert!(error.contains("/etc/allowlist.toml"), "{error}");
        assert!(error.contains("line 3"), "{error}");
        assert!(error.contains("allow"), "{error}");
    }

    #[test]
    fn dropped_sources_and_metrics_listen_are_read_within_their_bounds() {
        let config = parse("interfaces = [\"lo\"]\n").unwrap();
        assert_eq!(
            config.dropped_sources,
            allowlist_common::DEFAULT_DROPPED_SOURCES
        );
        assert_eq!(config.metrics_listen, None);
        let config = parse(
            "interfaces = [\"lo\"]\ndropped_sources = 0\nmetrics_listen = \"127.0.0.1:9720\"\n",
        )
        .unwrap();
        assert_eq!(config.dropped_sources, 0);
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9720".parse().unwrap())
        );
        for value in ["-1", "65537", "99999999999"] {
            let error = parse(&format!(
                "interfaces = [\"lo\"]\n\ndropped_sources = {value}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                error.contains(":3: dropped_sources") && error.contains("65536"),
                "{value}: {error}"
            );
        }
        let error = parse("interfaces = [\"lo\"]\nmetrics_listen = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(":2: metrics_listen \"localhost\"") && error.contains("127.0.0.1:9720"),
            "{error}"
        );
    }

    #[test]
    fn the_annotated_example_config_is_valid() {
        let config = Config::parse(
            Path::new("examples/allowlist.toml"),
            include_str!("../../examples/allowlist.toml"),
        )
        .unwrap();
        assert_eq!(config.mode, Mode::Monitor);
        assert_eq!(config.encapsulated_ip, EncapsulatedIp::Drop);
    }

    #[test]
    fn no_interfaces_is_valid_with_a_warning_that_nothing_is_judged() {
        let config = parse("mode = \"monitor\"\ninterfaces = []\n").unwrap();
        assert!(config.interfaces.is_empty());
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        assert!(
            config.warnings[0].starts_with("/etc/allowlist.toml:2: ")
                && config.warnings[0].contains("attached nowhere"),
            "{:?}",
            config.warnings
        );
    }

    #[test]
    fn the_packaged_config_monitors_on_no_interface() {
        let config = Config::parse(
            Path::new("debian/allowlist.toml"),
            include_str!("../debian/allowlist.toml"),
        )
        .unwrap();
        assert_eq!(config.mode, Mode::Monitor);
        assert!(config.interfaces.is_empty());
        assert!(config.allow.is_empty() && config.always.is_empty());
        assert_eq!(config.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(config.pin_path, Path::new(DEFAULT_PIN_PATH));
        assert_eq!(config.state_dir, Path::new(DEFAULT_STATE_DIR));
    }

    #[test]
    fn a_bad_cidr_names_file_line_and_value() {
        let error = parse("interfaces = [\"lo\"]\n[[allow]]\ncidr = \"10.0.0.300/24\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("/etc/allowlist.toml:3: "), "{error}");
        assert!(error.contains("\"10.0.0.300/24\""), "{error}");
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line() {
        let error = parse("interfaces = [\"lo\"]\nmode = \"monitor\"\nfrobnicate = 1\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("/etc/allowlist.toml"), "{error}");
        assert!(error.contains("line 3"), "{error}");
        assert!(error.contains("frobnicate"), "{error}");
    }

    #[test]
    fn an_unknown_interface_is_refused_with_its_line() {
        let error = parse("mode = \"monitor\"\ninterfaces = [\"lo\", \"nosuch0\"]\n")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("/etc/allowlist.toml:2: "), "{error}");
        assert!(error.contains("\"nosuch0\""), "{error}");
    }

    #[test]
    fn a_network_listed_twice_is_refused_naming_both_lines() {
        let error = parse(
            "interfaces = [\"lo\"]\n[[allow]]\ncidr = \"10.0.0.1/32\"\n[[always]]\ncidr = \"::ffff:10.0.0.1\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("/etc/allowlist.toml:5: "), "{error}");
        assert!(error.contains("line 3 ([[allow]])"), "{error}");
    }

    #[test]
    fn what_differs_from_what_was_written_is_a_warning_with_its_line() {
        let config = parse(
            "interfaces = [\"lo\"]\n[[allow]]\ncidr = \"10.98.6.7/8\"\n[[allow]]\ncidr = \"::ffff:192.0.2.1\"\n[[allow]]\ncidr = \"::/0\"\n",
        )
        .unwrap();
        let networks: Vec<String> = config.allow.iter().map(|e| e.network.to_string()).collect();
        assert_eq!(networks, ["10.0.0.0/8", "192.0.2.1/32", "::/0"]);
        assert_eq!(config.warnings.len(), 3, "{:?}", config.warnings);
        assert!(config.warnings[0].starts_with("/etc/allowlist.toml:3: "));
        assert!(config.warnings[1].contains("IPv4-mapped"));
        assert!(config.warnings[2].contains("every IPv6 source"));
    }

    #[test]
    fn more_port_ranges_than_the_kernel_holds_are_refused_with_their_line() {
        let ports: Vec<String> = (1..=17).map(|i| format!("\"{}/tcp\"", i * 10)).collect();
        let text = format!(
            "interfaces = [\"lo\"]\n[[allow]]\ncidr = \"10.0.0.1\"\nports = [{}]\n",
            ports.join(", ")
        );
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.starts_with("/etc/allowlist.toml:4: "), "{error}");
        assert!(error.contains("at most 16"), "{error}");
    }

    #[test]
    fn line_numbers_stay_right_deep_into_a_large_file() {
        let mut text = String::from("interfaces = [\"lo\"]\n");
        for i in 0..20_000u32 {
            let [_, _, a, b] = i.to_be_bytes();
            text.push_str(&format!("[[allow]]\ncidr = \"10.1.{a}.{b}\"\n"));
        }
        text.push_str("[[allow]]\ncidr = \"10.1.0.300\"\n");
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.starts_with("/etc/allowlist.toml:40003: "), "{error}");
        let lines = Lines::of("a\nbc\n\nd");
        let found: Vec<usize> = [0, 1, 2, 4, 5, 6]
            .iter()
            .map(|at| lines.line_of(*at))
            .collect();
        assert_eq!(found, [1, 1, 2, 2, 3, 4]);
    }

    #[test]
    fn unparseable_toml_is_refused_with_its_line() {
        let error = parse("interfaces = [\"lo\"\nmode = \n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("/etc/allowlist.toml"), "{error}");
        assert!(error.contains("line "), "{error}");
    }

    #[test]
    fn a_host_is_a_dns_source_with_the_configured_resolvers_and_ttl_bounds() {
        let config = parse(
            "interfaces = [\"lo\"]\ndns_servers = [\"10.0.0.1\", \"[2001:db8::1]:5353\"]\ndns_min_ttl = \"10s\"\ndns_max_ttl = \"5m\"\n[[allow]]\nhost = \"CI.Example.com.\"\nports = [\"22/tcp\"]\n",
        )
        .unwrap();
        assert!(config.allow.is_empty());
        let [feed] = config.feeds.as_slice() else {
            panic!("{:?}", config.feeds)
        };
        assert_eq!(feed.name.as_str(), "ci.example.com");
        assert_eq!(feed.line, 6);
        assert_eq!(feed.description, "dns ci.example.com");
        assert_eq!(
            feed.max_shrink_percent, 100,
            "a changed record is never held"
        );
        assert_eq!(feed.ports.len(), 1);
        let crate::feeds::FeedSource::Dns(source) = &feed.source else {
            panic!("{:?}", feed.source)
        };
        assert_eq!(source.host, "ci.example.com");
        assert_eq!(
            source.settings.servers,
            vec![
                "10.0.0.1:53".parse().unwrap(),
                "[2001:db8::1]:5353".parse().unwrap()
            ]
        );
        assert_eq!(
            (source.settings.min_ttl_secs, source.settings.max_ttl_secs),
            (10, 300)
        );
        // Defaults: /etc/resolv.conf, 30 s to 1 h.
        let config =
            parse("interfaces = [\"lo\"]\n[[allow]]\nhost = \"ci.example.com\"\n").unwrap();
        let crate::feeds::FeedSource::Dns(source) = &config.feeds[0].source else {
            panic!()
        };
        assert_eq!(source.settings, crate::feeds::dns::DnsSettings::default());
        assert!(source.settings.servers.is_empty());
    }

    #[test]
    fn ttls_are_clamped_to_the_configured_bounds() {
        let settings = DnsSettings {
            servers: Vec::new(),
            min_ttl_secs: 30,
            max_ttl_secs: 3600,
        };
        assert_eq!(settings.clamp_ttl(0), 30);
        assert_eq!(settings.clamp_ttl(29), 30);
        assert_eq!(settings.clamp_ttl(300), 300);
        assert_eq!(settings.clamp_ttl(3601), 3600);
        assert_eq!(settings.clamp_ttl(u64::from(u32::MAX)), 3600);
        let equal = DnsSettings {
            min_ttl_secs: 60,
            max_ttl_secs: 60,
            ..settings
        };
        assert_eq!(equal.clamp_ttl(1), 60);
        assert_eq!(equal.clamp_ttl(86_400), 60);
    }

    #[test]
    fn bad_hosts_and_dns_settings_name_file_line_and_value() {
        let long = format!("{}.example.com", "a".repeat(60));
        for (text, line, says) in [
            ("[[allow]]\nhost = \"ci_bad..example.com\"\n", 3, "ci_bad..example.com"),
            ("[[allow]]\nhost = \"localhost\"\n", 3, "single label"),
            ("[[allow]]\nhost = \"10.0.0.1\"\n", 3, "is an address"),
            ("[[allow]]\nhost = \"-x.example.com\"\n", 3, "-x.example.com"),
            (&format!("[[allow]]\nhost = \"{long}\"\n"), 3, "at most 64 bytes"),
            ("[[allow]]\nhost = \"a.example.com\"\ncidr = \"10.0.0.1\"\n", 4, "not both"),
            ("[[allow]]\ndescription = \"x\"\n", 2, "or host"),
            ("[[always]]\nhost = \"a.example.com\"\n", 3, "takes cidr, not host"),
            (
                "[[allow]]\nhost = \"a.example.com\"\n[[allow]]\nhost = \"A.example.com\"\n",
                5,
                "listed twice: at line 3",
            ),
            (
                "[[feed]]\nname = \"a.example.com\"\npreset = \"elastic.io-eu\"\n[[allow]]\nhost = \"a.example.com\"\n",
                6,
                "hosts and feeds must differ",
            ),
            ("dns_servers = [\"resolver\"]\n", 2, "\"resolver\" is not an address"),
            ("dns_min_ttl = \"0s\"\n", 2, "dns_min_ttl = \"0s\""),
            ("dns_max_ttl = \"2d\"\n", 2, "dns_max_ttl = \"2d\""),
            ("dns_min_ttl = \"10m\"\ndns_max_ttl = \"1m\"\n", 3, "above dns_max_ttl"),
            (
                "dns_servers = [\"1.1.1.1\",\"1.1.1.2\",\"1.1.1.3\",\"1.1.1.4\",\"1.1.1.5\",\"1.1.1.6\",\"1.1.1.7\",\"1.1.1.8\",\"1.1.1.9\"]\n",
                2,
                "at most 8",
            ),
        ] {
            let error = parse(&format!("interfaces = [\"lo\"]\n{text}"))
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with(&format!("/etc/allowlist.toml:{line}: ")),
                "{text}: {error}"
            );
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}
