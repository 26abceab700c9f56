//! Making the daemon's state durable: the state file written whole (with its
//! generation), single changes appended to the journal, and the write at start that
//! folds the journal in without needing room for a second copy.

use std::time::Instant;

use tracing::warn;

use super::{Daemon, DaemonError, Kernel};
use crate::{
    compile::CompiledList,
    startup::Saved,
    state::{self, Change, EntriesOf, State, StateError},
};

/// Journaled changes after which the state file is written whole again (so a restart
/// never replays more than this).
const JOURNAL_COMPACT_AT: usize = 4_096;

impl<K: Kernel> Daemon<K> {
    /// The state to save, without its entries (see [`Daemon::persist`]).
    fn state_without_entries(&self) -> State {
        let mut state = State::new(self.mode, self.config_mode, Vec::new());
        state.pending_confirm = self.pending_confirm;
        state.config_first_seen = self.allowlist.config_first_seen();
        state.feeds = self.saved_feeds();
        state.hosts = self.config.cli_hosts();
        state
    }

    #[cfg(test)]
    pub(super) fn state(&self) -> State {
        let state = self.state_without_entries();
        State {
            entries: self.allowlist.managed().collect(),
            ..state
        }
    }

    /// Writes the state file whole. The entries are serialized from the list itself:
    /// a copy of a million would cost hundreds of MB at the peak.
    pub(super) fn persist(&mut self) -> Result<(), DaemonError> {
        let mut state = self
            .state_without_entries()
            .with_entries(EntriesOf(|| self.allowlist.managed()));
        state.generation = self.generation.wrapping_add(1);
        state.store(&self.config.state_dir)?;
        self.generation = state.generation;
        self.journaled = 0;
        Ok(())
    }

    /// Applies the current allowlist (`compiled`, or compiled here) and mode to the
    /// kernel and writes the state file whole. The state file is written under a
    /// temporary name on a second thread while the kernel takes the list (at a million
    /// entries, about half a second saved of the wait for a whole change), and is put in
    /// place only once the kernel judges by the list: should either fail, the state file
    /// on disk is as it was, and the caller restores the previous list in the kernel.
    pub(super) fn apply_and_persist(
        &mut self,
        compiled: Option<CompiledList>,
    ) -> Result<(), DaemonError> {
        let list = match compiled {
            Some(list) => list,
            None => self.compile_checked()?,
        };
        let mut state = self.state_without_entries();
        state.generation = self.generation.wrapping_add(1);
        let generation = state.generation;
        let allowlist = &self.allowlist;
        let state_dir = &self.config.state_dir;
        let write = move || {
            state
                .with_entries(EntriesOf(|| allowlist.managed()))
                .prepare(state_dir)
        };
        let (applied, written, kernel_took) = std::thread::scope(|scope| {
            // Without a thread (the host's thread limit reached), one after the other.
            let (writer, write_here) = match std::thread::Builder::new()
                .spawn_scoped(scope, write.clone())
            {
                Ok(writer) => (Some(writer), None),
                Err(error) => {
                    warn!(%error, "no thread to write the state file beside the kernel's writes; writing it after them");
                    (None, Some(write))
                }
            };
            let started = Instant::now();
            let applied = self.filter.apply(&list);
            let kernel_took = started.elapsed();
            let written = match (writer, write_here) {
                (Some(writer), _) => writer.join().unwrap_or_else(|_| {
                    Err(StateError::Write {
                        path: state_dir.display().to_string(),
                        cause: std::io::Error::other("the thread writing the state file panicked"),
                    })
                }),
                (None, Some(write)) if applied.is_ok() => write(),
                (None, _) => Err(StateError::Write {
                    path: state_dir.display().to_string(),
                    cause: std::io::Error::other("not written: the kernel refused the list"),
                }),
            };
            (applied, written, kernel_took)
        });
        // Refused by the kernel: the written state is dropped, so removed.
        self.applied_whole(list, applied?, kernel_took)?;
        written?.commit()?;
        self.generation = generation;
        self.journaled = 0;
        Ok(())
    }

    /// Writes the state whole at start, folding in the journal. The list on disk (state
    /// file plus journal) is already the list the daemon enforces, so when nothing
    /// changed nothing is written, and when writing fails (a full disk: the rewrite
    /// needs room for a second copy) the daemon still comes up, keeps the journal and
    /// says so. Only a first start, with no list on disk yet, must write.
    pub(super) fn persist_at_start(&mut self, saved: Option<Saved>) -> Result<(), DaemonError> {
        let Some(saved) = saved else {
            return self.persist();
        };
        self.journaled = saved.replay.changes;
        let unchanged = saved.replay.changes == 0
            && saved.replay.stale == 0
            && saved.normalized == 0
            && saved.mode == self.mode
            && saved.config_mode == self.config_mode
            && saved.pending_confirm == self.pending_confirm
            && saved.config_first_seen == self.allowlist.config_first_seen()
            && saved.feeds == self.saved_feeds()
            && saved.hosts == self.config.cli_hosts();
        if unchanged {
            return Ok(());
        }
        if let Err(error) = self.persist() {
            warn!(%error, journaled = saved.replay.changes, "could not rewrite the state file at start; the saved list (state file and journal) is intact and enforced, and will be written whole at the next change that can");
        }
        Ok(())
    }

    pub(super) fn journal(&mut self, change: &Change) -> Result<(), DaemonError> {
        if self.journaled >= JOURNAL_COMPACT_AT {
            return self.persist();
        }
        if let Err(error) = state::journal(&self.config.state_dir, self.generation, change) {
            // Whatever the failed append left, the next change rewrites the state whole
            // (which also starts a fresh journal) instead of appending after it.
            self.journaled = JOURNAL_COMPACT_AT;
            return Err(error.into());
        }
        self.journaled += 1;
        Ok(())
    }
}
