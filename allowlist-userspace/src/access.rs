//! Who may do what through the control socket, decided from the peer's credentials as
//! the kernel recorded them when it connected (SO_PEERCRED, SO_PEERGROUPS), never from
//! anything the client says about itself, nor from what its process does later: its
//! PID may be gone and reused by another user's process long before the connection is.

use std::{
    fmt, io,
    os::fd::{AsRawFd, BorrowedFd},
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

/// The kernel's account of who is on the other end of a connection, as of connecting.
#[derive(Clone, Debug)]
pub struct Peer {
    pub uid: u32,
    /// The connecting process, for the log only: it may be gone and its PID reused.
    pub pid: i32,
    pub gid: u32,
    /// Supplementary groups (SO_PEERGROUPS).
    pub groups: Vec<u32>,
}

impl Peer {
    /// The credentials of the process that connected `socket`.
    pub fn of(socket: BorrowedFd<'_>) -> io::Result<Peer> {
        let cred =
            nix::sys::socket::getsockopt(&socket, nix::sys::socket::sockopt::PeerCredentials)?;
        Ok(Peer {
            uid: cred.uid(),
            pid: cred.pid(),
            gid: cred.gid(),
            groups: peer_groups(socket)?,
        })
    }
}

/// SO_PEERGROUPS: the supplementary groups the peer had when it connected.
fn peer_groups(socket: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * std::mem::size_of::<libc::gid_t>())
            .map_err(io::Error::other)?;
        // SAFETY: the kernel writes at most `len` bytes into `groups`, which has them.
        let result = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if result == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        // Too small: `len` says how much is needed (NGROUPS_MAX bounds it).
        if error.raw_os_error() == Some(libc::ERANGE) && count > groups.len() {
            groups.resize(count, 0);
            continue;
        }
        return Err(error);
    }
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
                peer.gid == group.as_raw() || peer.groups.contains(&group.as_raw())
            })
    }

    pub fn may_read(&self, peer: &Peer) -> bool {
        self.readable_by_all || self.may_change(peer)
    }

    /// Owner root, group `group` (or root), mode 0660 — or 0666 when reads are public.
    /// The socket's directory is root's alone (checked at start), so the path cannot be
    /// swapped for a symlink; the owner is set without following one all the same.
    pub fn apply_to_socket(&self, path: &Path) -> nix::Result<()> {
        nix::unistd::fchownat(
            None,
            path,
            Some(Uid::from_raw(0)),
            Some(self.group.unwrap_or(Gid::from_raw(0))),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
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
