//! Who may do what through the control socket, decided from the peer's credentials
//! (SO_PEERCRED), never from anything the client says about itself.

use std::{
    fmt, fs,
    path::Path,
    sync::{Arc, RwLock},
};

use nix::unistd::{Gid, Group, Uid};

/// The socket's access policy, from the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Members of this group may change the list, like root.
    pub group: Option<Gid>,
    /// Everyone may run read-only commands.
    pub readable_by_all: bool,
}

/// The kernel's account of who is on the other end of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Access {
    pub fn from_config(group: Option<&str>, readable_by_all: bool) -> Self {
        Access {
            group: group
                .and_then(|name| Group::from_name(name).ok().flatten())
                .map(|group| group.gid),
            readable_by_all,
        }
    }

    pub fn may_change(&self, peer: &Peer) -> bool {
        peer.uid == 0
            || self.group.is_some_and(|group| {
                peer.gid == group.as_raw() || supplementary_groups(peer).contains(&group.as_raw())
            })
    }

    pub fn may_read(&self, peer: &Peer) -> bool {
        self.readable_by_all || self.may_change(peer)
    }

    /// Owner root, group `group` (or root), mode 0660 — or 0666 when reads are public.
    pub fn apply_to_socket(&self, path: &Path) -> nix::Result<()> {
        nix::unistd::chown(
            path,
            Some(Uid::from_raw(0)),
            Some(self.group.unwrap_or(Gid::from_raw(0))),
        )?;
        let mode = if self.readable_by_all { 0o666 } else { 0o660 };
        nix::sys::stat::fchmodat(
            None,
            path,
            nix::sys::stat::Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("changes: root")?;
        if let Some(gid) = self.group {
            match Group::from_gid(gid).ok().flatten() {
                Some(group) => write!(f, " and group {}", group.name)?,
                None => write!(f, " and gid {gid}")?,
            }
        }
        f.write_str(if self.readable_by_all {
            "; reads: everyone"
        } else {
            "; reads: the same"
        })
    }
}

/// The policy in force, read by every connection at each request, so that a reload
/// which takes access away takes it from connections already open too.
#[derive(Clone, Debug)]
pub struct SharedAccess(Arc<RwLock<Access>>);

impl SharedAccess {
    pub fn new(access: Access) -> Self {
        SharedAccess(Arc::new(RwLock::new(access)))
    }

    pub fn get(&self) -> Access {
        *self
            .0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set(&self, access: Access) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = access;
    }
}

/// SO_PEERCRED carries only the primary group; the others are in /proc/PID/status.
fn supplementary_groups(peer: &Peer) -> Vec<u32> {
    let Some(pid) = peer.pid else {
        return Vec::new();
    };
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Groups:"))
                .map(|groups| {
                    groups
                        .split_whitespace()
                        .filter_map(|gid| gid.parse().ok())
                        .collect()
                })
        })
        .unwrap_or_default()
}
