//! Which XDP mode each interface was attached in, in `state_dir/attachments.json`. The
//! kernel's link info does not say, so after a takeover `status` would otherwise have to
//! guess; the file is private and written atomically like the rest of the state.

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{durable, filter::AttachedMode};

const FILE: &str = "attachments.json";

#[derive(Default, Serialize, Deserialize)]
struct AttachmentRecord(BTreeMap<String, AttachedMode>);

/// What was recorded; nothing when the file is missing or unreadable, since the record
/// only ever refines what `status` shows.
pub fn load(state_dir: &Path) -> BTreeMap<String, AttachedMode> {
    durable::read_private(&state_dir.join(FILE))
        .ok()
        .flatten()
        .and_then(|bytes| serde_json::from_slice::<AttachmentRecord>(&bytes).ok())
        .map(|record| record.0)
        .unwrap_or_default()
}

/// Records `attached`. A failure is logged, not returned: the filter is attached either
/// way, and only `status` after a restart may suffer.
pub fn store(state_dir: &Path, attached: &BTreeMap<String, AttachedMode>) {
    let record = AttachmentRecord(attached.clone());
    let result = durable::write_atomically(
        &state_dir.join(FILE),
        &serde_json::to_vec_pretty(&record).unwrap_or_default(),
    );
    if let Err(error) = result {
        warn!(%error, dir = %state_dir.display(), "could not record attachment modes; status may show the wrong XDP mode after a restart");
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt as _};

    use super::*;

    #[test]
    fn the_recorded_modes_are_read_back_from_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).is_empty(), "nothing recorded yet");
        let attached = BTreeMap::from([
            ("eth0".to_string(), AttachedMode::Native),
            ("veth1".to_string(), AttachedMode::Generic),
        ]);
        store(dir.path(), &attached);
        assert_eq!(load(dir.path()), attached);
        let file = dir.path().join(FILE);
        assert_eq!(
            fs::read_to_string(&file).unwrap(),
            "{\n  \"eth0\": \"native\",\n  \"veth1\": \"generic\"\n}"
        );
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_record_that_cannot_be_read_counts_as_none() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE), "not json").unwrap();
        assert!(load(dir.path()).is_empty());
        fs::remove_file(dir.path().join(FILE)).unwrap();
        let elsewhere = dir.path().join("elsewhere.json");
        fs::write(&elsewhere, "{\"eth0\": \"generic\"}").unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join(FILE)).unwrap();
        assert!(load(dir.path()).is_empty(), "a symlink is never followed");
    }
}
