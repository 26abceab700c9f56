//! The list on disk: private to root, never written through a symlink, and never lost
//! or corrupted — not by a full disk, a crash mid-write, or a state directory someone
//! tampered with. When the files are not what the daemon left, it refuses to start and
//! says what it found and what to do, rather than start without the operator's list.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use allowlist_tests::{
    assert_exit_code, Client, ConfigBuilder, Daemon, DaemonFiles, Probe, Topology, Verdict,
};

const PROBE_PORT: u16 = 7107;

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .mode()
        & 0o7777
}

fn journal(daemon: &Daemon) -> PathBuf {
    daemon.files().state_dir.join("journal.ndjson")
}

#[test]
fn the_state_dir_is_private_and_one_others_could_write_or_a_symlink_is_refused() {
    let topology = Topology::new().unwrap();
    let files = DaemonFiles::new().unwrap();
    // An older version left it open to everyone's reading.
    fs::set_permissions(&files.state_dir, fs::Permissions::from_mode(0o755)).unwrap();
    let mut daemon = Daemon::start_with(
        topology.host(),
        &ConfigBuilder::allowed_client_v4(&topology),
        files,
        None,
    )
    .unwrap();
    daemon.ctl_ok(&["add", "192.0.2.1", "-d", "journaled"]);
    let state_dir = daemon.files().state_dir.clone();
    assert_eq!(mode_of(&state_dir), 0o700, "the state dir is not private");
    for file in ["state.json", "journal.ndjson", "attachments.json"] {
        assert_eq!(mode_of(&state_dir.join(file)), 0o600, "{file}");
    }

    daemon.terminate().unwrap();
    let refused = |daemon: &mut Daemon, what: &str, expected: &str| {
        let error = format!("{:#}", daemon.restart().unwrap_err());
        assert!(error.contains(expected), "{what}: {error}");
    };
    fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o777)).unwrap();
    refused(
        &mut daemon,
        "a world-writable state dir",
        "writable by group or others",
    );
    fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o700)).unwrap();

    // The socket's directory (the per-daemon temp dir) must be root's alone too.
    let socket_dir = daemon.files().dir().to_path_buf();
    let socket_dir_mode = mode_of(&socket_dir);
    fs::set_permissions(&socket_dir, fs::Permissions::from_mode(0o773)).unwrap();
    refused(
        &mut daemon,
        "a group-writable socket dir",
        "writable by group or others",
    );
    fs::set_permissions(&socket_dir, fs::Permissions::from_mode(socket_dir_mode)).unwrap();

    let real = socket_dir.join("real-state");
    fs::rename(&state_dir, &real).unwrap();
    std::os::unix::fs::symlink(&real, &state_dir).unwrap();
    refused(&mut daemon, "a symlinked state dir", "is a symlink");
    fs::remove_file(&state_dir).unwrap();
    fs::rename(&real, &state_dir).unwrap();

    daemon.restart().unwrap();
    assert_eq!(daemon.listed("192.0.2.1/32")[0].description, "journaled");
}

#[test]
fn symlinks_planted_in_the_state_dir_are_never_written_through() {
    let topology = Topology::new().unwrap();
    let mut daemon =
        Daemon::start(&topology, &ConfigBuilder::allowed_client_v4(&topology)).unwrap();
    let victim = daemon.files().dir().join("victim");
    fs::write(&victim, "precious\n").unwrap();
    let state_dir = daemon.files().state_dir.clone();

    // Where the state file is written whole before it is renamed into place.
    daemon.terminate().unwrap();
    std::os::unix::fs::symlink(&victim, state_dir.join(".state.json.tmp")).unwrap();
    std::os::unix::fs::symlink(&victim, state_dir.join(".attachments.json.tmp")).unwrap();
    daemon.restart().unwrap();
    // A mode change writes the state file whole, through the planted name.
    daemon.ctl_ok(&["monitor"]);
    daemon.ctl_ok(&["add", "192.0.2.1", "-d", "after the plant"]);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(
        !state_dir.join(".state.json.tmp").exists(),
        "the planted name is gone: it was replaced, then renamed into place"
    );
    assert_eq!(daemon.status()["mode"], "monitor");

    // Where single changes are appended.
    fs::remove_file(journal(&daemon)).ok();
    std::os::unix::fs::symlink(&victim, journal(&daemon)).unwrap();
    let list = daemon.list();
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["add", "192.0.2.2"]),
        1,
        "add with the journal replaced by a symlink",
    );
    assert!(stderr.contains("symlink"), "{stderr}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(
        daemon.list(),
        list,
        "a change that could not be saved was made"
    );
}

/// A small tmpfs mounted on a daemon's state dir, so that a test can fill it; unmounted
/// (lazily, the daemon may still hold it) on drop.
struct SmallDisk {
    mount_point: PathBuf,
    filler: PathBuf,
}

impl SmallDisk {
    fn mount(mount_point: &Path, size: &str) -> SmallDisk {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(mount_point)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs on {}",
            mount_point.display()
        );
        SmallDisk {
            mount_point: mount_point.to_path_buf(),
            filler: mount_point.join("filler"),
        }
    }

    /// Takes every free byte; returns how many that was.
    fn fill(&self) -> u64 {
        use std::io::Write;
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)
            .unwrap();
        let block = vec![0u8; 4096];
        let mut taken = 0;
        while let Ok(written) = file.write(&block) {
            if written == 0 {
                break;
            }
            taken += written as u64;
        }
        // A partial page may be left: take it byte by byte.
        while file.write(&[0]).is_ok_and(|written| written == 1) {
            taken += 1;
        }
        taken
    }

    fn free(&self) {
        fs::remove_file(&self.filler).ok();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}

#[test]
fn a_full_disk_refuses_changes_cleanly_and_never_loses_or_corrupts_acknowledged_ones() {
    let topology = Topology::new().unwrap();
    let files = DaemonFiles::new().unwrap();
    let disk = SmallDisk::mount(&files.state_dir, "256k");
    let mut daemon = Daemon::start_with(
        topology.host(),
        &ConfigBuilder::allowed_client_v4(&topology),
        files,
        None,
    )
    .unwrap();
    let probe = Probe::start(&topology, PROBE_PORT).unwrap();
    // Journal lines longer than a page (4,000 bytes of description and the rest), so
    // that no append fits in the slack of the journal's last page.
    let long = "x".repeat(4000);
    for i in 1..=20 {
        daemon.ctl_ok(&["add", &format!("192.0.2.{i}"), "-d", &long]);
    }
    let acknowledged = daemon.list();

    disk.fill();
    // Appending to the journal: the line does not fit.
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["add", "10.10.2.2", "-d", &long]),
        1,
        "add on a full disk",
    );
    assert!(stderr.contains("No space left"), "{stderr}");
    let text = fs::read(journal(&daemon)).unwrap();
    assert!(
        text.ends_with(b"\n"),
        "the journal ends in a torn line after a failed append"
    );
    assert_eq!(daemon.list(), acknowledged);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);

    // Writing the state file whole: refused, and no temporary file is left behind.
    let csv = daemon.files().dir().join("list.csv");
    fs::write(&csv, "ip_address,description\n198.51.100.1,new\n").unwrap();
    let (_, stderr) = assert_exit_code(
        &daemon.ctl(&["import", csv.to_str().unwrap(), "--replace"]),
        1,
        "import --replace on a full disk",
    );
    assert!(stderr.contains("No space left"), "{stderr}");
    let leftovers: Vec<String> = fs::read_dir(&daemon.files().state_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    assert_eq!(daemon.list(), acknowledged);

    // Room again: changes work, and every acknowledged one survives a crash.
    disk.free();
    daemon.ctl_ok(&["add", "192.0.2.100", "-d", "after the disk was full"]);
    let acknowledged = daemon.list();
    daemon.kill9();
    daemon.restart().unwrap();
    assert_eq!(daemon.list(), acknowledged);

    // Starting with less room than a second copy of the state needs: it comes up with
    // the same list, and says it could not fold the journal in.
    daemon.ctl_ok(&["add", "192.0.2.101", "-d", &long]);
    let acknowledged = daemon.list();
    daemon.kill9();
    disk.fill();
    daemon.restart().unwrap();
    assert_eq!(daemon.list(), acknowledged);
    assert!(
        daemon.log().contains("could not rewrite the state file"),
        "{}",
        daemon.log()
    );
    assert_eq!(probe.verdict(Client::Allowed, false), Verdict::Pass);
    assert_eq!(probe.verdict(Client::Blocked, false), Verdict::Drop);
    drop(daemon);
}

#[test]
fn a_journal_without_its_state_file_stops_the_start_and_says_what_to_do() {
    let topology = Topology::new().unwrap();
    let mut daemon =
        Daemon::start(&topology, &ConfigBuilder::allowed_client_v4(&topology)).unwrap();
    daemon.ctl_ok(&["add", "192.0.2.1", "-d", "journaled, acknowledged"]);
    daemon.terminate().unwrap();
    let state = daemon.files().state_dir.join("state.json");
    let moved = daemon.files().dir().join("state.json.moved");
    fs::rename(&state, &moved).unwrap();

    let error = format!("{:#}", daemon.restart().unwrap_err());
    assert!(
        error.contains("journal.ndjson") && error.contains("no state.json"),
        "{error}"
    );
    assert!(error.contains("put it back"), "{error}");
    assert!(journal(&daemon).exists(), "the journal was thrown away");

    fs::rename(&moved, &state).unwrap();
    daemon.restart().unwrap();
    assert_eq!(
        daemon.listed("192.0.2.1/32")[0].description,
        "journaled, acknowledged"
    );
}

#[test]
fn a_journal_line_torn_by_a_crash_is_left_out_with_a_word_in_the_log() {
    use std::io::Write;
    let topology = Topology::new().unwrap();
    let mut daemon =
        Daemon::start(&topology, &ConfigBuilder::allowed_client_v4(&topology)).unwrap();
    daemon.ctl_ok(&["add", "192.0.2.1", "-d", "complete"]);
    daemon.kill9();
    fs::OpenOptions::new()
        .append(true)
        .open(journal(&daemon))
        .unwrap()
        .write_all(br#"{"add":{"network":"192.0.2.2/32","descr"#)
        .unwrap();

    daemon.restart().unwrap();
    assert!(
        daemon.log().contains("partial line"),
        "the torn line was dropped without a word:\n{}",
        daemon.log()
    );
    assert_eq!(daemon.listed("192.0.2.1/32").len(), 1);
    assert!(daemon.listed("192.0.2.2/32").is_empty());

    // Later changes start on a line of their own and survive the next start.
    daemon.ctl_ok(&["add", "192.0.2.3", "-d", "after"]);
    daemon.kill9();
    daemon.restart().unwrap();
    assert_eq!(daemon.listed("192.0.2.3/32").len(), 1);
}
