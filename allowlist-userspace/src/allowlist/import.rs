//! Importing a CSV file's rows as one transaction: what each row may carry, and what
//! importing them changes (a row updates or adds; `--replace` removes what the file does
//! not name; the config file's networks are left as the file says).

use std::collections::HashSet;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    check_description,
    managed::{expiry, Interner, Kept, SetEntries},
    Allowlist, ListError, Origin, SetName,
};
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

/// `base` as an import row leaves it: the row's description, and its ports and expiry
/// when the file has those columns.
fn imported(base: &Kept, row: &ImportRow, interner: &mut Interner) -> Kept {
    let mut kept = base.clone();
    kept.description = interner.description(&row.description);
    if let Some(scope) = &row.scope {
        kept.ports = interner.ports(&scope.ports);
        kept.expires_at = scope.expires_at.map(expiry);
    }
    kept
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
        Ok(self.imported_set(rows, set, replace)?.0)
    }

    pub fn import(
        &mut self,
        rows: &[ImportRow],
        set: &SetName,
        replace: bool,
    ) -> Result<ImportPlan, ListError> {
        let (plan, entries) = self.imported_set(rows, set, replace)?;
        self.managed.replace_set(set, entries);
        Ok(plan)
    }

    /// What importing `rows` does, and `set` as it leaves it: built whole in one pass, a
    /// merge of the set's entries and the rows, both in network order. The set as it was
    /// is not copied (a list kept for a rollback still holds it).
    fn imported_set(
        &self,
        rows: &[ImportRow],
        set: &SetName,
        replace: bool,
    ) -> Result<(ImportPlan, SetEntries), ListError> {
        self.check_writable_set(set)?;
        let mut plan = ImportPlan::default();
        let mut left_to_config = HashSet::new();
        let mut final_rows: Vec<(IpNet, &ImportRow)> = Vec::with_capacity(rows.len());
        for row in rows {
            let network = normalize(row.network);
            if self.owner_in_config(&network).is_some() {
                if left_to_config.insert(network) {
                    plan.unchanged_config.push(network);
                }
                continue;
            }
            final_rows.push((network, row));
        }
        // Stable: rows for one network stay in file order and apply one after another, so
        // a later row wins what it sets (a two-column row keeps an earlier row's ports).
        final_rows.sort_by_key(|(network, _)| *network);

        let fresh = Kept {
            added_at: now(),
            expires_at: None,
            description: None,
            ports: None,
            origin: Origin::CsvImport,
        };
        let old = self.managed.set(set);
        let mut interner = Interner::default();
        let mut listed = old.iter().peekable();
        let mut merged = Vec::with_capacity(final_rows.len());
        let mut rows = final_rows.into_iter().peekable();
        while let Some((network, row)) = rows.next() {
            while let Some((before, kept)) = listed.next_if(|(before, _)| **before < network) {
                if replace {
                    plan.removed.push(*before);
                } else {
                    merged.push((*before, kept.clone()));
                }
            }
            let was = listed
                .next_if(|(before, _)| **before == network)
                .map(|(_, was)| was);
            let mut kept = imported(was.unwrap_or(&fresh), row, &mut interner);
            while let Some((_, row)) = rows.next_if(|(next, _)| *next == network) {
                kept = imported(&kept, row, &mut interner);
            }
            match was {
                None => plan.added.push(network),
                Some(was) if kept != *was => plan.updated.push(network),
                Some(_) => {}
            }
            merged.push((network, kept));
        }
        for (before, kept) in listed {
            if replace {
                plan.removed.push(*before);
            } else {
                merged.push((*before, kept.clone()));
            }
        }
        Ok((plan, SetEntries::from_sorted(merged.into_iter())))
    }
}
