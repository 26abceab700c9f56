//! DNS names (`[[allow]] host = "ci.example.com"`): the name's A and AAAA records, asked
//! of the resolvers the config names (`dns_servers`) or those of `/etc/resolv.conf`,
//! with hickory-resolver. A name is a feed-like source: its addresses are a read-only set
//! named after it, kept while resolution fails, saved with the feeds' last good lists,
//! and asked again when its records' TTL (clamped to `dns_min_ttl`..=`dns_max_ttl`)
//! runs out.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use hickory_resolver::{
    config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts},
    net::runtime::TokioRuntimeProvider,
    proto::rr::RecordType,
    Resolver,
};
use ipnet::IpNet;

/// Longest name taken, in bytes: a name is also the name of its set.
pub const MAX_HOST_BYTES: usize = crate::allowlist::MAX_SET_NAME_BYTES;
/// Most addresses (A and AAAA together) one name may resolve to; an answer with more is
/// refused whole and the last good answer kept.
pub const MAX_ADDRESSES_PER_HOST: usize = 64;
/// Most `[[allow]] host` entries in one config.
pub const MAX_HOSTS: usize = 256;
/// Most resolvers in `dns_servers`.
pub const MAX_DNS_SERVERS: usize = 8;
/// `dns_min_ttl` when not given: a record is not asked again sooner than this.
pub const DEFAULT_MIN_TTL_SECS: u64 = 30;
/// `dns_max_ttl` when not given: a record is asked again at least this often.
pub const DEFAULT_MAX_TTL_SECS: u64 = 3600;
/// Lowest `dns_min_ttl` accepted.
pub const MIN_TTL_FLOOR_SECS: u64 = 1;
/// Highest `dns_max_ttl` accepted.
pub const MAX_TTL_CEILING_SECS: u64 = 86_400;
/// One query (A or AAAA) to one server may take this long; each is tried twice.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// A whole resolution (both families, every server and retry) may take this long.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(15);

/// How names are resolved: the config's `dns_servers`, `dns_min_ttl`, `dns_max_ttl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    /// Resolvers to ask; empty: those of `/etc/resolv.conf`.
    pub servers: Vec<SocketAddr>,
    pub min_ttl_secs: u64,
    pub max_ttl_secs: u64,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            servers: Vec::new(),
            min_ttl_secs: DEFAULT_MIN_TTL_SECS,
            max_ttl_secs: DEFAULT_MAX_TTL_SECS,
        }
    }
}

impl DnsSettings {
    /// The TTL `ttl` clamped to the configured bounds: how long an answer is used
    /// before the name is asked again.
    pub fn clamp_ttl(&self, ttl: u64) -> u64 {
        ttl.clamp(self.min_ttl_secs, self.max_ttl_secs.max(self.min_ttl_secs))
    }
}

/// A name to resolve, as handed to a fetch job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSource {
    /// Lower case, without the trailing dot.
    pub host: String,
    pub settings: DnsSettings,
    /// Added with `allowlistctl add --host` (kept in the state file) rather than listed
    /// in the config file.
    pub from_cli: bool,
}

/// A name added with `allowlistctl add --host`, as the state file keeps it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CliHost {
    pub host: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<crate::ports::PortSpec>,
    /// The line of the feed it becomes: 0, it is not in the file.
    #[serde(skip)]
    pub line: usize,
}

impl DnsSource {
    /// What the last good answer is saved under (in place of a feed's URL).
    pub fn key(&self) -> String {
        format!("dns:{}", self.host)
    }
}

/// A good answer: the addresses (as host networks, sorted, unique) and the smallest
/// TTL of the records, unclamped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub networks: Vec<IpNet>,
    pub ttl_secs: u64,
}

/// Why a name gave no usable answer. Its last good answer is kept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("resolving {host}: {cause}")]
    Failed { host: String, cause: String },
    #[error("{host} has no A or AAAA records")]
    NoAddresses { host: String },
    #[error("{host} resolves to more than {MAX_ADDRESSES_PER_HOST} addresses; refused whole")]
    TooMany { host: String },
    #[error("{host} resolves to {address}, which may not be allowed (unspecified, loopback or multicast)")]
    Unusable { host: String, address: IpAddr },
    #[error("resolving {host}: no answer within {}s", RESOLVE_TIMEOUT.as_secs())]
    Timeout { host: String },
}

/// Checks a name as written in the config (or given to `add --host`) and returns it
/// lower-cased without a trailing dot: letters, digits, `-` and `_` in labels of at most
/// 63 bytes, at least two labels, at most [`MAX_HOST_BYTES`] bytes.
pub fn check_host(given: &str) -> Result<String, String> {
    let name = given
        .strip_suffix('.')
        .unwrap_or(given)
        .to_ascii_lowercase();
    let bad = |why: &str| {
        format!(
            "host = {given:?}: {why}; give a DNS name such as \"ci.example.com\" (at most {MAX_HOST_BYTES} bytes)"
        )
    };
    if name.is_empty() || name.len() > MAX_HOST_BYTES {
        return Err(bad("empty or too long"));
    }
    if name.parse::<IpAddr>().is_ok() || crate::config::parse_network(&name).is_ok() {
        return Err(format!(
            "host = {given:?} is an address: list it with cidr = {given:?} instead"
        ));
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err(bad(
            "a single label is resolved through search domains and is ambiguous",
        ));
    }
    for label in &labels {
        let valid = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid {
            return Err(bad(&format!("label {label:?} is not a DNS label")));
        }
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(bad("it must start with a letter or digit"));
    }
    Ok(name)
}

/// Resolves `source` (A and AAAA), blocking the calling thread for at most
/// [`RESOLVE_TIMEOUT`]. Runs on a blocking thread of its own, never under the daemon's
/// lock.
pub fn resolve(source: &DnsSource) -> Result<Resolved, ResolveError> {
    let failed = |cause: String| ResolveError::Failed {
        host: source.host.clone(),
        cause,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| failed(format!("starting the resolver: {error}")))?;
    runtime.block_on(async {
        match tokio::time::timeout(RESOLVE_TIMEOUT, resolve_async(source)).await {
            Ok(result) => result,
            Err(_) => Err(ResolveError::Timeout {
                host: source.host.clone(),
            }),
        }
    })
}

async fn resolve_async(source: &DnsSource) -> Result<Resolved, ResolveError> {
    let host = source.host.clone();
    let failed = |cause: String| ResolveError::Failed {
        host: host.clone(),
        cause,
    };
    let provider = TokioRuntimeProvider::default();
    let mut builder = if source.settings.servers.is_empty() {
        Resolver::builder(provider)
            .map_err(|error| failed(format!("reading /etc/resolv.conf: {error}")))?
    } else {
        let servers = source
            .settings
            .servers
            .iter()
            .map(|server| {
                let connection = |mut connection: ConnectionConfig| {
                    connection.port = server.port();
                    connection
                };
                NameServerConfig::new(
                    server.ip(),
                    true,
                    vec![
                        connection(ConnectionConfig::udp()),
                        connection(ConnectionConfig::tcp()),
                    ],
                )
            })
            .collect();
        Resolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
    };
    let options: &mut ResolverOpts = builder.options_mut();
    options.timeout = QUERY_TIMEOUT;
    options.attempts = 2;
    options.cache_size = 0;
    options.ndots = 0;
    let resolver = builder
        .build()
        .map_err(|error| failed(format!("setting up the resolver: {error}")))?;
    // The trailing dot: the name as written, never tried under a search domain.
    let fqdn = format!("{host}.");
    let mut addresses = BTreeSet::new();
    let mut ttl: Option<u64> = None;
    for record_type in [RecordType::A, RecordType::AAAA] {
        match resolver.lookup(fqdn.as_str(), record_type).await {
            Ok(lookup) => {
                for record in lookup.answers() {
                    let Some(address) = record.data.ip_addr() else {
                        continue; // a CNAME on the way
                    };
                    addresses.insert(address);
                    let record_ttl = u64::from(record.ttl);
                    ttl = Some(ttl.map_or(record_ttl, |ttl| ttl.min(record_ttl)));
                }
            }
            // NXDOMAIN or no records of this family: the other family may have some.
            Err(error) if error.is_no_records_found() || error.is_nx_domain() => {}
            Err(error) => return Err(failed(error.to_string())),
        }
    }
    if addresses.len() > MAX_ADDRESSES_PER_HOST {
        return Err(ResolveError::TooMany { host });
    }
    let mut networks = Vec::with_capacity(addresses.len());
    for address in addresses {
        if address.is_unspecified() || address.is_loopback() || address.is_multicast() {
            return Err(ResolveError::Unusable { host, address });
        }
        networks.push(crate::config::normalize(IpNet::from(address)));
    }
    networks.sort();
    networks.dedup();
    match ttl {
        Some(ttl_secs) if !networks.is_empty() => Ok(Resolved { networks, ttl_secs }),
        _ => Err(ResolveError::NoAddresses { host }),
    }
}
