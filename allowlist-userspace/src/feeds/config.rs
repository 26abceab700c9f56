//! `[[feed]]` in the config file: what a feed fetches (or which preset it lists), how
//! often, and what its entries may reach. Validated with the rest of the config, so a
//! bad feed is refused with its line before anything changes.

use std::{ops::Range, path::PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{presets::Preset, Filters, Format};
use crate::{allowlist::SetName, ports::PortSpec};

/// Refresh interval when `refresh` is not given.
pub const DEFAULT_REFRESH_SECS: u64 = 3600;
/// Shortest refresh interval: a provider is not to be polled harder than this.
pub const MIN_REFRESH_SECS: u64 = 10;
/// Longest refresh interval.
pub const MAX_REFRESH_SECS: u64 = 7 * 24 * 3600;
/// Share of a feed's entries a refresh may remove before it is held for
/// `allowlistctl feeds accept`, when `max_shrink` is not given.
pub const DEFAULT_MAX_SHRINK_PERCENT: u8 = 50;
/// Most feeds in one config.
pub const MAX_FEEDS: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFeed {
    name: Spanned<String>,
    #[serde(default)]
    preset: Option<Spanned<String>>,
    #[serde(default)]
    format: Option<Format>,
    #[serde(default)]
    url: Option<Spanned<String>>,
    #[serde(default)]
    api_key_file: Option<PathBuf>,
    /// Only to refuse it with a useful message: secrets are not kept in the config.
    #[serde(default)]
    api_key: Option<Spanned<toml::Value>>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    refresh: Option<Spanned<String>>,
    #[serde(default)]
    ports: Vec<Spanned<String>>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    allow_empty: bool,
    #[serde(default)]
    max_shrink: Option<Spanned<i64>>,
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    services: Vec<String>,
    #[serde(default)]
    regions: Vec<String>,
    #[serde(default)]
    keys: Vec<String>,
}

/// One validated `[[feed]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedConfig {
    /// Also the name of the set its entries form.
    pub name: SetName,
    pub source: FeedSource,
    pub refresh_secs: u64,
    /// Destination ports its entries may reach; empty means all.
    pub ports: Vec<PortSpec>,
    /// The description its entries carry.
    pub description: String,
    /// Whether an empty list is a list (Harness answers free-tier accounts with one) or
    /// an error that keeps the last good list.
    pub allow_empty: bool,
    /// A refresh removing more than this share of the entries is held.
    pub max_shrink_percent: u8,
    /// Line of `name` in the config file.
    pub line: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedSource {
    /// Documented static addresses: nothing to fetch.
    Preset(&'static Preset),
    Fetch(FetchSource),
    /// `[[allow]] host = "NAME"`: the name's A and AAAA records.
    Dns(super::dns::DnsSource),
    /// A `[fleet]` set: its entries are etcd's, followed by `crate::fleet`.
    Fleet,
}

impl FeedSource {
    /// What a saved last good list belongs to: a fetched feed's URL, a name's
    /// `dns:NAME`; `None` for presets (nothing saved). A source whose key changed starts
    /// afresh.
    pub fn key(&self) -> Option<String> {
        match self {
            FeedSource::Preset(_) => None,
            FeedSource::Fetch(source) => Some(source.url.clone()),
            FeedSource::Dns(source) => Some(source.key()),
            FeedSource::Fleet => Some("fleet".into()),
        }
    }
}

/// Where and how a feed is fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchSource {
    pub format: Format,
    pub url: String,
    /// A file holding the key sent as `X-API-KEY` (the key is never in the config or
    /// the log).
    pub api_key_file: Option<PathBuf>,
    /// PEM roots to trust instead of Mozilla's.
    pub ca_file: Option<PathBuf>,
    pub filters: Filters,
}

type Invalid = (Range<usize>, String);

impl FeedConfig {
    /// Validates one `[[feed]]`; `line_of` turns a span into a line, `parse_ports` reads
    /// `ports` as `[[allow]]` does. Notes that do not refuse it go to `warnings`.
    pub(crate) fn validate(
        raw: RawFeed,
        line_of: impl Fn(usize) -> usize,
        parse_ports: impl Fn(Vec<Spanned<String>>) -> Result<Vec<PortSpec>, Invalid>,
        warnings: &mut Vec<String>,
    ) -> Result<FeedConfig, Invalid> {
        let name_span = raw.name.span();
        let given = raw.name.into_inner();
        let name = SetName::new(&given).map_err(|message| (name_span.clone(), message))?;
        if name.is_config_file() || name == SetName::default() {
            return Err((
                name_span,
                format!("a feed cannot be called {name:?}: that set is the config file's or the CLI's own; pick another name"),
            ));
        }
        if let Some(key) = raw.api_key {
            return Err((
                key.span(),
                "secrets are not kept in the config: put the API key in a file only root can read (chmod 600) and name it with api_key_file".into(),
            ));
        }
        let span_of = |span: Option<Range<usize>>| span.unwrap_or(name_span.clone());
        let ports_span = raw.ports.first().map(Spanned::span);
        let ports = parse_ports(raw.ports)?;
        crate::ports::check_kernel_fit(&ports).map_err(|message| (span_of(ports_span), message))?;
        let refresh_secs = match raw.refresh {
            None => DEFAULT_REFRESH_SECS,
            Some(refresh) => {
                let span = refresh.span();
                parse_refresh(refresh.get_ref()).map_err(|message| (span, message))?
            }
        };
        let max_shrink_percent = match raw.max_shrink {
            None => DEFAULT_MAX_SHRINK_PERCENT,
            Some(shrink) => u8::try_from(*shrink.get_ref())
                .ok()
                .filter(|percent| *percent <= 100)
                .ok_or_else(|| {
                    (
                        shrink.span(),
                        format!(
                            "max_shrink = {}: give a percentage from 0 to 100",
                            shrink.get_ref()
                        ),
                    )
                })?,
        };
        let filters = Filters {
            path: raw.path.as_ref().map(|path| path.get_ref().clone()),
            services: raw.services,
            regions: raw.regions,
            keys: raw.keys,
        };
        let source = match (raw.preset, raw.format, raw.url) {
            (Some(preset), None, None) => {
                let span = preset.span();
                let found = super::presets::preset(preset.get_ref()).ok_or_else(|| {
                    let known: Vec<&str> = super::presets::PRESETS.iter().map(|p| p.name).collect();
                    (
                        span,
                        format!(
                            "unknown preset {:?}; the presets are {}",
                            preset.get_ref(),
                            known.join(", ")
                        ),
                    )
                })?;
                FeedSource::Preset(found)
            }
            (None, Some(format), Some(url)) => {
                let span = url.span();
                let url = url.into_inner();
                let lower = url.to_ascii_lowercase();
                if !lower.starts_with("https://") && !lower.starts_with("http://") {
                    return Err((span, format!("url {url:?}: give an https:// URL")));
                }
                if lower.starts_with("http://") {
                    warnings.push(format!(
                        "line {}: feed {name}: {url} is plain http: anyone on the path can change what this host allows; use https://",
                        line_of(span.start)
                    ));
                }
                check_filters(format, &filters)
                    .map_err(|message| (span_of(raw.path.as_ref().map(Spanned::span)), message))?;
                FeedSource::Fetch(FetchSource {
                    format,
                    url,
                    api_key_file: raw.api_key_file,
                    ca_file: raw.ca_file,
                    filters,
                })
            }
            _ => {
                return Err((
                    name_span,
                    format!("feed {name}: give either preset = \"NAME\", or format and url"),
                ))
            }
        };
        let description = raw.description.unwrap_or_else(|| match &source {
            FeedSource::Preset(preset) => preset.description.to_string(),
            FeedSource::Fetch(_) | FeedSource::Dns(_) | FeedSource::Fleet => format!("feed {name}"),
        });
        crate::allowlist::check_description(&description)
            .map_err(|message| (name_span.clone(), message))?;
        Ok(FeedConfig {
            name,
            source,
            refresh_secs,
            ports,
            description,
            allow_empty: raw.allow_empty,
            max_shrink_percent,
            line: line_of(name_span.start),
        })
    }
}

impl FeedConfig {
    /// An `[[allow]] host` entry as a feed: a read-only set named after the (already
    /// checked) name, asked again when its TTL runs out (at the latest after
    /// `dns_max_ttl`; on failure after `dns_min_ttl`), never held for shrinking (a
    /// changed record replaces the address whole).
    pub fn host(
        host: String,
        settings: super::dns::DnsSettings,
        ports: Vec<PortSpec>,
        description: Option<String>,
        line: usize,
    ) -> Result<FeedConfig, String> {
        let name = SetName::new(&host)?;
        if name.is_config_file() || name == SetName::default() {
            return Err(format!(
                "host = {host:?} is the name of a built-in set; it cannot be resolved as a name"
            ));
        }
        let description = description
            .filter(|description| !description.is_empty())
            .unwrap_or_else(|| format!("dns {host}"));
        crate::allowlist::check_description(&description)?;
        Ok(FeedConfig {
            name,
            refresh_secs: settings.min_ttl_secs,
            source: FeedSource::Dns(super::dns::DnsSource {
                host,
                settings,
                from_cli: false,
            }),
            ports,
            description,
            allow_empty: false,
            max_shrink_percent: 100,
            line,
        })
    }

    /// A name added with `allowlistctl add --host`, as the feed it becomes.
    pub fn cli_host(
        host: &super::dns::CliHost,
        settings: super::dns::DnsSettings,
    ) -> Result<FeedConfig, String> {
        let name = super::dns::check_host(&host.host)?;
        let mut feed = FeedConfig::host(
            name,
            settings,
            host.ports.clone(),
            Some(host.description.clone()),
            0,
        )?;
        if let FeedSource::Dns(source) = &mut feed.source {
            source.from_cli = true;
        }
        Ok(feed)
    }

    /// The `add --host` name this feed is, if it is one.
    pub fn as_cli_host(&self) -> Option<super::dns::CliHost> {
        match &self.source {
            FeedSource::Dns(source) if source.from_cli => Some(super::dns::CliHost {
                host: source.host.clone(),
                description: self.description.clone(),
                ports: self.ports.clone(),
                line: 0,
            }),
            _ => None,
        }
    }

    /// A `[fleet]` set (line: that of `[fleet]`'s endpoints): its entries are etcd's. A
    /// revision that empties it or leaves less than half of it is held for `feeds
    /// accept`: a bad read of etcd looks just like that (`crate::daemon::fleet`).
    pub fn fleet(name: SetName, line: usize) -> FeedConfig {
        FeedConfig {
            description: format!("fleet {name}"),
            name,
            source: FeedSource::Fleet,
            refresh_secs: 0,
            ports: Vec::new(),
            allow_empty: false,
            max_shrink_percent: DEFAULT_MAX_SHRINK_PERCENT,
            line,
        }
    }

    /// `dns NAME` for a name, `fleet NAME` for a fleet set, `feed NAME` for a feed: how
    /// messages call it.
    pub fn label(&self) -> String {
        match self.source {
            FeedSource::Dns(_) => format!("dns {}", self.name),
            FeedSource::Fleet => format!("fleet {}", self.name),
            _ => format!("feed {}", self.name),
        }
    }
}

/// The filters a format needs (and only those it reads).
fn check_filters(format: Format, filters: &Filters) -> Result<(), String> {
    match (format, &filters.path) {
        (Format::Json, None) => {
            return Err("format = \"json\" needs path, a JSONPath expression selecting the address strings, e.g. path = \"$.prefixes[*].ip_prefix\"".into())
        }
        (Format::Json, Some(path)) => super::json::check_path(path)?,
        (_, Some(_)) => return Err(format!("path is read only by format = \"json\", not {format}")),
        _ => {}
    }
    if format == Format::Github && filters.keys.is_empty() {
        return Err("format = \"github\" needs keys, the lists to take, e.g. keys = [\"hooks\"] (see https://api.github.com/meta)".into());
    }
    if format != Format::Github && !filters.keys.is_empty() {
        return Err(format!(
            "keys is read only by format = \"github\", not {format}"
        ));
    }
    if !matches!(format, Format::Aws | Format::Atlassian) && !filters.services.is_empty() {
        return Err(format!(
            "services is read only by formats aws and atlassian, not {format}"
        ));
    }
    if !matches!(format, Format::Aws | Format::Gcp) && !filters.regions.is_empty() {
        return Err(format!(
            "regions is read only by formats aws and gcp, not {format}"
        ));
    }
    Ok(())
}

/// `30s`, `15m`, `2h`, `1d`, within [`MIN_REFRESH_SECS`]..=[`MAX_REFRESH_SECS`].
pub fn parse_refresh(given: &str) -> Result<u64, String> {
    let bad = || {
        format!("refresh = {given:?}: give a duration such as \"15m\", \"1h\" or \"1d\", from {MIN_REFRESH_SECS}s to 7d")
    };
    let given = given.trim();
    let split = given.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = given.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    let secs = number.checked_mul(scale).ok_or_else(bad)?;
    if !(MIN_REFRESH_SECS..=MAX_REFRESH_SECS).contains(&secs) {
        return Err(bad());
    }
    Ok(secs)
}
