//! Whether the daemon holds the capabilities it needs, checked before it touches the
//! kernel. Without the check a missing capability shows up as a kernel that "lacks XDP
//! programs" (the feature probe is refused), as a verifier dump, or — for CAP_CHOWN — only
//! after the filter was attached, leaving it enforcing with no daemon behind it.
//!
//! The set is the packaged unit's CapabilityBoundingSet=; the `capabilities` integration
//! test runs the daemon with exactly that set, and with each one of it missing.

use std::fmt;

use crate::config::Config;

/// A capability the daemon may need: its number (linux/capability.h), name, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub number: u32,
    pub name: &'static str,
    pub why: &'static str,
}

const CAP_CHOWN: Capability = Capability {
    number: 0,
    name: "CAP_CHOWN",
    why: "to give the control socket to socket_group",
};
const CAP_NET_ADMIN: Capability = Capability {
    number: 12,
    name: "CAP_NET_ADMIN",
    why: "to attach the XDP program and the egress flow tracker to interfaces",
};
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: Capability = Capability {
    number: 38,
    name: "CAP_PERFMON",
    why: "for the verifier to accept the XDP program, which subtracts packet pointers",
};
const CAP_BPF: Capability = Capability {
    number: 39,
    name: "CAP_BPF",
    why: "to load the XDP program and create, pin and open its maps",
};

/// The capabilities `config` needs. CAP_CHOWN only with a socket_group: root owns the
/// socket otherwise, and root's group needs no change.
pub fn required(config: &Config) -> Vec<Capability> {
    let mut needed = vec![CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON];
    if config.socket_group.is_some() {
        needed.push(CAP_CHOWN);
    }
    needed
}

/// Capabilities the process lacks.
#[derive(Debug, thiserror::Error)]
pub struct Missing(pub Vec<Capability>);

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|cap| cap.name).collect();
        write!(f, "missing capabilities {}: ", names.join(", "))?;
        for (i, cap) in self.0.iter().enumerate() {
            let separator = if i == 0 { "" } else { "; " };
            write!(f, "{separator}{} is needed {}", cap.name, cap.why)?;
        }
        write!(
            f,
            ". Nothing was changed. Run it as root with these capabilities (the packaged unit's CapabilityBoundingSet= grants them)"
        )
    }
}

/// Fails naming every capability `config` needs that the process does not hold.
pub fn check(config: &Config) -> Result<(), Missing> {
    let effective = effective().unwrap_or(u64::MAX);
    let missing = missing(&required(config), effective);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Missing(missing))
    }
}

/// The effective set, from /proc/self/status; `None` when it cannot be read, and then
/// the kernel is left to refuse.
fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_effective(&status)
}

fn parse_effective(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn missing(required: &[Capability], effective: u64) -> Vec<Capability> {
    let holds = |number: u32| effective & (1 << number) != 0;
    required
        .iter()
        .filter(|cap| {
            // The kernel lets CAP_SYS_ADMIN stand in for the two split off from it in 5.8.
            let covered = (cap.number == CAP_BPF.number || cap.number == CAP_PERFMON.number)
                && holds(CAP_SYS_ADMIN);
            !holds(cap.number) && !covered
        })
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[u32]) -> u64 {
        caps.iter().fold(0, |set, cap| set | 1 << cap)
    }

    #[test]
    fn the_effective_set_is_read_from_proc_status() {
        let status = "Name:\tallowlistd\nCapInh:\t0000000000000000\nCapEff:\t000000c000001000\n";
        assert_eq!(parse_effective(status), Some(set(&[12, 38, 39])));
        assert_eq!(parse_effective("Name:\tx\n"), None);
    }

    #[test]
    fn every_capability_missing_is_named() {
        let needed = [CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_CHOWN];
        assert!(missing(&needed, set(&[0, 12, 38, 39])).is_empty());
        assert_eq!(missing(&needed, set(&[0, 12, 39])), [CAP_PERFMON]);
        let error = Missing(missing(&needed, set(&[12]))).to_string();
        assert!(
            error.starts_with("missing capabilities CAP_BPF, CAP_PERFMON, CAP_CHOWN: "),
            "{error}"
        );
        assert!(error.contains("Nothing was changed"), "{error}");
    }

    #[test]
    fn cap_sys_admin_stands_in_for_cap_bpf_and_cap_perfmon_only() {
        let needed = [CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON];
        assert_eq!(missing(&needed, set(&[21])), [CAP_NET_ADMIN]);
        assert!(missing(&needed, u64::MAX).is_empty());
    }
}
