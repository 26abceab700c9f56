//! Importing a CSV file's rows as one transaction: what each row may carry, and what
//! importing them changes (a row updates or adds; `--replace` removes what the file does
//! not name; the config file's networks are left as the file says).

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{check_description, Allowlist, Entry, ListError, Origin, SetName};
use crate::{clock::now, config::normalize, ports::PortSpec};

/// One row of an import, already parsed by the client; `line` is its line in the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportRow {
    pub line: u64,
    pub network: IpNet,
    pub description: String,
    /// Ports and expiry, from files that have those columns (`export` writes them). A
    /// two-column file has none: a new network then allows all ports for good, and a
    /// listed one keeps what it had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<RowScope>,
}

/// The `ports` and `expires_at` columns of an import row.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowScope {
    /// Empty: all ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    /// Seconds since the Unix epoch; `None`: permanent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// Rows no import may carry, each named by its line: a description over the bound, more
/// port ranges than the kernel holds, an expiry more than [`crate::clock::MAX_EXPIRY`]
/// from `now`, and (unless `force`) a network that allows every source. The client
/// checks its file the same way, so it never sends what the daemon refuses.
pub fn check_import_rows(rows: &[ImportRow], now: u64, force: bool) -> Result<(), Vec<String>> {
    let mut bad = Vec::new();
    for row in rows {
        let network = normalize(row.network);
        let mut problems = Vec::new();
        if crate::config::allows_everyone(network) && !force {
            problems.push(format!(
                "{network} allows every source; import with --force if that is what you want"
            ));
        }
        if let Err(problem) = check_description(&row.description) {
            problems.push(problem);
        }
        if let Some(scope) = &row.scope {
            if let Err(problem) = crate::ports::check_kernel_fit(&scope.ports) {
                problems.push(problem);
            }
            let too_far = scope.expires_at.and_then(|at| {
                crate::clock::check_duration(
                    "expires_at",
                    at.saturating_sub(now).max(1),
                    crate::clock::MAX_EXPIRY,
                )
                .err()
            });
            if let Some(problem) = too_far {
                problems.push(format!("{problem} from now"));
            }
        }
        bad.extend(
            problems
                .into_iter()
                .map(|problem| format!("line {}: {problem}", row.line)),
        );
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad)
    }
}

/// What an import did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportPlan {
    pub added: Vec<IpNet>,
    pub updated: Vec<IpNet>,
    pub removed: Vec<IpNet>,
    /// Rows naming a network the config file owns: left as the config says.
    pub unchanged_config: Vec<IpNet>,
}

/// `entry` as an import row leaves it: the row's description, and its ports and expiry
/// when the file has those columns.
fn imported(entry: Entry, row: &ImportRow) -> Entry {
    let description = row.description.clone();
    match &row.scope {
        Some(scope) => Entry {
            description,
            ports: scope.ports.clone(),
            expires_at: scope.expires_at,
            ..entry
        },
        None => Entry {
            description,
            ..entry
        },
    }
}

impl Allowlist {
    /// Works out what importing `rows` into `set` does: rows add or update that set's
    /// entries in order (a later row for the same network wins); with `replace`, the
    /// set's entries the file does not name are removed, and other sets are left alone.
    /// Config-owned networks are left alone.
    pub fn plan_import(
        &self,
        rows: &[ImportRow],
        set: &SetName,
        replace: bool,
    ) -> Result<ImportPlan, ListError> {
        self.check_writable_set(set)?;
        let mut final_rows: BTreeMap<IpNet, &ImportRow> = BTreeMap::new();
        let mut plan = ImportPlan::default();
        for row in rows {
            let network = normalize(row.network);
            if self.owner_in_config(&network).is_some() {
                if !plan.unchanged_config.contains(&network) {
                    plan.unchanged_config.push(network);
                }
                continue;
            }
            final_rows.insert(network, row);
        }
        for (network, row) in &final_rows {
            match self.managed.get(network, set) {
                None => plan.added.push(*network),
                Some(entry) if imported(entry.clone(), row) != *entry => {
                    plan.updated.push(*network)
                }
                Some(_) => {}
            }
        }
        if replace {
            plan.removed = self
                .managed
                .values()
                .filter(|entry| entry.set == *set && !final_rows.contains_key(&entry.network))
                .map(|entry| entry.network)
                .collect();
        }
        Ok(plan)
    }

    pub fn import(
        &mut self,
        rows: &[ImportRow],
        set: &SetName,
        replace: bool,
    ) -> Result<ImportPlan, ListError> {
        let plan = self.plan_import(rows, set, replace)?;
        let now = now();
        for network in &plan.removed {
            self.managed.remove(network, set);
        }
        for row in rows {
            let network = normalize(row.network);
            if self.owner_in_config(&network).is_some() {
                continue;
            }
            let base = self.managed.get(&network, set).cloned().unwrap_or(Entry {
                network,
                description: String::new(),
                origin: Origin::CsvImport,
                set: set.clone(),
                added_at: now,
                expires_at: None,
                ports: Vec::new(),
            });
            self.managed.insert(imported(base, row));
        }
        Ok(plan)
    }
}
