//! Telling the service manager where the daemon is in its life (sd_notify): READY=1 once
//! the kernel judges by the list and the control socket answers, RELOADING=1 … READY=1
//! around a SIGHUP reload, STOPPING=1 on the way out, and a STATUS= line that
//! `systemctl status` shows, kept up with every change. Outside systemd (no
//! NOTIFY_SOCKET) every call does nothing.

use std::sync::Mutex;

use sd_notify::NotifyState;
use tracing::warn;

use crate::{
    clock::format_time,
    config::Mode,
    control::{Reply, Request, Status},
    daemon::{Actor, Daemon, Kernel},
};

/// The daemon is ready: the list and mode are in the kernel, every interface is
/// attached, and the control socket accepts connections.
pub fn ready(status: &Status) {
    let line = current_line(status);
    notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
    remember(line);
}

/// Sends the STATUS= line for `status` if it says something new: after requests,
/// expiry and reverted activations.
pub fn update(status: &Status) {
    let line = current_line(status);
    if last_sent().as_deref() != Some(line.as_str()) {
        notify(&[NotifyState::Status(&line)]);
        remember(line);
    }
}

/// Re-reads the config as SIGHUP asks, bracketed by RELOADING=1 and READY=1, so that the
/// unit shows "reloading" until the kernel judges by the new config (systemd ≥ 253 wants
/// MONOTONIC_USEC with RELOADING=1). A refused reload keeps the running state, which the
/// STATUS line says.
pub fn reload<K: Kernel>(daemon: &mut Daemon<K>) -> Reply {
    let reloading = NotifyState::monotonic_usec_now();
    let mut states = vec![
        NotifyState::Reloading,
        NotifyState::Status("reloading the config"),
    ];
    match &reloading {
        Ok(now) => states.push(now.clone()),
        Err(error) => warn!(%error, "cannot read CLOCK_MONOTONIC for the service manager"),
    }
    notify(&states);
    let reply = daemon.handle(Request::Reload, &Actor::Config);
    // systemd shows the first line of STATUS=; the error's others stay in the log.
    let refusal = reply
        .error
        .as_deref()
        .map(|error| error.lines().next().unwrap_or_default().to_string());
    *lock(&RELOAD_REFUSAL) = refusal;
    let line = current_line(&daemon.status());
    notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
    remember(line);
    reply
}

/// The daemon is on its way out; the filter stays in the kernel.
pub fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping; the filter stays attached and keeps judging"),
    ]);
}

/// What the kernel does, in a line: "enforcing 12 prefixes on eth0, eth1" or
/// "monitor, attached nowhere (…)".
pub fn status_line(status: &Status) -> String {
    if status.interfaces.is_empty() {
        return format!(
            "{}, attached nowhere: {} names no interfaces, so no traffic is judged",
            status.mode, status.config
        );
    }
    let prefixes = match status.entries.ipv4 + status.entries.ipv6 {
        1 => "1 prefix".to_string(),
        count => format!("{count} prefixes"),
    };
    let interfaces = status
        .interfaces
        .iter()
        .map(|interface| interface.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let mut line = match status.mode {
        Mode::Enforce => format!("enforcing {prefixes} on {interfaces}"),
        Mode::Monitor => {
            format!("monitor on {interfaces}: {prefixes}, counting what enforce would drop")
        }
        Mode::Off => format!("off on {interfaces}: passing everything"),
    };
    if let Some(deadline) = status.confirm_deadline {
        line.push_str(&format!(
            "; reverts at {} unless `allowlistctl confirm`",
            format_time(deadline)
        ));
    }
    line
}

/// The status line, with the last reload's refusal until a reload succeeds: `systemctl
/// reload` cannot report it (it only sends SIGHUP), so `systemctl status` must keep it.
fn current_line(status: &Status) -> String {
    let line = status_line(status);
    match lock(&RELOAD_REFUSAL).as_deref() {
        Some(refusal) => format!("{line}; last reload refused, still as before: {refusal}"),
        None => line,
    }
}

/// Why the last reload was refused, until one succeeds.
static RELOAD_REFUSAL: Mutex<Option<String>> = Mutex::new(None);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The STATUS= line last sent, so that an unchanged one is not sent again.
static LAST_STATUS: Mutex<Option<String>> = Mutex::new(None);

fn last_sent() -> Option<String> {
    lock(&LAST_STATUS).clone()
}

fn remember(line: String) {
    *lock(&LAST_STATUS) = Some(line);
}

fn notify(states: &[NotifyState]) {
    // A service manager that does not hear READY=1 fails the start after its timeout;
    // nothing the daemon could do instead, so the log says why.
    if let Err(error) = sd_notify::notify(states) {
        let socket = std::env::var("NOTIFY_SOCKET").unwrap_or_default();
        warn!(%error, socket, "cannot notify the service manager");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        control::{EntryCounts, InterfaceStatus},
        filter::AttachedMode,
    };

    fn status(mode: Mode, interfaces: &[&str]) -> Status {
        Status {
            mode,
            confirm_deadline: None,
            interfaces: interfaces
                .iter()
                .map(|name| InterfaceStatus {
                    name: name.to_string(),
                    xdp_mode: AttachedMode::Native,
                    egress: None,
                })
                .collect(),
            entries: EntryCounts { ipv4: 10, ipv6: 2 },
            pin_path: "/sys/fs/bpf/allowlist".into(),
            config: "/etc/allowlist/allowlist.toml".into(),
            kernel: "6.1.0".into(),
            feeds: Vec::new(),
        }
    }

    #[test]
    fn the_status_line_says_what_the_kernel_does_and_where() {
        assert_eq!(
            status_line(&status(Mode::Enforce, &["eth0", "eth1"])),
            "enforcing 12 prefixes on eth0, eth1"
        );
        assert_eq!(
            status_line(&status(Mode::Monitor, &["eth0"])),
            "monitor on eth0: 12 prefixes, counting what enforce would drop"
        );
        assert_eq!(
            status_line(&status(Mode::Off, &["eth0"])),
            "off on eth0: passing everything"
        );
        let one = Status {
            entries: EntryCounts { ipv4: 0, ipv6: 1 },
            ..status(Mode::Enforce, &["eth0"])
        };
        assert_eq!(status_line(&one), "enforcing 1 prefix on eth0");
    }

    #[test]
    fn a_daemon_attached_nowhere_says_so_and_names_its_config() {
        assert_eq!(
            status_line(&status(Mode::Monitor, &[])),
            "monitor, attached nowhere: /etc/allowlist/allowlist.toml names no interfaces, so no traffic is judged"
        );
    }

    #[test]
    fn a_pending_confirm_is_in_the_status_line() {
        let pending = Status {
            confirm_deadline: Some(1_700_000_000),
            ..status(Mode::Enforce, &["eth0"])
        };
        assert_eq!(
            status_line(&pending),
            "enforcing 12 prefixes on eth0; reverts at 2023-11-14T22:13:20Z unless `allowlistctl confirm`"
        );
    }
}
