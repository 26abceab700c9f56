//! Putting the programs on interfaces, and keeping them there across daemons: the XDP
//! link (the filter) and the TC egress link (the flow tracker) of each interface are
//! pinned, and a starting daemon swaps its program into the pinned links atomically
//! rather than detach and attach, which would leave the interface unfiltered for a moment.

use std::fs;

use allowlist_common::PROGRAM_NAME;
use aya::{
    programs::{
        links::FdLink, links::PinnedLink, tc::SchedClassifierLink, tc::TcAttachOptions,
        xdp::XdpLink, xdp::XdpLinkId, xdp::XdpMode as KernelXdpMode, LinkOrder, SchedClassifier,
        TcAttachType, Xdp,
    },
    Ebpf,
};
use tracing::{error, info, warn};

use super::{
    error::{io_error, kernel_error, Result},
    AttachedMode, Filter, FilterError,
};
use crate::config::XdpMode;

/// Name of the TC egress program that records the flows the host opens.
const EGRESS_PROGRAM_NAME: &str = "track_flows";

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
        let link_pin = self.pins.link(interface);
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
        if let Err(error) = self.attach_egress(interface) {
            // Without the tracker, replies to the host's own connections from unlisted
            // peers are dropped; that is still safer than no filter at all.
            error!(interface, %error, "cannot attach the egress flow tracker: replies to connections this host opens will pass only from listed sources");
        }
        self.attached.insert(interface.to_string(), attached);
        Ok(attached)
    }

    /// Attaches the flow tracker to the interface's egress (TCX, pinned), or swaps this
    /// program into the link a previous daemon pinned.
    fn attach_egress(&mut self, interface: &str) -> Result<()> {
        let pin = self.pins.egress_link(interface);
        let program = egress_program_of(&mut self.ebpf)?;
        if pin.exists() {
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
            return Ok(());
        }
        let id = program
            .attach_with_options(
                interface,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(kernel_error(format!(
                "attaching the TC egress flow tracker to {interface} (needs Linux 6.6+ for TCX)"
            )))?;
        let link = program.take_link(id).map_err(kernel_error(format!(
            "taking the egress link on {interface}"
        )))?;
        let fd_link = FdLink::try_from(link).map_err(kernel_error(format!(
            "the egress link on {interface} cannot be pinned"
        )))?;
        fd_link.pin(&pin).map_err(kernel_error(format!(
            "pinning the egress link at {}",
            pin.display()
        )))?;
        Ok(())
    }

    /// Detaches from pinned interfaces that are no longer configured.
    pub fn detach_others(&mut self, keep: &[String]) -> Result<()> {
        for interface in self.pins.pinned_interfaces()? {
            if !keep.contains(&interface) {
                let pin = self.pins.link(&interface);
                fs::remove_file(&pin).map_err(io_error(format!("removing {}", pin.display())))?;
                let _ = fs::remove_file(self.pins.egress_link(&interface));
                self.attached.remove(&interface);
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
