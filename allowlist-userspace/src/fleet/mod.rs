//! Fleet: named sets kept in etcd and followed by every host that lists them in
//! `[fleet] sets`. This module is what hosts and `allowlistctl fleet` share: the
//! `[fleet]` config section (`config.rs`), the key layout and its values (here), and a
//! small etcd v3 client over its JSON gateway (`etcd.rs`). The daemon's side (watching,
//! applying, publishing its status) is `follow.rs` and `daemon/fleet.rs`.
//!
//! Layout under the prefix `P` (default `/allowlist`):
//! - `P/sets/NAME/CIDR` → `{"description":"…"}`: one key per entry, so `fleet add` and
//!   `fleet remove` are single-key writes and a host sees each change as it happened;
//! - `P/sets/.changed` → `{"set":"NAME","at":SECS}`: written in every `allowlistctl
//!   fleet` transaction, so its revision is the fleet's last change (what "lag" compares
//!   to). It is inside the range hosts watch (but no set's entry), so a push that
//!   changes no entry still moves every host's applied revision up to it;
//! - `P/hosts/HOST` → [`HostStatus`], under a lease: it vanishes when the host stops.

pub mod admin;
pub mod config;
pub mod etcd;
pub mod follow;

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::allowlist::SetName;

pub use config::FleetConfig;

/// Largest value of one entry's key taken (the description is at most
/// [`crate::allowlist::MAX_DESCRIPTION_BYTES`]; this leaves room for JSON escapes).
pub const MAX_VALUE_BYTES: usize = 2 * crate::allowlist::MAX_DESCRIPTION_BYTES + 64;
/// Most entries one fleet set may hold (the same bound as a feed's).
pub const MAX_SET_ENTRIES: usize = crate::feeds::MAX_FEED_ENTRIES;

/// One entry's value in etcd.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryValue {
    #[serde(default)]
    pub description: String,
}

/// What one host publishes about itself under `P/hosts/HOST`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    pub host: String,
    /// The etcd revision this host's kernel enforces (every followed set as of it).
    pub applied_revision: i64,
    /// `enforce`, `monitor` or `off`.
    pub mode: String,
    /// Entries of the followed sets in the kernel now.
    pub entries: usize,
    /// The last problem: a malformed value ignored, a change refused, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Changes this host holds (not applied) because they would cut off a local session.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<String>,
    /// Seconds since the Unix epoch when this was written.
    pub updated_at: u64,
    pub version: String,
}

/// The key prefixes of one fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Layout {
        Layout {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `P/sets/`: every set's entries.
    pub fn sets(&self) -> String {
        format!("{}/sets/", self.prefix)
    }

    /// `P/sets/NAME/`: one set's entries.
    pub fn set(&self, name: &SetName) -> String {
        format!("{}/sets/{name}/", self.prefix)
    }

    pub fn entry(&self, name: &SetName, network: &IpNet) -> String {
        format!("{}{network}", self.set(name))
    }

    pub fn changed(&self) -> String {
        format!("{}/sets/.changed", self.prefix)
    }

    pub fn hosts(&self) -> String {
        format!("{}/hosts/", self.prefix)
    }

    pub fn host(&self, host: &str) -> String {
        format!("{}{host}", self.hosts())
    }

    /// The set and the rest of a key under `P/sets/`, or `None` for keys elsewhere.
    pub fn split_entry<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        let rest = key.strip_prefix(&self.sets())?;
        rest.split_once('/')
    }
}

/// Why one key of a set is not taken. The key is ignored (reported, never applied).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct Malformed {
    pub key: String,
    pub problem: String,
}

/// One entry as read from etcd: its network (from the key) and its value.
pub fn parse_entry(key: &str, network: &str, value: &[u8]) -> Result<(IpNet, String), Malformed> {
    let bad = |problem: String| Malformed {
        key: key.chars().take(300).collect(),
        problem,
    };
    let parsed = crate::config::parse_network(network).map_err(|detail| {
        bad(format!(
            "not an address or network ({})",
            detail.chars().take(200).collect::<String>()
        ))
    })?;
    if parsed.to_string() != network {
        return Err(bad(format!(
            "not written as {parsed}, the form `allowlistctl fleet` writes"
        )));
    }
    if crate::config::allows_everyone(parsed) {
        return Err(bad(format!(
            "{parsed} allows every source; a fleet set may not list it"
        )));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(bad(format!(
            "the value is {} bytes; at most {MAX_VALUE_BYTES}",
            value.len()
        )));
    }
    let value: EntryValue = serde_json::from_slice(value).map_err(|error| {
        bad(format!(
            "the value is not {{\"description\": \"…\"}}: {}",
            error.to_string().chars().take(200).collect::<String>()
        ))
    })?;
    crate::allowlist::check_description(&value.description).map_err(bad)?;
    Ok((parsed, value.description))
}

/// A set's entries as etcd holds them: key → value, kept by a host between revisions.
pub type RawSet = BTreeMap<String, Vec<u8>>;

/// The networks (and descriptions) of a set's raw keys, and the keys that were
/// malformed. More than [`MAX_SET_ENTRIES`] networks refuse the set whole.
pub fn parse_set(
    layout: &Layout,
    raw: &RawSet,
) -> Result<(BTreeMap<IpNet, String>, Vec<Malformed>), String> {
    let mut networks = BTreeMap::new();
    let mut malformed = Vec::new();
    for (key, value) in raw {
        let Some((_, network)) = layout.split_entry(key) else {
            continue;
        };
        match parse_entry(key, network, value) {
            Ok((network, description)) => {
                networks.insert(network, description);
            }
            Err(error) => malformed.push(error),
        }
    }
    if networks.len() > MAX_SET_ENTRIES {
        return Err(format!(
            "{} entries; a fleet set holds at most {MAX_SET_ENTRIES}: refused whole",
            networks.len()
        ));
    }
    Ok((networks, malformed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str) -> SetName {
        SetName::new(name).unwrap()
    }

    #[test]
    fn keys_round_trip_and_bad_values_are_malformed() {
        let layout = Layout::new("/allowlist/");
        let key = layout.entry(&set("office"), &"10.0.0.0/8".parse().unwrap());
        assert_eq!(key, "/allowlist/sets/office/10.0.0.0/8");
        assert_eq!(layout.split_entry(&key), Some(("office", "10.0.0.0/8")));
        assert_eq!(
            layout.split_entry(&layout.changed()),
            None,
            "the marker is no entry"
        );
        assert!(parse_entry(&key, "10.0.0.0/8", br#"{"description":"vpn"}"#).is_ok());
        for (network, value) in [
            ("10.0.0.0/8", &b"not json"[..]),
            ("10.0.0.0/8", br#"{"description":1}"#),
            ("10.0.0.0/8", br#"{"description":"x","ports":"all"}"#),
            ("10.0.0.1/8", br#"{}"#),
            ("10.0.0.7", br#"{}"#),
            ("0.0.0.0/0", br#"{}"#),
            ("nonsense", br#"{}"#),
        ] {
            assert!(
                parse_entry("k", network, value).is_err(),
                "{network} {:?}",
                String::from_utf8_lossy(value)
            );
        }
        let mut raw = RawSet::new();
        raw.insert(key, br#"{"description":"vpn"}"#.to_vec());
        raw.insert("/allowlist/sets/office/bad".into(), b"{}".to_vec());
        let (networks, malformed) = parse_set(&layout, &raw).unwrap();
        assert_eq!(networks.len(), 1);
        assert_eq!(malformed.len(), 1);
    }
}
