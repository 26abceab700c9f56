//! Who made a change, as the log names it: a client of the control socket (by the
//! credentials the kernel recorded when it connected), or the daemon itself acting on
//! the config file, a timer or a failure.

use std::fmt;

use crate::access::Peer;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// A control-socket client: uid and pid from SO_PEERCRED.
    Client { uid: u32, pid: i32 },
    /// The config file, read at start or on SIGHUP.
    Config,
    /// An entry's expiry time came.
    Expiry,
    /// An unconfirmed `--confirm` change reached its deadline.
    ConfirmDeadline,
    /// A feed's refresh timer.
    FeedRefresh,
}

impl Actor {
    pub fn client(peer: &Peer) -> Actor {
        Actor::Client {
            uid: peer.uid,
            pid: peer.pid,
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Client { uid, pid } => write!(f, "uid:{uid},pid:{pid}"),
            Actor::Config => f.write_str("config"),
            Actor::Expiry => f.write_str("expiry"),
            Actor::ConfirmDeadline => f.write_str("confirm-deadline"),
            Actor::FeedRefresh => f.write_str("feed-refresh"),
        }
    }
}
