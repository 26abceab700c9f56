//! Feeds: the addresses a provider publishes (an API, a JSON or text list), fetched over
//! HTTPS and kept as a read-only set named after the feed, or a documented static list
//! (a preset). This module only turns bodies into networks and fetches them; the daemon
//! decides when, and guards what a new list may change (`daemon/feeds.rs`).
//!
//! One file per body format; `config.rs` reads `[[feed]]`, `fetch.rs` is the HTTP
//! client, `presets.rs` the static lists.

mod atlassian;
mod aws;
mod cloudflare;
pub mod config;
mod csv;
pub mod dns;
mod fastly;
pub mod fetch;
mod gcp;
mod github;
mod harness;
mod json;
pub mod presets;
#[cfg(test)]
mod tests;
mod text;

use std::{collections::BTreeSet, fmt};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use config::{FeedConfig, FeedSource};

/// Most networks one feed may hold (AWS publishes about 10,000 prefixes; this leaves
/// room). A body with more is refused whole.
pub const MAX_FEED_ENTRIES: usize = 100_000;

/// The shape of a feed's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Harness Cloud's `GET /gateway/ci/ips/allowlist`: `{"status":"SUCCESS","data":{"ipAddresses":[…]}}`.
    Harness,
    /// One address or network per line; `#` starts a comment.
    Text,
    /// `ip_address,description[,ports,expires_at]`, as `allowlistctl export` writes.
    Csv,
    /// Any JSON document; `path` (a JSONPath expression) selects the address strings.
    Json,
    /// `https://ip-ranges.amazonaws.com/ip-ranges.json`, filtered by `services`/`regions`.
    Aws,
    /// `https://www.gstatic.com/ipranges/cloud.json`, filtered by `regions` (its scopes).
    Gcp,
    /// `https://api.github.com/meta`, the lists named in `keys`.
    Github,
    /// `https://api.cloudflare.com/client/v4/ips`.
    Cloudflare,
    /// `https://ip-ranges.atlassian.com/`: egress ranges, filtered by `services` (products).
    Atlassian,
    /// `https://api.fastly.com/public-ip-list`.
    Fastly,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = serde_json::to_value(self)
            .ok()
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&name)
    }
}

/// Format-specific choices of what to take from a body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// `json`: the JSONPath expression selecting the address strings.
    pub path: Option<String>,
    /// `aws`: services (`EC2`, `CLOUDFRONT`, …); `atlassian`: products (`jira`, …).
    /// Empty: all.
    pub services: Vec<String>,
    /// `aws`: regions (`eu-west-1`, `GLOBAL`); `gcp`: scopes (`europe-west3`). Empty: all.
    pub regions: Vec<String>,
    /// `github`: the lists to take (`actions`, `hooks`, `web`, …); at least one.
    pub keys: Vec<String>,
}

/// Why a body was not taken. The feed keeps its last good list.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("not a {format} document: {detail}")]
    Shape { format: Format, detail: String },
    #[error("{at}: {detail}")]
    Address { at: String, detail: String },
    #[error("{at}: {network} allows every source; a feed may not list it")]
    Everyone { at: String, network: IpNet },
    #[error("more than {MAX_FEED_ENTRIES} networks; refused whole")]
    TooMany,
}

impl BodyError {
    fn shape(format: Format, detail: impl fmt::Display) -> BodyError {
        BodyError::Shape {
            format,
            detail: detail.to_string(),
        }
    }
}

/// The networks a body lists, collected with the checks every format shares.
#[derive(Default)]
struct Networks(BTreeSet<IpNet>);

impl Networks {
    /// Adds one address or network written as `value`, found at `at` (for messages).
    fn add(&mut self, at: impl FnOnce() -> String, value: &str) -> Result<(), BodyError> {
        let network = match crate::config::parse_network(value) {
            Ok(network) => network,
            Err(detail) => {
                return Err(BodyError::Address {
                    at: at(),
                    detail: shorten(detail),
                })
            }
        };
        if crate::config::allows_everyone(network) {
            return Err(BodyError::Everyone { at: at(), network });
        }
        self.0.insert(network);
        if self.0.len() > MAX_FEED_ENTRIES {
            return Err(BodyError::TooMany);
        }
        Ok(())
    }
}

/// At most 200 characters of a message quoting a body, so a hostile body cannot fill
/// the log.
fn shorten(text: String) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The networks `body` lists, host bits cleared, sorted, without duplicates. Any part
/// that is not what the format documents refuses the whole body: nothing of a bad body
/// is applied.
pub fn parse(format: Format, body: &[u8], filters: &Filters) -> Result<Vec<IpNet>, BodyError> {
    let mut networks = Networks::default();
    match format {
        Format::Harness => harness::parse(body, &mut networks)?,
        Format::Text => text::parse(body, &mut networks)?,
        Format::Csv => csv::parse(body, &mut networks)?,
        Format::Json => json::parse(body, filters.path.as_deref().unwrap_or("$"), &mut networks)?,
        Format::Aws => aws::parse(body, filters, &mut networks)?,
        Format::Gcp => gcp::parse(body, filters, &mut networks)?,
        Format::Github => github::parse(body, &filters.keys, &mut networks)?,
        Format::Cloudflare => cloudflare::parse(body, &mut networks)?,
        Format::Atlassian => atlassian::parse(body, filters, &mut networks)?,
        Format::Fastly => fastly::parse(body, &mut networks)?,
    }
    Ok(networks.0.into_iter().collect())
}

/// Whether `wanted` (empty: everything) names `value`, ignoring case.
fn wanted(wanted: &[String], value: &str) -> bool {
    wanted.is_empty() || wanted.iter().any(|w| w.eq_ignore_ascii_case(value))
}
