//! Named sets: every entry belongs to one. The operator's own sets (`default`, and any
//! other named with `--set`) are changed with allowlistctl; the config file's `[[allow]]`
//! (`config`) and `[[always]]` (`always`) entries, each feed and each DNS name are sets
//! of their own that only the config file (or the feed, or the name's records) change.
//! A source several sets list gets what any of them allows: the compile step folds them.

use std::{fmt, sync::Arc, sync::OnceLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The set entries go to when none is named, and the one older state files (written
/// before sets existed) load into.
pub const DEFAULT_SET: &str = "default";
/// The config file's `[[allow]]` entries.
pub const CONFIG_SET: &str = "config";
/// The config file's `[[always]]` entries.
pub const ALWAYS_SET: &str = "always";
/// Longest set (and feed) name, in bytes.
pub const MAX_SET_NAME_BYTES: usize = 64;

/// A set's name: 1 to [`MAX_SET_NAME_BYTES`] of lower-case ASCII letters, digits, `.`,
/// `_` and `-`, starting with a letter or digit, so that it is safe in file names, logs
/// and shells. Cheap to clone: a million entries of one set share its name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetName(pub(super) Arc<str>);

impl SetName {
    pub fn new(name: &str) -> Result<SetName, String> {
        check_set_name(name)?;
        Ok(match name {
            DEFAULT_SET => SetName::default(),
            _ => SetName(Arc::from(name)),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `config` and `always`: the config file's own sets.
    pub fn is_config_file(&self) -> bool {
        matches!(self.as_str(), CONFIG_SET | ALWAYS_SET)
    }

    pub(crate) fn config() -> SetName {
        SetName(Arc::from(CONFIG_SET))
    }

    pub(crate) fn always() -> SetName {
        SetName(Arc::from(ALWAYS_SET))
    }
}

impl Default for SetName {
    fn default() -> Self {
        static DEFAULT: OnceLock<SetName> = OnceLock::new();
        DEFAULT
            .get_or_init(|| SetName(Arc::from(DEFAULT_SET)))
            .clone()
    }
}

impl fmt::Display for SetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl std::str::FromStr for SetName {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        SetName::new(name)
    }
}

impl Serialize for SetName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SetName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        SetName::new(&name).map_err(serde::de::Error::custom)
    }
}

/// Refuses a name that is not a valid set (or feed) name, saying what one looks like.
pub fn check_set_name(name: &str) -> Result<(), String> {
    let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
    let starts_well = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.len() > MAX_SET_NAME_BYTES || !starts_well || !name.chars().all(valid_char) {
        return Err(format!(
            "invalid set name {name:?}: use 1 to {MAX_SET_NAME_BYTES} lower-case letters, digits, '.', '_' or '-', starting with a letter or digit (e.g. office-vpn)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_the_default_set_is_shared() {
        for good in ["default", "office-vpn", "aws.eu_1", "0"] {
            assert!(SetName::new(good).is_ok(), "{good}");
        }
        for bad in ["", "Office", "-x", "a b", "a/b", &"x".repeat(65)] {
            assert!(SetName::new(bad).is_err(), "{bad:?}");
        }
        assert!(Arc::ptr_eq(
            &SetName::default().0,
            &SetName::new("default").unwrap().0
        ));
        let parsed: SetName = serde_json::from_str("\"office\"").unwrap();
        assert_eq!(parsed.as_str(), "office");
        assert!(serde_json::from_str::<SetName>("\"../etc\"").is_err());
    }
}
