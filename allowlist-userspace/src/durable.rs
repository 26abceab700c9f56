//! The daemon's files on disk: private, never followed through a symlink, and written so
//! that neither a crash nor a full disk leaves anything but the old or the new contents.
//!
//! - Directories the daemon writes in (`state_dir`, the control socket's directory) must
//!   be real directories owned by root and writable by no one else, and so must be each
//!   directory above them (a sticky one like /tmp excepted): anyone who can write there
//!   could plant a symlink where the daemon is about to write, or swap the directory.
//!   The state directory is created 0700 (and an older, more open one is tightened), as
//!   it holds the whole list even when the socket is root-only.
//! - Files are opened with `O_NOFOLLOW`, created 0600, and temporary files with `O_EXCL`.
//! - A whole file is replaced through a temporary file that is removed again if any step
//!   fails; an append that fails is cut back to the length before it.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// Mode of the state directory.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of every file in it.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of a control socket directory the daemon creates (members of `socket_group`
/// must be able to reach the socket inside).
pub const SOCKET_DIR_MODE: u32 = 0o755;

/// A directory the daemon cannot trust, and why.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {problem}")]
pub struct UnsafeDirectory {
    pub what: &'static str,
    pub path: String,
    pub problem: String,
}

fn unsafe_dir(what: &'static str, path: &Path, problem: String) -> UnsafeDirectory {
    UnsafeDirectory {
        what,
        path: path.display().to_string(),
        problem,
    }
}

/// Checks that `dir` (which must exist) and every directory above it are safe for root
/// to write in. `what` names it in messages ("state_dir"). "Above it" is both the path as
/// configured and the path it resolves to: a symlink on the way is only as safe as the
/// directory holding it, which could otherwise point it elsewhere after the check.
pub fn check_directory(what: &'static str, dir: &Path) -> Result<(), UnsafeDirectory> {
    let meta = fs::symlink_metadata(dir)
        .map_err(|error| unsafe_dir(what, dir, format!("cannot be inspected: {error}")))?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir(
            what,
            dir,
            "is a symlink; point the config at the real directory".into(),
        ));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir(what, dir, "is not a directory".into()));
    }
    check_owner_and_mode(what, dir, &meta, false)?;
    check_ancestors(what, dir, dir)
}

/// Checks where the daemon would create `dir`: the directories above it that exist (a
/// directory it creates itself is root's and private). For `allowlistd check`, which
/// creates nothing.
pub fn check_creatable(what: &'static str, dir: &Path) -> Result<(), UnsafeDirectory> {
    if fs::symlink_metadata(dir).is_ok() {
        return check_directory(what, dir);
    }
    let existing = dir
        .ancestors()
        .skip(1)
        .find(|ancestor| !ancestor.as_os_str().is_empty() && ancestor.exists())
        .unwrap_or(Path::new("/"));
    let meta = fs::metadata(existing).map_err(|error| {
        unsafe_dir(
            what,
            dir,
            format!("{} cannot be inspected: {error}", existing.display()),
        )
    })?;
    check_owner_and_mode(what, existing, &meta, true)
        .map_err(|error| unsafe_dir(what, dir, format!("would be created inside {error}")))?;
    check_ancestors(what, dir, existing)
}

/// Checks the directories above `below`, as written and as resolved.
fn check_ancestors(what: &'static str, dir: &Path, below: &Path) -> Result<(), UnsafeDirectory> {
    let absolute = std::path::absolute(below)
        .map_err(|error| unsafe_dir(what, dir, format!("cannot be resolved: {error}")))?;
    let real = fs::canonicalize(below)
        .map_err(|error| unsafe_dir(what, dir, format!("cannot be resolved: {error}")))?;
    for ancestor in absolute.ancestors().skip(1).chain(real.ancestors().skip(1)) {
        let meta = fs::metadata(ancestor).map_err(|error| {
            unsafe_dir(
                what,
                dir,
                format!("{} cannot be inspected: {error}", ancestor.display()),
            )
        })?;
        check_owner_and_mode(what, ancestor, &meta, true)
            .map_err(|error| unsafe_dir(what, dir, format!("is inside {}", error)))?;
    }
    Ok(())
}

fn check_owner_and_mode(
    what: &'static str,
    dir: &Path,
    meta: &fs::Metadata,
    sticky_allowed: bool,
) -> Result<(), UnsafeDirectory> {
    let owner_ok = meta.uid() == 0 || meta.uid() == nix::unistd::geteuid().as_raw();
    if !owner_ok {
        return Err(unsafe_dir(
            what,
            dir,
            format!(
                "is owned by uid {}, who could plant files the daemon (root) would write through; `chown root: {}`",
                meta.uid(),
                dir.display()
            ),
        ));
    }
    let mode = meta.mode();
    let sticky = mode & 0o1000 != 0;
    // Group root's members are root's peers: a umask of 002 does not make a directory unsafe.
    let writable_by_others = mode & 0o002 != 0 || (mode & 0o020 != 0 && meta.gid() != 0);
    if writable_by_others && !(sticky_allowed && sticky) {
        return Err(unsafe_dir(
            what,
            dir,
            format!(
                "is writable by group or others (mode {:o}), who could plant symlinks the daemon (root) would write through; `chmod go-w {}`",
                mode & 0o7777,
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Creates `dir` 0700 if missing (parents as needed), tightens an existing one to 0700
/// and its files to 0600, and checks it ([`check_directory`]). Returns whether it had to
/// tighten anything, for the log.
pub fn prepare_private_dir(what: &'static str, dir: &Path) -> Result<bool, UnsafeDirectory> {
    let created = create_dir(what, dir, PRIVATE_DIR_MODE)?;
    check_directory(what, dir)?;
    if created {
        return Ok(false);
    }
    let mut tightened = false;
    let tighten = |path: &Path, meta: &fs::Metadata, mode: u32| -> Result<bool, UnsafeDirectory> {
        if meta.mode() & 0o777 & !mode == 0 {
            return Ok(false);
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|error| {
            unsafe_dir(
                what,
                dir,
                format!("chmod {mode:o} {}: {error}", path.display()),
            )
        })?;
        Ok(true)
    };
    let meta =
        fs::symlink_metadata(dir).map_err(|error| unsafe_dir(what, dir, error.to_string()))?;
    tightened |= tighten(dir, &meta, PRIVATE_DIR_MODE)?;
    let entries =
        fs::read_dir(dir).map_err(|error| unsafe_dir(what, dir, format!("listing: {error}")))?;
    for entry in entries.flatten() {
        if let Ok(meta) = entry.path().symlink_metadata() {
            if meta.is_file() {
                tightened |= tighten(&entry.path(), &meta, PRIVATE_FILE_MODE)?;
            }
        }
    }
    Ok(tightened)
}

/// Creates the control socket's directory 0755 if missing, and checks it.
pub fn prepare_socket_dir(socket: &Path) -> Result<(), UnsafeDirectory> {
    let dir = socket_dir(socket);
    create_dir("socket directory", &dir, SOCKET_DIR_MODE)?;
    check_directory("socket directory", &dir)
}

/// The directory holding `socket`.
pub fn socket_dir(socket: &Path) -> PathBuf {
    match socket.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates the private directory `dir` (0700) if it is missing, so that it can be locked
/// before [`prepare_private_dir`] checks and tightens it.
pub fn create_private_dir(what: &'static str, dir: &Path) -> Result<(), UnsafeDirectory> {
    create_dir(what, dir, PRIVATE_DIR_MODE).map(|_| ())
}

/// Creates `dir` with `mode` (parents with the default mode) unless it exists; returns
/// whether it did.
fn create_dir(what: &'static str, dir: &Path, mode: u32) -> Result<bool, UnsafeDirectory> {
    if fs::symlink_metadata(dir).is_ok() {
        return Ok(false);
    }
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(|error| {
            unsafe_dir(what, dir, format!("creating {}: {error}", parent.display()))
        })?;
    }
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(error) => return Err(unsafe_dir(what, dir, format!("creating: {error}"))),
    }
    // The umask may have taken bits away that the mode needs (or never adds any).
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(|error| unsafe_dir(what, dir, format!("chmod {mode:o}: {error}")))?;
    Ok(true)
}

/// Reads `path` without following a symlink there; `None` if it does not exist.
pub fn read_private(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(explain_symlink(path, error)),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// `O_NOFOLLOW` fails with ELOOP on a symlink; say so in words.
fn explain_symlink(path: &Path, error: io::Error) -> io::Error {
    if error.raw_os_error() == Some(libc::ELOOP) {
        io::Error::other(format!(
            "{} is a symlink, which the daemon never follows; remove it",
            path.display()
        ))
    } else {
        error
    }
}

/// Writes `contents` to `path` through a temporary file in the same directory: create it
/// exclusively (0600, never through a symlink), write, fsync, rename over the target,
/// fsync the directory so the rename itself is durable. If any step fails, the temporary
/// file is removed and `path` is as it was.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_atomically_with(path, |writer| writer.write_all(contents))
}

/// As [`write_atomically`], with the contents written by `write` through a buffer, so a
/// large file (a state file of a million entries) is never held whole in memory.
pub fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    prepare_with(path, write)?.commit()
}

/// A file's new contents, written and fsynced under a temporary name beside it: nothing
/// reads them until [`Prepared::commit`] renames them over the file, and dropped
/// uncommitted they are removed. This lets a large file be written while something it
/// depends on (the kernel taking the same list) is still under way.
#[must_use = "dropped uncommitted, the new contents are removed"]
pub struct Prepared {
    temporary: PathBuf,
    path: PathBuf,
    committed: bool,
}

/// The first half of [`write_atomically_with`]: the contents written and fsynced under the
/// temporary name. If a step fails, the temporary file is removed.
pub fn prepare_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<Prepared> {
    /// Large enough that a file of hundreds of MB takes few write(2) calls.
    const WRITE_BUFFER_BYTES: usize = 1 << 20;
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let temporary = dir.join(format!(".{}.tmp", file_name.to_string_lossy()));
    // A leftover of a crash (or anything planted there) goes; unlinking never follows.
    match fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let prepared = Prepared {
        temporary,
        path: path.to_path_buf(),
        committed: false,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&prepared.temporary)?;
    let mut buffered = io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, &mut file);
    write(&mut buffered)?;
    buffered.flush()?;
    drop(buffered);
    file.sync_all()?;
    Ok(prepared)
}

impl Prepared {
    /// Puts the new contents in place: renamed over the file, then the directory
    /// fsynced. Renamed, the new contents are what everyone reads from now on, so this is
    /// a success even if making the rename itself durable fails (which is only logged).
    pub fn commit(mut self) -> io::Result<()> {
        fs::rename(&self.temporary, &self.path)?;
        self.committed = true;
        sync_directory_of(&self.path);
        Ok(())
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temporary);
        }
    }
}

/// Makes a change to `path`'s directory entry (a file created, renamed or removed)
/// durable. A failure is logged, not returned: the change itself is made.
pub fn sync_directory_of(path: &Path) {
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Err(error) = File::open(dir).and_then(|dir| dir.sync_all()) {
        tracing::warn!(%error, dir = %dir.display(), "could not fsync the directory; a crash now may undo its last change");
    }
}

/// Appends `line` to `path` (created 0600, never through a symlink) and makes it
/// durable. If the write or the fsync fails — a full disk, say — the file is cut back
/// to its length before, so it never ends in half a line that later appends would
/// follow.
pub fn append_durably(path: &Path, line: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(PRIVATE_FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|error| explain_symlink(path, error))?;
    let before = file.metadata()?.len();
    let appended = file.write_all(line).and_then(|()| file.sync_data());
    if appended.is_ok() && before == 0 {
        // The file may be new: its directory entry must be as durable as its line.
        sync_directory_of(path);
    }
    if let Err(error) = appended {
        let restored = file.set_len(before).and_then(|()| file.sync_data());
        if let Err(restore) = restored {
            return Err(io::Error::new(
                error.kind(),
                format!("{error}; cutting the file back to {before} bytes failed too: {restore}"),
            ));
        }
        return Err(error);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_whole_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomically(&path, b"old contents that are longer").unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(
            fs::metadata(&path).unwrap().mode() & 0o777,
            PRIVATE_FILE_MODE
        );
    }

    #[test]
    fn prepared_contents_are_read_only_once_committed_and_are_removed_if_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomically(&path, b"old").unwrap();

        let prepared = prepare_with(&path, |writer| writer.write_all(b"dropped")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"old");
        drop(prepared);
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        let prepared = prepare_with(&path, |writer| writer.write_all(b"new")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"old");
        prepared.commit().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_symlink_planted_as_the_temporary_file_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(".state.json.tmp")).unwrap();
        write_atomically(&dir.path().join("state.json"), b"new").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn appends_and_reads_never_go_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let journal = dir.path().join("journal.ndjson");
        std::os::unix::fs::symlink(&victim, &journal).unwrap();
        let error = append_durably(&journal, b"line\n").unwrap_err();
        assert!(error.to_string().contains("symlink"), "{error}");
        assert!(read_private(&journal).is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn a_directory_others_can_write_or_a_symlink_is_refused_and_a_new_one_is_private() {
        let base = tempfile::tempdir().unwrap();
        let state = base.path().join("state");
        prepare_private_dir("state_dir", &state).unwrap();
        assert_eq!(
            fs::metadata(&state).unwrap().mode() & 0o777,
            PRIVATE_DIR_MODE
        );

        fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
        let error = prepare_private_dir("state_dir", &state)
            .unwrap_err()
            .to_string();
        assert!(error.contains("writable by group or others"), "{error}");

        let link = base.path().join("link");
        std::os::unix::fs::symlink(&state, &link).unwrap();
        let error = check_directory("state_dir", &link).unwrap_err().to_string();
        assert!(error.contains("is a symlink"), "{error}");
    }

    #[test]
    fn a_symlink_on_the_way_is_only_as_safe_as_the_directory_holding_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!(
                "skipped: changing a directory's owner needs root (cargo xtask test runs as root)"
            );
            return;
        }
        use std::os::unix::fs::chown;
        let base = tempfile::tempdir().unwrap();
        let users = base.path().join("home-of-a-user");
        fs::create_dir(&users).unwrap();
        let target = base.path().join("root-only");
        fs::create_dir_all(target.join("state")).unwrap();
        std::os::unix::fs::symlink(&target, users.join("run")).unwrap();
        // Owned by someone else: they could point `run` anywhere after the check.
        chown(&users, Some(65534), Some(65534)).unwrap();
        let through_link = users.join("run").join("state");
        let error = check_directory("state_dir", &through_link)
            .unwrap_err()
            .to_string();
        assert!(error.contains("owned by uid 65534"), "{error}");
        check_directory("state_dir", &target.join("state")).unwrap();
        let error = check_creatable("state_dir", &users.join("run").join("new"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("owned by uid 65534"), "{error}");
    }

    #[test]
    fn a_directory_only_its_group_may_write_is_refused_unless_that_group_is_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!(
                "skipped: changing a directory's owner needs root (cargo xtask test runs as root)"
            );
            return;
        }
        use std::os::unix::fs::chown;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("state");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o770)).unwrap();
        chown(&dir, Some(0), Some(0)).unwrap();
        check_directory("state_dir", &dir).unwrap();
        chown(&dir, Some(0), Some(100)).unwrap();
        let error = check_directory("state_dir", &dir).unwrap_err().to_string();
        assert!(error.contains("writable by group or others"), "{error}");
    }

    #[test]
    fn an_older_open_state_dir_is_tightened() {
        let base = tempfile::tempdir().unwrap();
        let state = base.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        let file = state.join("state.json");
        fs::write(&file, b"{}").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(prepare_private_dir("state_dir", &state).unwrap());
        assert_eq!(fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
    }
}
