//! Putting the programs on interfaces, and keeping them there across daemons: the XDP
//! link (the filter) and the TC egress link (the flow tracker) of each interface are
//! pinned, and a starting daemon swaps its program into the pinned links atomically
//! rather than detach and attach, which would leave the interface unfiltered for a moment.
//!
//! The flow tracker attaches with TCX (Linux 6.6+) where the kernel has it. Older kernels
//! get a clsact qdisc and a tc BPF filter (netlink) instead, at a fixed priority and
//! handle of ours: such a filter is no link to pin, but it stays in the kernel after the
//! daemon like a pinned link does, and the next daemon swaps its program into it in
//! place (`tc filter replace`), so return traffic never stops on either kernel.

use std::fs;

use allowlist_common::PROGRAM_NAME;
use aya::{
    programs::{
        links::FdLink,
        links::PinnedLink,
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
        xdp::XdpLink,
        xdp::XdpLinkId,
        xdp::XdpMode as KernelXdpMode,
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp,
    },
    Ebpf,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{
    error::{io_error, kernel_error, Result},
    AttachedMode, Filter, FilterError,
};
use crate::config::XdpMode;

/// Name of the TC egress program that records the flows the host opens.
pub(super) const EGRESS_PROGRAM_NAME: &str = "track_flows";

/// The tc filter's priority and handle on kernels without TCX: fixed, so that the next
/// daemon (and `uninstall`) finds the filter this one leaves.
const TC_FILTER_PRIORITY: u16 = 0xa11;
fn tc_filter_handle() -> TcHandle {
    TcHandle::new(0, 0xa11)
}

/// How the flow tracker is attached to an interface's egress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressMechanism {
    /// A TCX link (Linux 6.6+), pinned.
    Tcx,
    /// A clsact qdisc and a tc BPF filter, for kernels without TCX.
    Tc,
}

impl Filter {
    /// Attaches to `interface`, or takes over the link a previous daemon pinned there by
    /// swapping in this program atomically (no moment without a filter). The kernel does
    /// not say in which XDP mode a pinned link was attached: `recorded` is what the
    /// daemon noted when it was, and the mode returned is what to note now.
    pub fn attach(
        &mut self,
        interface: &str,
        wanted: XdpMode,
        recorded: Option<AttachedMode>,
    ) -> Result<AttachedMode> {
        if let Some(mode) = self.attached.get(interface) {
            return Ok(*mode);
        }
        self.counter_blocks.claim(
            interface,
            &mut self.maps.ifindex_blocks,
            &mut self.maps.counters,
        )?;
        let link_pin = self.pins.link(interface);
        if link_pin.exists() {
            self.before_switching();
        }
        let program = program_of(&mut self.ebpf)?;
        let attached = if link_pin.exists() {
            let pinned = PinnedLink::from_pin(&link_pin).map_err(kernel_error(format!(
                "opening the pinned link {}",
                link_pin.display()
            )))?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(kernel_error(format!(
                "{} is not an XDP link",
                link_pin.display()
            )))?;
            let id = program.attach_to_link(link).map_err(kernel_error(format!(
                "replacing the program on {interface}"
            )))?;
            // The pin keeps the link alive; our handle may close whenever we exit.
            let _ = program.take_link(id);
            let mode = recorded.unwrap_or(AttachedMode::Native);
            if matches!(
                (wanted, mode),
                (XdpMode::Native, AttachedMode::Generic) | (XdpMode::Generic, AttachedMode::Native)
            ) {
                warn!(interface, attached = ?mode, wanted = ?wanted,
                    "keeping the existing {mode:?} attachment: switching XDP mode would leave the interface unfiltered for a moment; run `allowlistd uninstall` first to change it");
            }
            info!(interface, mode = ?mode, "took over the pinned XDP link");
            if !self.layouts.ours_live {
                super::layout::crash_point("layout-one-switched");
            }
            mode
        } else {
            let (id, mode) = attach_new(program, interface, wanted)?;
            let link = program
                .take_link(id)
                .map_err(kernel_error(format!("taking the link on {interface}")))?;
            let fd_link = FdLink::try_from(link).map_err(kernel_error(format!(
                "the kernel attached {interface} without a BPF link (needs Linux 5.9+), so it cannot be pinned"
            )))?;
            fd_link.pin(&link_pin).map_err(kernel_error(format!(
                "pinning the link at {}",
                link_pin.display()
            )))?;
            info!(interface, mode = ?mode, "attached the XDP program");
            mode
        };
        self.attached.insert(interface.to_string(), attached);
        Ok(attached)
    }

    /// Attaches the flow tracker to `interface`'s egress, before the filter enforces there
    /// (so the host's replies pass from the first packet), or takes over the one a
    /// previous daemon left. Returns how it is attached.
    pub fn attach_egress(&mut self, interface: &str) -> Result<EgressMechanism> {
        if let Some(mechanism) = self.egress.get(interface) {
            return Ok(*mechanism);
        }
        let pin = self.pins.egress_link(interface);
        self.before_switching();
        let program = egress_program_of(&mut self.ebpf)?;
        let mechanism = if pin.exists() {
            let pinned = PinnedLink::from_pin(&pin).map_err(kernel_error(format!(
                "opening the pinned link {}",
                pin.display()
            )))?;
            let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                .map_err(kernel_error(format!("{} is not a TC link", pin.display())))?;
            let id = program.attach_to_link(link).map_err(kernel_error(format!(
                "replacing the egress program on {interface}"
            )))?;
            let _ = program.take_link(id);
            EgressMechanism::Tcx
        } else if replace_tc_filter(program, interface)? {
            EgressMechanism::Tc
        } else {
            attach_egress_new(program, interface, &pin)?
        };
        info!(interface, mechanism = ?mechanism, "the egress flow tracker is attached");
        self.egress.insert(interface.to_string(), mechanism);
        Ok(mechanism)
    }

    /// Detaches from pinned interfaces that are no longer configured.
    pub fn detach_others(&mut self, keep: &[String]) -> Result<()> {
        for interface in self.pins.pinned_interfaces()? {
            if !keep.contains(&interface) {
                let pin = self.pins.link(&interface);
                fs::remove_file(&pin).map_err(io_error(format!("removing {}", pin.display())))?;
                let _ = fs::remove_file(self.pins.egress_link(&interface));
                detach_tc_filter(&interface);
                self.attached.remove(&interface);
                self.egress.remove(&interface);
                self.counter_blocks.release(&interface);
                info!(interface, "detached: no longer in the config");
            }
        }
        Ok(())
    }
}

pub(super) fn program_of(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or_else(|| FilterError::Kernel {
            context: "loading the XDP program".into(),
            message: format!("the object has no program {PROGRAM_NAME}"),
        })?
        .try_into()
        .map_err(kernel_error("loading the XDP program"))
}

pub(super) fn egress_program_of(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    ebpf.program_mut(EGRESS_PROGRAM_NAME)
        .ok_or_else(|| FilterError::Kernel {
            context: "loading the TC egress program".into(),
            message: format!("the object has no program {EGRESS_PROGRAM_NAME}"),
        })?
        .try_into()
        .map_err(kernel_error("loading the TC egress program"))
}

/// Swaps this program into the tc filter a previous daemon left on `interface` (kernels
/// without TCX); false if there is none.
fn replace_tc_filter(program: &mut SchedClassifier, interface: &str) -> Result<bool> {
    let link = SchedClassifierLink::attached(
        interface,
        TcAttachType::Egress,
        TC_FILTER_PRIORITY,
        tc_filter_handle(),
        None,
    )
    .map_err(io_error(format!("finding {interface}")))?;
    match program.attach_to_link(link) {
        Ok(id) => {
            keep_after_exit(program.take_link(id), interface)?;
            Ok(true)
        }
        // Replacing asks the kernel for an existing filter only; none is there.
        Err(_) => Ok(false),
    }
}

/// A new egress attachment: TCX where the kernel has it (pinned), else a clsact qdisc and
/// a tc filter.
fn attach_egress_new(
    program: &mut SchedClassifier,
    interface: &str,
    pin: &std::path::Path,
) -> Result<EgressMechanism> {
    let tcx = program.attach_with_options(
        interface,
        TcAttachType::Egress,
        TcAttachOptions::TcxOrder(LinkOrder::default()),
    );
    let tcx_error = match tcx {
        Ok(id) => {
            let link = program.take_link(id).map_err(kernel_error(format!(
                "taking the egress link on {interface}"
            )))?;
            let fd_link = FdLink::try_from(link).map_err(kernel_error(format!(
                "the egress link on {interface} cannot be pinned"
            )))?;
            fd_link.pin(pin).map_err(kernel_error(format!(
                "pinning the egress link at {}",
                pin.display()
            )))?;
            return Ok(EgressMechanism::Tcx);
        }
        Err(error) => error,
    };
    match tc::qdisc_add_clsact(interface) {
        // A clsact qdisc stays when the filter is removed (it may serve others too).
        Ok(()) | Err(TcError::AlreadyAttached) => {}
        Err(TcError::NetlinkError(error)) if error.raw_os_error() == Some(libc::EEXIST) => {}
        Err(TcError::IoError(error)) if error.raw_os_error() == Some(libc::EEXIST) => {}
        Err(error) => {
            return Err(kernel_error(format!(
                "adding the clsact qdisc to {interface} (the kernel refused TCX too: {tcx_error})"
            ))(error))
        }
    }
    let id = program
        .attach_with_options(
            interface,
            TcAttachType::Egress,
            TcAttachOptions::Netlink(NlOptions {
                priority: TC_FILTER_PRIORITY,
                handle: tc_filter_handle(),
                classid: None,
            }),
        )
        .map_err(|error: ProgramError| {
            kernel_error(format!(
                "attaching the egress flow tracker to {interface} as a tc filter (the kernel refused TCX too: {tcx_error})"
            ))(error)
        })?;
    keep_after_exit(program.take_link(id), interface)?;
    Ok(EgressMechanism::Tc)
}

/// A tc filter must outlive the daemon as a pinned link does; aya detaches a link it
/// still owns when it is dropped, so this one is let go of instead.
fn keep_after_exit(
    link: std::result::Result<SchedClassifierLink, ProgramError>,
    interface: &str,
) -> Result<()> {
    let link = link.map_err(kernel_error(format!(
        "taking the egress filter on {interface}"
    )))?;
    std::mem::forget(link);
    Ok(())
}

/// Removes the tc filter of ours from `interface`'s egress, if there is one.
pub(super) fn detach_tc_filter(interface: &str) {
    match tc::qdisc_detach_program(interface, TcAttachType::Egress, EGRESS_PROGRAM_NAME) {
        Ok(()) => info!(interface, "removed the egress tc filter"),
        Err(TcError::IoError(error)) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => warn!(interface, %error, "could not remove the egress tc filter"),
    }
}

/// Attaches in the mode wanted; `auto` tries native first and falls back to generic.
fn attach_new(
    program: &mut Xdp,
    interface: &str,
    wanted: XdpMode,
) -> Result<(XdpLinkId, AttachedMode)> {
    let attach = |program: &mut Xdp, flags, mode: AttachedMode| {
        program
            .attach(interface, flags)
            .map(|id| (id, mode))
            .map_err(kernel_error(format!(
                "attaching {mode:?} XDP to {interface}"
            )))
    };
    match wanted {
        XdpMode::Native => attach(program, KernelXdpMode::Driver, AttachedMode::Native),
        XdpMode::Generic => attach(program, KernelXdpMode::Skb, AttachedMode::Generic),
        XdpMode::Auto => match attach(program, KernelXdpMode::Driver, AttachedMode::Native) {
            Ok(attached) => Ok(attached),
            Err(error) => {
                warn!(interface, %error, "native XDP is not available; falling back to generic XDP (slower, same verdicts)");
                attach(program, KernelXdpMode::Skb, AttachedMode::Generic)
            }
        },
    }
}
