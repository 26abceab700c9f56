//! What `allowlistctl fleet` does in etcd: replace a set whole (one transaction), add
//! or remove entries, and read every host's status. Every write also touches `P/sets/.changed`
//! in the same transaction, so its revision is the fleet's last change.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    etcd::{Etcd, EtcdError, Op, Unchanged},
    parse_set, EntryValue, HostStatus, Layout, RawSet, MAX_SET_ENTRIES,
};
use crate::allowlist::SetName;

/// Times a push reads the set again when someone else changed it meanwhile.
const MAX_PUSH_ATTEMPTS: usize = 5;

/// What a push changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub added: usize,
    pub removed: usize,
    /// Listed before and after, with another description.
    pub updated: usize,
    pub entries: usize,
}

/// One host as `fleet status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    #[serde(flatten)]
    pub status: HostStatus,
    /// Revisions of fleet changes this host has not applied (0: current; below 0: the
    /// host applied a revision this etcd has not reached, so another etcd's history).
    pub lag: i64,
    /// Seconds since the host last wrote its status.
    pub last_seen_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetView {
    /// The revision of the fleet's last change (0: none through `allowlistctl fleet`).
    pub revision: i64,
    pub hosts: Vec<HostView>,
    /// Status keys that could not be read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

/// A set as etcd holds it now (malformed keys left out, as hosts do).
pub fn read_set(
    etcd: &Etcd,
    layout: &Layout,
    set: &SetName,
) -> Result<BTreeMap<IpNet, String>, String> {
    let (_, kvs) = etcd
        .range_prefix(&layout.set(set))
        .map_err(|error| error.to_string())?;
    let raw: RawSet = kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    parse_set(layout, &raw).map(|(networks, _)| networks)
}

pub fn plan(before: &BTreeMap<IpNet, String>, after: &BTreeMap<IpNet, String>) -> Plan {
    Plan {
        added: after.keys().filter(|n| !before.contains_key(n)).count(),
        removed: before.keys().filter(|n| !after.contains_key(n)).count(),
        updated: after
            .iter()
            .filter(|(n, d)| before.get(n).is_some_and(|old| old != *d))
            .count(),
        entries: after.len(),
    }
}

fn put_entry(layout: &Layout, set: &SetName, network: &IpNet, description: &str) -> Op {
    Op::Put {
        key: layout.entry(set, network),
        value: serde_json::to_vec(&EntryValue {
            description: description.to_string(),
        })
        .unwrap_or_default(),
        lease: None,
    }
}

fn changed(layout: &Layout, set: &SetName) -> Op {
    Op::Put {
        key: layout.changed(),
        value: serde_json::json!({"set": set.as_str(), "at": crate::clock::now()})
            .to_string()
            .into_bytes(),
        lease: None,
    }
}

/// Makes `entries` the whole of `set`, in one transaction; its revision.
pub fn push(
    etcd: &Etcd,
    layout: &Layout,
    set: &SetName,
    entries: &BTreeMap<IpNet, String>,
) -> Result<i64, String> {
    if entries.len() > MAX_SET_ENTRIES {
        return Err(format!(
            "{} entries; a fleet set holds at most {MAX_SET_ENTRIES}",
            entries.len()
        ));
    }
    // etcd refuses a transaction that deletes a range and puts keys inside it, so the
    // keys to delete are named one by one, and the transaction applies only if nothing
    // in the set changed since they were read (else it is read again).
    for _ in 0..MAX_PUSH_ATTEMPTS {
        let read = etcd
            .range_prefix(&layout.set(set))
            .map_err(|error| error.to_string())?;
        if let Some(revision) = push_over(etcd, layout, set, entries, read)? {
            return Ok(revision);
        }
    }
    Err(format!(
        "set {set} kept changing while it was pushed ({MAX_PUSH_ATTEMPTS} attempts); nothing was pushed, try again"
    ))
}

/// One attempt of [`push`] over `read` (the set's keys as of a revision): the
/// transaction's revision, or `None` (nothing written) when the set changed since. A
/// key deleted since (`fleet remove` of a row the push keeps) leaves no trace in the
/// set's range, so the `.changed` marker every `allowlistctl fleet` write touches must
/// be unwritten since too.
pub fn push_over(
    etcd: &Etcd,
    layout: &Layout,
    set: &SetName,
    entries: &BTreeMap<IpNet, String>,
    (revision, kvs): (i64, Vec<super::etcd::Kv>),
) -> Result<Option<i64>, String> {
    let keep: std::collections::BTreeSet<String> = entries
        .keys()
        .map(|network| layout.entry(set, network))
        .collect();
    let mut current = BTreeMap::new();
    let mut ops: Vec<Op> = Vec::new();
    for kv in kvs {
        if keep.contains(&kv.key) {
            current.insert(kv.key, kv.value);
        } else {
            ops.push(Op::Delete(kv.key));
        }
    }
    // Only what changes is written: a push of a large set that changes a few rows
    // is a small transaction (and a small event for every host).
    for (network, description) in entries {
        let put = put_entry(layout, set, network, description);
        if let Op::Put { key, value, .. } = &put {
            if current.get(key) == Some(value) {
                continue;
            }
        }
        ops.push(put);
    }
    ops.push(changed(layout, set));
    let set_prefix = layout.set(set);
    let marker = layout.changed();
    etcd.txn_if_unchanged(
        &[
            Unchanged::Prefix(&set_prefix, revision),
            Unchanged::Key(&marker, revision),
        ],
        &ops,
    )
    .map_err(|error| explain(error, ops.len()))
}

/// Adds (or re-describes) `networks` in `set`, in one transaction.
pub fn add(
    etcd: &Etcd,
    layout: &Layout,
    set: &SetName,
    networks: &[IpNet],
    description: &str,
) -> Result<i64, String> {
    let current = read_set(etcd, layout, set)?;
    let new = networks.iter().filter(|n| !current.contains_key(n)).count();
    if current.len() + new > MAX_SET_ENTRIES {
        return Err(format!(
            "set {set} would hold {} entries; at most {MAX_SET_ENTRIES}",
            current.len() + new
        ));
    }
    let mut ops: Vec<Op> = networks
        .iter()
        .map(|network| put_entry(layout, set, network, description))
        .collect();
    ops.push(changed(layout, set));
    etcd.txn(&ops).map_err(|error| explain(error, ops.len()))
}

/// Removes `networks` from `set`, in one transaction; refused (nothing changes) when
/// one is not in it.
pub fn remove(
    etcd: &Etcd,
    layout: &Layout,
    set: &SetName,
    networks: &[IpNet],
) -> Result<i64, String> {
    let current = read_set(etcd, layout, set)?;
    if let Some(missing) = networks.iter().find(|n| !current.contains_key(n)) {
        return Err(format!(
            "{missing} is not in fleet set {set}; nothing changed"
        ));
    }
    let mut ops: Vec<Op> = networks
        .iter()
        .map(|network| Op::Delete(layout.entry(set, network)))
        .collect();
    ops.push(changed(layout, set));
    etcd.txn(&ops).map_err(|error| explain(error, ops.len()))
}

/// How far `applied` is behind the fleet's last change `changed`; 0 when it is not
/// (a hand-written key may come after the last change); below 0 when it is past etcd's
/// `current` revision, which no host of this etcd can be (not hidden as "current").
fn lag(changed: i64, current: i64, applied: i64) -> i64 {
    if applied > current {
        current.saturating_sub(applied)
    } else {
        changed.saturating_sub(applied).max(0)
    }
}

/// Every host's published status, with its lag behind the fleet's last change.
pub fn status(etcd: &Etcd, layout: &Layout) -> Result<FleetView, String> {
    let (current, last) = etcd
        .get(&layout.changed())
        .map_err(|error| error.to_string())?;
    let revision = last.map_or(0, |kv| kv.mod_revision);
    let (_, kvs) = etcd
        .range_prefix(&layout.hosts())
        .map_err(|error| error.to_string())?;
    let now = crate::clock::now();
    let mut view = FleetView {
        revision,
        hosts: Vec::new(),
        unreadable: Vec::new(),
    };
    for kv in kvs {
        match serde_json::from_slice::<HostStatus>(&kv.value) {
            Ok(status) => view.hosts.push(HostView {
                lag: lag(revision, current, status.applied_revision),
                last_seen_secs: now.saturating_sub(status.updated_at),
                status,
            }),
            Err(error) => view.unreadable.push(format!("{}: {error}", kv.key)),
        }
    }
    Ok(view)
}

/// etcd refuses large transactions by its own limits; say which to raise.
fn explain(error: EtcdError, ops: usize) -> String {
    let text = error.to_string();
    if text.contains("too many operations") {
        format!("{text}: this transaction has {ops} operations; start etcd with --max-txn-ops {} or more", ops.max(128))
    } else if text.contains("request is too large") || text.contains("larger than max") {
        format!("{text}: start etcd with a larger --max-request-bytes (e.g. 67108864 for a 100,000-entry set)")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::lag;

    #[test]
    fn a_host_past_etcds_revision_has_a_negative_lag() {
        assert_eq!(lag(10, 12, 7), 3);
        assert_eq!(
            lag(10, 12, 12),
            0,
            "a hand-written key after the last change"
        );
        assert_eq!(lag(10, 12, 20), -8);
        assert_eq!(lag(i64::MAX, i64::MAX, i64::MIN), i64::MAX);
    }
}
