//! `[fleet]` in the config file: where etcd is, how to reach it, the key prefix, this
//! host's name and the sets it follows. Validated with the rest of the config, so a bad
//! section is refused with its line before anything changes. `allowlistctl fleet` reads
//! only this section ([`FleetConfig::load`]), so it works from any machine with the file.

use std::{fs, path::Path, path::PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::allowlist::SetName;

/// Key prefix when `prefix` is not given.
pub const DEFAULT_PREFIX: &str = "/allowlist";
/// Most etcd endpoints.
pub const MAX_ENDPOINTS: usize = 16;
/// Most sets one host follows.
pub const MAX_SETS: usize = 64;
/// Longest prefix, in bytes.
pub const MAX_PREFIX_BYTES: usize = 256;
/// Longest host name, in bytes (a DNS name's bound).
pub const MAX_HOST_BYTES: usize = 253;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    endpoints: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    prefix: Option<Spanned<String>>,
    #[serde(default)]
    host: Option<Spanned<String>>,
    #[serde(default)]
    sets: Vec<Spanned<String>>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    /// Only to refuse it with a useful message: secrets are not kept in the config.
    #[serde(default)]
    password: Option<Spanned<toml::Value>>,
}

/// A validated `[fleet]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetConfig {
    /// `http://` or `https://` URLs of etcd's client port; tried in order.
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// This host's name under `P/hosts/`.
    pub host: String,
    /// The fleet sets this host enforces.
    pub sets: Vec<SetName>,
    /// PEM roots that sign etcd's certificate (instead of Mozilla's).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for etcd's `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// etcd user (`etcdctl user add`); its password is in `password_file`.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Line of `[fleet]`'s `endpoints` in the config file.
    pub line: usize,
}

type Invalid = (std::ops::Range<usize>, String);

impl FleetConfig {
    pub(crate) fn validate(
        raw: RawFleet,
        line_of: impl Fn(usize) -> usize,
    ) -> Result<FleetConfig, Invalid> {
        let span = raw.endpoints.span();
        if let Some(password) = raw.password {
            return Err((
                password.span(),
                "secrets are not kept in the config: put etcd's password in a file only root can read (chmod 600) and name it with password_file".into(),
            ));
        }
        let endpoints: Vec<Spanned<String>> = raw.endpoints.into_inner();
        if endpoints.is_empty() || endpoints.len() > MAX_ENDPOINTS {
            return Err((
                span,
                format!("[fleet] endpoints: give 1 to {MAX_ENDPOINTS} etcd client URLs, e.g. [\"https://etcd1.example.com:2379\"]"),
            ));
        }
        let mut urls = Vec::new();
        for endpoint in endpoints {
            let url = endpoint.get_ref().trim_end_matches('/').to_string();
            let lower = url.to_ascii_lowercase();
            let host_part = lower
                .strip_prefix("https://")
                .or_else(|| lower.strip_prefix("http://"));
            if host_part.is_none_or(|rest| rest.is_empty() || rest.contains('/')) {
                return Err((
                    endpoint.span(),
                    format!("endpoint {url:?}: give etcd's client URL, e.g. \"https://10.0.0.5:2379\" (no path)"),
                ));
            }
            urls.push(url);
        }
        let prefix = match raw.prefix {
            None => DEFAULT_PREFIX.to_string(),
            Some(prefix) => {
                let text = prefix.get_ref().trim_end_matches('/').to_string();
                if !text.starts_with('/')
                    || text.len() > MAX_PREFIX_BYTES
                    || text.chars().any(|c| c.is_control() || c.is_whitespace())
                {
                    return Err((
                        prefix.span(),
                        format!("prefix {:?}: give a key prefix starting with /, without spaces, at most {MAX_PREFIX_BYTES} bytes, e.g. \"/allowlist\"", prefix.get_ref()),
                    ));
                }
                text
            }
        };
        let host = match raw.host {
            Some(host) => {
                check_host(host.get_ref()).map_err(|message| (host.span(), message))?;
                host.into_inner()
            }
            None => {
                let name = fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|name| name.trim().to_string())
                    .unwrap_or_default();
                check_host(&name).map_err(|message| {
                    (
                        span.clone(),
                        format!("this host's name cannot name it in the fleet ({message}); set host = \"NAME\" in [fleet]"),
                    )
                })?;
                name
            }
        };
        if raw.sets.len() > MAX_SETS {
            return Err((
                span,
                format!("[fleet] sets: {} sets; at most {MAX_SETS}", raw.sets.len()),
            ));
        }
        let mut sets: Vec<SetName> = Vec::new();
        for set in raw.sets {
            let name = SetName::new(set.get_ref()).map_err(|message| (set.span(), message))?;
            if name.is_config_file() || name == SetName::default() {
                return Err((
                    set.span(),
                    format!("set {name} is the config file's or the CLI's own; a fleet set needs another name (e.g. \"fleet-{name}\")"),
                ));
            }
            if sets.contains(&name) {
                return Err((set.span(), format!("set {name} is listed twice")));
            }
            sets.push(name);
        }
        if raw.cert_file.is_some() != raw.key_file.is_some() {
            return Err((
                span,
                "[fleet]: give both cert_file and key_file (a client certificate and its key), or neither".into(),
            ));
        }
        if raw.username.is_some() != raw.password_file.is_some() {
            return Err((
                span,
                "[fleet]: give both username and password_file, or neither".into(),
            ));
        }
        Ok(FleetConfig {
            endpoints: urls,
            prefix,
            host,
            sets,
            ca_file: raw.ca_file,
            cert_file: raw.cert_file,
            key_file: raw.key_file,
            username: raw.username,
            password_file: raw.password_file,
            line: line_of(span.start),
        })
    }

    /// Only the `[fleet]` section of the config at `path` (for `allowlistctl fleet`,
    /// which needs nothing else of it).
    pub fn load(path: &Path) -> Result<FleetConfig, String> {
        #[derive(Deserialize)]
        struct OnlyFleet {
            fleet: Option<RawFleet>,
        }
        let shown = path.display();
        let text = fs::read_to_string(path)
            .map_err(|error| format!("{shown}: cannot read the config file: {error}"))?;
        let lines: Vec<usize> = text
            .char_indices()
            .filter(|(_, c)| *c == '\n')
            .map(|(at, _)| at)
            .collect();
        let line_of = |offset: usize| lines.partition_point(|&at| at < offset) + 1;
        // Unknown top-level keys are the daemon's business, so they are ignored here.
        let only: OnlyFleet = toml::from_str(&text).map_err(|error| format!("{shown}: {error}"))?;
        let raw = only.fleet.ok_or_else(|| {
            format!("{shown} has no [fleet] section; add one (endpoints = [\"http://127.0.0.1:2379\"]) or name another file with --config")
        })?;
        FleetConfig::validate(raw, line_of)
            .map_err(|(span, message)| format!("{shown}:{}: {message}", line_of(span.start)))
    }
}

/// A host name as it appears in a key: letters, digits, `.`, `-`, `_`.
pub fn check_host(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_HOST_BYTES
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(format!(
            "host {name:?}: give letters, digits, '.', '-' or '_', at most {MAX_HOST_BYTES} bytes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{
        allowlist::{Allowlist, SetName},
        config::{Config, ConfigError},
        feeds::FeedSource,
    };

    const HEAD: &str = "interfaces = [\"lo\"]\n";

    fn parse(fleet: &str) -> Result<Config, ConfigError> {
        Config::parse(
            Path::new("/etc/allowlist/allowlist.toml"),
            &format!("{HEAD}{fleet}"),
        )
    }

    fn refused(fleet: &str, needle: &str) {
        match parse(fleet) {
            Ok(_) => panic!("accepted:\n{fleet}"),
            Err(error) => {
                let text = error.to_string();
                assert!(text.contains(needle), "{text} (wanted {needle:?})");
            }
        }
    }

    #[test]
    fn a_fleet_set_is_a_read_only_set_whose_source_is_etcd() {
        let config = parse(
            "[fleet]\nendpoints = [\"http://127.0.0.1:2379/\"]\nhost = \"web-1\"\nsets = [\"office\"]\n",
        )
        .unwrap();
        let fleet = config.fleet.clone().unwrap();
        assert_eq!(fleet.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(fleet.prefix, super::DEFAULT_PREFIX);
        assert_eq!(fleet.line, 3);
        let [feed] = config.feeds.as_slice() else {
            panic!("{:?}", config.feeds)
        };
        assert_eq!(feed.source, FeedSource::Fleet);
        assert_eq!(feed.label(), "fleet office");
        let mut allowlist = Allowlist::default();
        allowlist.set_config(&config);
        let error = allowlist
            .check_writable_set(&SetName::new("office").unwrap())
            .unwrap_err();
        assert!(error.to_string().contains("allowlistctl fleet"), "{error}");
    }

    #[test]
    fn a_bad_fleet_section_is_refused_with_its_line() {
        refused("[fleet]\nendpoints = []\n", "give 1 to 16");
        refused("[fleet]\nendpoints = [\"127.0.0.1:2379\"]\n", "client URL");
        refused("[fleet]\nendpoints = [\"http://e:2379/v3\"]\n", "no path");
        refused(
            "[fleet]\nendpoints = [\"http://e:2379\"]\npassword = \"x\"\n",
            "password_file",
        );
        refused(
            "[fleet]\nendpoints = [\"http://e:2379\"]\nprefix = \"no-slash\"\n",
            "starting with /",
        );
        refused(
            "[fleet]\nendpoints = [\"http://e:2379\"]\nhost = \"a b\"\n",
            "host \"a b\"",
        );
        refused(
            "[fleet]\nendpoints = [\"http://e:2379\"]\nsets = [\"a\", \"a\"]\n",
            "listed twice",
        );
        refused(
            "[fleet]\nendpoints = [\"http://e:2379\"]\nsets = [\"config\"]\n",
            "config file's or the CLI's own",
        );
        refused(
            "[fleet]\nendpoints = [\"http://e:2379\"]\nsets = [\"default\"]\n",
            "fleet-default",
        );
        refused(
            "[fleet]\nendpoints = [\"http://e:2379\"]\ncert_file = \"/c\"\n",
            "both cert_file and key_file",
        );
        refused(
            "[[feed]]\nname = \"office\"\npreset = \"elastic.io-eu\"\n[fleet]\nendpoints = [\"http://e:2379\"]\nsets = [\"office\"]\n",
            "a set has one source",
        );
        refused(
            "[fleet]\nendpoints = [\"http://e:2379\"]\nsetz = []\n",
            "unknown field",
        );
    }
}
