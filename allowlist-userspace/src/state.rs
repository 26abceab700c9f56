//! The daemon's durable state in `state_dir/state.json`: the entries it owns (added with
//! allowlistctl), the mode, and a pending `activate --confirm`.
//!
//! Written atomically before a change is reported done, so a crash at any point leaves
//! the old or the new state. A state file that cannot be read stops the daemon instead of
//! starting without the operator's list.
//!
//! Single adds and removes are appended to `state_dir/journal.ndjson` (one fsynced line
//! each) instead of rewriting a state file that may hold a million entries; loading
//! replays the journal over the state file, and every whole write empties it. Each whole
//! write has a generation number, and each journal line the generation it was appended
//! to: a journal that a crash left behind right after a whole write (its changes already
//! folded into the new file) is recognised by its older generation and not replayed.

use std::{
    collections::BTreeMap,
    fs, io,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    allowlist::{Entry, SetName},
    config::Mode,
    durable,
    feeds::fetch::Validators,
};

const FILE: &str = "state.json";
const JOURNAL: &str = "journal.ndjson";
const VERSION: u32 = 1;

/// `E` is the entries as held: a `Vec` when read back, [`EntriesOf`] (borrowed from the
/// running list) when written, so writing a million entries copies none of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State<E = Vec<Entry>> {
    pub version: u32,
    pub mode: Mode,
    /// The config file's `mode` when `mode` was last decided. If the file's value differs
    /// at start or reload, the operator edited it since, and the file wins.
    pub config_mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_confirm: Option<PendingConfirm>,
    /// Entries added with allowlistctl (origin cli or csv import).
    pub entries: E,
    /// When each network of the config file was first listed (shown by `list`).
    #[serde(default)]
    pub config_first_seen: BTreeMap<IpNet, u64>,
    /// Counts whole writes; journal lines of this generation apply on top of this file.
    #[serde(default)]
    pub generation: u64,
    /// Each fetched feed's last good list, so that a start without the provider still
    /// enforces it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub feeds: BTreeMap<SetName, SavedFeed>,
    /// Names added with `allowlistctl add --host`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<crate::feeds::dns::CliHost>,
}

/// A feed's last good list and what the next fetch needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFeed {
    /// The networks, with when each was first listed (seconds since the Unix epoch).
    pub networks: BTreeMap<IpNet, u64>,
    /// The URL the list came from: a feed pointed elsewhere starts afresh.
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub validators: Validators,
    /// When the provider last answered with a good list (or 304).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_at: Option<u64>,
    /// When the list last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<u64>,
    /// A fleet set: the etcd revision the list is as of (the watch resumes after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// A fleet set: the etcd cluster that revision is of (a revision means nothing in
    /// another cluster's history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<u64>,
    /// Entries whose description is their own rather than the set's (a fleet set's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub descriptions: BTreeMap<IpNet, String>,
}

/// An `activate --confirm` that reverts unless confirmed by `deadline`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingConfirm {
    pub revert_to: Mode,
    /// Seconds since the Unix epoch.
    pub deadline: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading {path}: {cause}")]
    Read { path: String, cause: io::Error },
    #[error("{path} is not a valid allowlist state file ({detail}); fix it, or move it away to start from the config file alone")]
    Corrupt { path: String, detail: String },
    #[error("writing {path}: {cause}{}", if cause.raw_os_error() == Some(libc::ENOSPC) { "; nothing was changed: free space there and repeat" } else { "" })]
    Write { path: String, cause: io::Error },
    #[error("{dir} holds {journal} ({bytes} bytes of changes) but no {file}, so the saved list is incomplete and the daemon did not start. If {file} was moved away, put it back. To start from the config file alone, discarding those changes, move {journal} away too")]
    OrphanedJournal {
        dir: String,
        journal: &'static str,
        file: &'static str,
        bytes: u64,
    },
}

/// Refuses a non-empty journal without a state file (see [`State::load`]).
fn refuse_orphaned_journal(state_dir: &Path) -> Result<(), StateError> {
    match fs::symlink_metadata(journal_path(state_dir)) {
        Ok(meta) if meta.len() > 0 => Err(StateError::OrphanedJournal {
            dir: state_dir.display().to_string(),
            journal: JOURNAL,
            file: FILE,
            bytes: meta.len(),
        }),
        _ => Ok(()),
    }
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

pub fn journal_path(state_dir: &Path) -> PathBuf {
    state_dir.join(JOURNAL)
}

/// One change to the managed entries, as journaled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Added, or replaced an entry for the same network.
    Add(Entry),
    /// Removed from the `default` set (journals written before sets have only these).
    Remove(IpNet),
    /// Removed from a named set.
    RemoveFrom { network: IpNet, set: SetName },
}

impl Change {
    /// The journal line for removing `network` from `set`: the old shape for the
    /// default set, so a journal stays readable by the version before sets.
    pub fn remove(network: IpNet, set: &SetName) -> Change {
        if *set == SetName::default() {
            Change::Remove(network)
        } else {
            Change::RemoveFrom {
                network,
                set: set.clone(),
            }
        }
    }
}

/// A journal line: a change, and the generation of the state file it applies to.
#[derive(Serialize, Deserialize)]
struct JournalLine<C> {
    /// Absent in journals of older versions, whose state files had none either.
    #[serde(default)]
    generation: u64,
    #[serde(flatten)]
    change: C,
}

/// Appends `change`, made on top of the state file of `generation`, to the journal and
/// makes it durable before returning. If that fails (a full disk), the journal is left
/// as it was, so the change is simply not made.
pub fn journal(state_dir: &Path, generation: u64, change: &Change) -> Result<(), StateError> {
    let path = journal_path(state_dir);
    let write_error = |cause| StateError::Write {
        path: path.display().to_string(),
        cause,
    };
    let mut line = serde_json::to_vec(&JournalLine { generation, change })
        .map_err(|error| write_error(io::Error::other(error)))?;
    line.push(b'\n');
    durable::append_durably(&path, &line).map_err(write_error)
}

/// What replaying the journal found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// Changes applied over the state file.
    pub changes: usize,
    /// Lines of an older generation, already in the state file, left out.
    pub stale: usize,
    /// A last line cut short by a crash while it was written (so never acknowledged),
    /// which was left out.
    pub torn_tail: Option<TornTail>,
}

/// A partial last line of the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// Its line number.
    pub line: usize,
    /// Its length in bytes.
    pub bytes: usize,
    /// The journal's length without it.
    pub complete_len: u64,
}

/// Replays the journal over `entries`. A last line cut short (a crash while it was
/// written, so never reported done) is left out and reported; any other bad line is
/// corruption.
fn replay(
    state_dir: &Path,
    generation: u64,
    entries: &mut Vec<Entry>,
) -> Result<Replay, StateError> {
    let path = journal_path(state_dir);
    let shown = path.display().to_string();
    let text = match durable::read_private(&path) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(Replay::default()),
        Err(cause) => return Err(StateError::Read { path: shown, cause }),
    };
    let mut by_network: BTreeMap<(IpNet, SetName), Entry> = entries
        .drain(..)
        .map(|entry| ((entry.network, entry.set.clone()), entry))
        .collect();
    let mut replay = Replay::default();
    let mut offset = 0;
    for (index, line) in text.split_inclusive(|byte| *byte == b'\n').enumerate() {
        // The newline is written with the line, before the fsync that precedes the
        // reply: a line without one was never acknowledged, whatever it holds.
        if !line.ends_with(b"\n") {
            replay.torn_tail = Some(TornTail {
                line: index + 1,
                bytes: line.len(),
                complete_len: offset as u64,
            });
            break;
        }
        offset += line.len();
        let line = serde_json::from_slice::<JournalLine<Change>>(line).map_err(|error| {
            StateError::Corrupt {
                path: format!("{shown}:{}", index + 1),
                detail: error.to_string(),
            }
        })?;
        if line.generation != generation {
            replay.stale += 1;
            continue;
        }
        match line.change {
            Change::Add(entry) => by_network.insert((entry.network, entry.set.clone()), entry),
            Change::Remove(network) => by_network.remove(&(network, SetName::default())),
            Change::RemoveFrom { network, set } => by_network.remove(&(network, set)),
        };
        replay.changes += 1;
    }
    entries.extend(by_network.into_values());
    Ok(replay)
}

/// Cuts a torn last line off the journal, so that the next append starts on a line of
/// its own.
pub fn cut_torn_tail(state_dir: &Path, tail: &TornTail) -> Result<(), StateError> {
    let path = journal_path(state_dir);
    let write_error = |cause| StateError::Write {
        path: path.display().to_string(),
        cause,
    };
    let file = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(write_error)?;
    file.set_len(tail.complete_len).map_err(write_error)?;
    file.sync_data().map_err(write_error)
}

/// Entries serialized as a JSON array straight from an iterator over the list that holds
/// them (called once per write).
pub struct EntriesOf<F>(pub F);

impl<F, I> Serialize for EntriesOf<F>
where
    F: Fn() -> I,
    I: Iterator,
    I::Item: Serialize,
{
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq((self.0)())
    }
}

impl<E: Serialize> State<E> {
    /// Writes the state file whole (streamed through a buffer, one fsync and a rename)
    /// and retires the journal.
    pub fn store(&self, state_dir: &Path) -> Result<(), StateError> {
        self.prepare(state_dir)?.commit()
    }

    /// The first half of [`State::store`]: the file written and fsynced under a temporary
    /// name, in force only once committed (see [`PreparedState`]).
    pub fn prepare(&self, state_dir: &Path) -> Result<PreparedState, StateError> {
        let path = path(state_dir);
        let file = durable::prepare_with(&path, |writer| {
            serde_json::to_writer(writer, self).map_err(io::Error::from)
        })
        .map_err(|cause| write_error(&path, cause))?;
        Ok(PreparedState {
            file,
            state_dir: state_dir.to_path_buf(),
        })
    }

    /// The same state with other entries (e.g. borrowed ones, to write).
    pub fn with_entries<T>(self, entries: T) -> State<T> {
        State {
            version: self.version,
            mode: self.mode,
            config_mode: self.config_mode,
            pending_confirm: self.pending_confirm,
            entries,
            config_first_seen: self.config_first_seen,
            generation: self.generation,
            feeds: self.feeds,
            hosts: self.hosts,
        }
    }
}

/// A state file written in full but not yet in force: the list it holds is put in force by
/// [`PreparedState::commit`], and dropped uncommitted it is removed and the state file
/// on disk stays as it was.
#[must_use = "dropped uncommitted, the written state is removed"]
pub struct PreparedState {
    file: durable::Prepared,
    state_dir: PathBuf,
}

impl PreparedState {
    /// Puts the written state in force and retires the journal.
    pub fn commit(self) -> Result<(), StateError> {
        let path = path(&self.state_dir);
        self.file
            .commit()
            .map_err(|cause| write_error(&path, cause))?;
        // The state file now holds everything the journal did. Should the journal
        // outlive this (a crash, a failed unlink), its lines are of an older generation
        // and are not replayed, so the new state is in force either way.
        let journal = journal_path(&self.state_dir);
        match fs::remove_file(&journal) {
            Ok(()) => durable::sync_directory_of(&journal),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(%error, journal = %journal.display(), "could not remove the folded-in journal; it is ignored at the next start");
            }
        }
        Ok(())
    }
}

fn write_error(path: &Path, cause: io::Error) -> StateError {
    StateError::Write {
        path: path.display().to_string(),
        cause,
    }
}

impl State {
    pub fn new(mode: Mode, config_mode: Mode, entries: Vec<Entry>) -> Self {
        State {
            version: VERSION,
            mode,
            config_mode,
            pending_confirm: None,
            entries,
            config_first_seen: BTreeMap::new(),
            generation: 0,
            feeds: BTreeMap::new(),
            hosts: Vec::new(),
        }
    }

    /// The saved state with the journal replayed over it, or `None` on a first start.
    /// A journal without a state file is refused: the changes in it are relative to a
    /// list that is gone, and starting from the config alone would silently drop them.
    pub fn load(state_dir: &Path) -> Result<Option<(State, Replay)>, StateError> {
        let path = path(state_dir);
        let shown = path.display().to_string();
        let bytes = match durable::read_private(&path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                refuse_orphaned_journal(state_dir)?;
                return Ok(None);
            }
            Err(cause) => return Err(StateError::Read { path: shown, cause }),
        };
        let state: State = serde_json::from_slice(&bytes).map_err(|error| StateError::Corrupt {
            path: shown.clone(),
            detail: error.to_string(),
        })?;
        if state.version != VERSION {
            return Err(StateError::Corrupt {
                path: shown,
                detail: format!("version {} is not {VERSION}", state.version),
            });
        }
        let mut state = state;
        let replay = replay(state_dir, state.generation, &mut state.entries)?;
        Ok(Some((state, replay)))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::allowlist::Origin;

    fn entry(network: &str, description: &str) -> Entry {
        Entry {
            network: network.parse().unwrap(),
            description: description.into(),
            origin: Origin::Cli,
            set: Default::default(),
            added_at: 1,
            expires_at: None,
            ports: Vec::new(),
        }
    }

    fn state_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("allowlist-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_state_file_and_journal_from_before_sets_load_into_the_default_set() {
        let dir = state_dir("before-sets");
        fs::write(
            path(&dir),
            r#"{"version":1,"mode":"enforce","config_mode":"enforce","entries":[{"network":"192.0.2.0/24","description":"office","origin":"cli","added_at":1}],"generation":3}"#,
        )
        .unwrap();
        fs::write(
            journal_path(&dir),
            "{\"generation\":3,\"remove\":\"192.0.2.0/24\"}\n{\"generation\":3,\"add\":{\"network\":\"198.51.100.7/32\",\"origin\":\"cli\",\"added_at\":2}}\n",
        )
        .unwrap();
        let (state, replay) = State::load(&dir).unwrap().unwrap();
        assert_eq!(replay.changes, 2);
        assert_eq!(state.entries.len(), 1);
        assert_eq!(state.entries[0].set, SetName::default());
        assert!(state.feeds.is_empty());
    }

    #[test]
    fn a_removal_from_a_named_set_leaves_the_same_network_in_other_sets() {
        let dir = state_dir("sets");
        let ci = SetName::new("ci").unwrap();
        let in_ci = Entry {
            set: ci.clone(),
            ..entry("192.0.2.0/24", "ci runner")
        };
        State::new(
            Mode::Enforce,
            Mode::Enforce,
            vec![entry("192.0.2.0/24", "office"), in_ci],
        )
        .store(&dir)
        .unwrap();
        let network = "192.0.2.0/24".parse().unwrap();
        journal(&dir, 0, &Change::remove(network, &ci)).unwrap();
        let (state, _) = State::load(&dir).unwrap().unwrap();
        assert_eq!(state.entries.len(), 1);
        assert_eq!(state.entries[0].description, "office");
        let line = fs::read_to_string(journal_path(&dir)).unwrap();
        assert!(line.contains("\"set\":\"ci\""), "{line}");
    }

    #[test]
    fn journaled_changes_are_replayed_over_the_state_file_and_a_whole_write_empties_the_journal() {
        let dir = state_dir("replay");
        let stored = State::new(
            Mode::Enforce,
            Mode::Enforce,
            vec![
                entry("192.0.2.0/24", "office"),
                entry("198.51.100.7/32", "vpn"),
            ],
        );
        stored.store(&dir).unwrap();
        journal(&dir, 0, &Change::Add(entry("203.0.113.9/32", "new"))).unwrap();
        journal(&dir, 0, &Change::Add(entry("192.0.2.0/24", "renamed"))).unwrap();
        journal(&dir, 0, &Change::Remove("198.51.100.7/32".parse().unwrap())).unwrap();

        let (loaded, replay) = State::load(&dir).unwrap().unwrap();
        assert_eq!(replay.changes, 3);
        assert_eq!(
            loaded.entries,
            vec![
                entry("192.0.2.0/24", "renamed"),
                entry("203.0.113.9/32", "new")
            ]
        );

        loaded.store(&dir).unwrap();
        assert!(!journal_path(&dir).exists());
        assert_eq!(
            State::load(&dir).unwrap().unwrap().0.entries,
            loaded.entries
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_journal_line_cut_short_by_a_crash_is_ignored_but_a_bad_line_before_the_end_is_corruption()
    {
        let dir = state_dir("torn");
        State::new(Mode::Monitor, Mode::Monitor, Vec::new())
            .store(&dir)
            .unwrap();
        journal(&dir, 0, &Change::Add(entry("203.0.113.9/32", "kept"))).unwrap();
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(journal_path(&dir))
            .unwrap();
        file.write_all(br#"{"add":{"network":"198.51"#).unwrap();
        let (loaded, replay) = State::load(&dir).unwrap().unwrap();
        assert_eq!(loaded.entries, vec![entry("203.0.113.9/32", "kept")]);
        let tail = replay.torn_tail.expect("the torn line is reported");
        assert_eq!((tail.line, tail.bytes), (2, 25));

        file.write_all(b"\n").unwrap();
        let error = State::load(&dir).unwrap_err().to_string();
        assert!(error.contains("journal.ndjson:2"), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cutting_a_torn_tail_lets_the_next_change_start_on_a_line_of_its_own() {
        let dir = state_dir("cut");
        State::new(Mode::Monitor, Mode::Monitor, Vec::new())
            .store(&dir)
            .unwrap();
        journal(&dir, 0, &Change::Add(entry("203.0.113.9/32", "kept"))).unwrap();
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(journal_path(&dir))
            .unwrap();
        file.write_all(br#"{"add":{"net"#).unwrap();
        let (_, replay) = State::load(&dir).unwrap().unwrap();
        cut_torn_tail(&dir, &replay.torn_tail.unwrap()).unwrap();
        journal(&dir, 0, &Change::Add(entry("198.51.100.1/32", "next"))).unwrap();
        let (loaded, replay) = State::load(&dir).unwrap().unwrap();
        assert_eq!((replay.changes, replay.torn_tail), (2, None));
        assert_eq!(loaded.entries.len(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_complete_last_line_without_its_newline_was_never_acknowledged_and_is_left_out() {
        let dir = state_dir("unterminated");
        State::new(Mode::Monitor, Mode::Monitor, Vec::new())
            .store(&dir)
            .unwrap();
        journal(&dir, 0, &Change::Add(entry("203.0.113.9/32", "kept"))).unwrap();
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(journal_path(&dir))
            .unwrap();
        file.write_all(br#"{"generation":0,"remove":"203.0.113.9/32"}"#)
            .unwrap();
        let (loaded, replay) = State::load(&dir).unwrap().unwrap();
        assert_eq!(loaded.entries, vec![entry("203.0.113.9/32", "kept")]);
        assert_eq!(replay.torn_tail.map(|tail| tail.line), Some(2));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_journal_a_crash_left_behind_after_a_whole_write_is_not_replayed_over_it() {
        let dir = state_dir("stale");
        State::new(Mode::Monitor, Mode::Monitor, Vec::new())
            .store(&dir)
            .unwrap();
        journal(
            &dir,
            0,
            &Change::Add(entry("198.51.100.7/32", "removed later")),
        )
        .unwrap();
        let kept = fs::read(journal_path(&dir)).unwrap();
        // A whole write of generation 1 that no longer lists it; then the crash brings
        // the journal back, as a lost unlink would.
        let mut next = State::new(Mode::Monitor, Mode::Monitor, Vec::new());
        next.generation = 1;
        next.store(&dir).unwrap();
        fs::write(journal_path(&dir), kept).unwrap();
        let (loaded, replay) = State::load(&dir).unwrap().unwrap();
        assert!(loaded.entries.is_empty(), "{:?}", loaded.entries);
        assert_eq!((replay.changes, replay.stale), (0, 1));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn journals_of_older_versions_without_generations_still_replay() {
        let dir = state_dir("legacy");
        fs::write(
            path(&dir),
            br#"{"version":1,"mode":"monitor","config_mode":"monitor","entries":[]}"#,
        )
        .unwrap();
        fs::write(
            journal_path(&dir),
            b"{\"add\":{\"network\":\"203.0.113.9/32\",\"description\":\"old\",\"origin\":\"cli\",\"added_at\":1}}\n",
        )
        .unwrap();
        let (loaded, replay) = State::load(&dir).unwrap().unwrap();
        assert_eq!(replay.changes, 1);
        assert_eq!(loaded.entries, vec![entry("203.0.113.9/32", "old")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_journal_without_a_state_file_is_refused_with_what_to_do() {
        let dir = state_dir("orphan");
        journal(
            &dir,
            0,
            &Change::Add(entry("203.0.113.9/32", "acknowledged")),
        )
        .unwrap();
        let error = State::load(&dir).unwrap_err().to_string();
        assert!(error.contains("no state.json"), "{error}");
        assert!(error.contains("put it back"), "{error}");
        assert!(journal_path(&dir).exists(), "the journal must be kept");
        fs::remove_dir_all(&dir).unwrap();
    }
}
