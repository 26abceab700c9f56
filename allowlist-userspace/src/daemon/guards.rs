//! The rules that keep an operator from locking anyone out: enforcing needs entries, and
//! no change may start dropping the caller's session or an established connection.

use super::{Daemon, Kernel, Refusal};
use crate::{
    allowlist::{Allowlist, Entry},
    compile::CompiledList,
    config::Mode,
    control::Safety,
    safety::{cut_off, people_at_risk, AtRisk, Verdicts},
};

impl<K: Kernel> Daemon<K> {
    /// Refuses a change that would drop someone whose traffic passes now.
    pub(super) fn check_lockout(
        &self,
        next: &Allowlist,
        next_mode: Mode,
        safety: &Safety,
    ) -> Result<(), Refusal> {
        self.check_lockout_with(
            || {
                next.compile()
                    .map_err(|error| Refusal::Error(error.to_string()))
            },
            next_mode,
            safety,
        )
    }

    /// As `check_lockout`, with the next list built only if someone could be cut off.
    pub(super) fn check_lockout_with(
        &self,
        next_list: impl FnOnce() -> Result<CompiledList, Refusal>,
        next_mode: Mode,
        safety: &Safety,
    ) -> Result<(), Refusal> {
        if safety.force {
            return Ok(());
        }
        let loopback_protected = self.config.interfaces.iter().any(|name| name == "lo");
        let people = people_at_risk(safety.caller, safety.caller_port, loopback_protected);
        if people.is_empty() {
            return Ok(());
        }
        self.refuse_cut_off(&people, &next_list()?, next_mode)
    }

    /// As `check_lockout_with`, for a next list compiled already.
    pub(super) fn check_lockout_against(
        &self,
        next_list: &CompiledList,
        next_mode: Mode,
        safety: &Safety,
    ) -> Result<(), Refusal> {
        self.check_lockout_with(|| Ok(next_list.clone()), next_mode, safety)
    }

    pub(super) fn refuse_cut_off(
        &self,
        people: &[AtRisk],
        next_list: &CompiledList,
        next_mode: Mode,
    ) -> Result<(), Refusal> {
        let cut = cut_off(
            &Verdicts {
                list: &self.compiled,
                mode: self.mode,
            },
            &Verdicts {
                list: next_list,
                mode: next_mode,
            },
            people,
        );
        if cut.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = cut.iter().map(ToString::to_string).collect();
        Err(Refusal::Unsafe(
            format!(
                "refused for safety: this would cut off {}. List them first, or repeat with --force if that is intended",
                names.join(", ")
            ),
            cut,
        ))
    }

    pub(super) fn refuse_empty_enforce(
        &self,
        next: &Allowlist,
        next_mode: Mode,
        what: &str,
    ) -> Result<(), Refusal> {
        next.refuse_locking_everyone_out(next_mode, what)
            .map_err(Refusal::Error)
    }

    /// Refuses an update of a listed entry that would cut someone off: narrower ports at
    /// once, or a new or earlier expiry when it comes (judged as if the entry were gone,
    /// since the timer removes it without asking). `self.allowlist` holds `after`.
    pub(super) fn check_narrowing(
        &self,
        before: &Entry,
        after: &Entry,
        safety: &Safety,
    ) -> Result<(), Refusal> {
        let network = after.network;
        let expires_sooner = match (before.expires_at, after.expires_at) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(was), Some(is)) => is < was,
        };
        if !expires_sooner && before.ports == after.ports {
            return Ok(());
        }
        self.check_lockout_with(
            || {
                let mut around = self.allowlist.entries_around(network);
                if expires_sooner {
                    // Judged as if this entry were gone: one entry of this network with
                    // its reach. The same network in another set (or the config file)
                    // still counts.
                    let reach = crate::compile::Reach::from_ports(&after.ports);
                    if let Some(at) = around.iter().position(|(listed, listed_reach)| {
                        *listed == network
                            && *listed_reach == reach
                            && self.allowlist.owner_in_config(listed).is_none()
                    }) {
                        around.swap_remove(at);
                    }
                }
                let mut next = self.compiled.clone();
                next.recompile_region(network, around)
                    .map_err(|error| Refusal::Error(error.to_string()))?;
                Ok(next)
            },
            self.mode,
            safety,
        )
    }
}
