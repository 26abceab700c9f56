//! The properties the libFuzzer targets check, each against a model written here from
//! README.md rather than from the code under test.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use allowlist_userspace::{
    allowlist::{self, Allowlist},
    compile::Reach,
    config::{Config, Mode},
    csv_format,
    ports::{self, PortSpec},
    startup::StartPlan,
};
use ipnet::IpNet;

/// A directory of this process's own for the state a start plan reads (none: a first
/// start), so that no fuzz input reaches the host's files.
fn scratch() -> &'static Path {
    static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("allowlist-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    })
}

/// What the README says a list allows `address`: nothing if no entry covers it, all
/// ports if one covering entry allows all, else the union of their ports.
fn model_reach(entries: &[(IpNet, &[PortSpec])], address: IpAddr) -> Option<Reach> {
    let covering: Vec<&[PortSpec]> = entries
        .iter()
        .filter(|(network, _)| network.contains(&address))
        .map(|(_, ports)| *ports)
        .collect();
    if covering.is_empty() {
        return None;
    }
    if covering.iter().any(|ports| ports.is_empty()) {
        return Some(Reach::All);
    }
    Some(Reach::Ports(ports::union(covering.concat())))
}

/// Addresses where an entry's verdict can change: its first and last address and the
/// ones just outside.
fn samples(network: IpNet) -> Vec<IpAddr> {
    match network {
        IpNet::V4(net) => {
            let (first, last) = (u32::from(net.network()), u32::from(net.broadcast()));
            [
                Some(first),
                Some(last),
                first.checked_sub(1),
                last.checked_add(1),
            ]
            .into_iter()
            .flatten()
            .map(|address| IpAddr::V4(Ipv4Addr::from(address)))
            .collect()
        }
        IpNet::V6(net) => {
            let (first, last) = (u128::from(net.network()), u128::from(net.broadcast()));
            [
                Some(first),
                Some(last),
                first.checked_sub(1),
                last.checked_add(1),
            ]
            .into_iter()
            .flatten()
            .map(|address| IpAddr::V6(Ipv6Addr::from(address)))
            .collect()
        }
    }
}

/// A config file: parsing never panics; a start plan is made exactly when the README
/// says the daemon starts (enforcing needs an `[[allow]]` entry or a preset feed; no source may need
/// more than 16 port ranges); its compiled list gives every address what the entries
/// covering it allow; and the config written back out reads the same.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(Path::new("fuzz.toml"), text) else {
        return;
    };
    let config = Config {
        state_dir: scratch().join("state"),
        socket: scratch().join("run/control.sock"),
        ..config
    };
    let entries: Vec<(IpNet, &[PortSpec])> = config
        .allow
        .iter()
        .chain(&config.always)
        .map(|entry| (entry.network, entry.ports.as_slice()))
        .collect();
    let addresses: Vec<IpAddr> = entries
        .iter()
        .flat_map(|(network, _)| samples(*network))
        .collect();
    let too_many_ranges = addresses.iter().any(|address| {
        matches!(model_reach(&entries, *address), Some(Reach::Ports(ranges)) if ranges.len() > 16)
    });
    // README, `mode`: enforcing an empty list is refused. A preset feed's documented
    // static list is not empty; a fetched feed, a DNS name and a fleet set hold nothing
    // before their first answer.
    let preset = config.feeds.iter().any(|feed| {
        matches!(
            feed.source,
            allowlist_userspace::feeds::FeedSource::Preset(_)
        )
    });
    let empty_enforce = config.mode == Mode::Enforce && config.allow.is_empty() && !preset;
    let model_accepts = !too_many_ranges && !empty_enforce;

    let plan = StartPlan::new(config.clone());
    match (&plan, model_accepts) {
        (Ok(plan), true) => {
            for address in &addresses {
                assert_eq!(
                    plan.compiled.access_of(*address),
                    model_reach(&entries, *address).as_ref(),
                    "{address}: the compiled list disagrees with the entries covering it\n{text}"
                );
            }
        }
        (Err(_), false) => {}
        (Ok(_), false) => panic!("a start plan for a config the daemon must refuse:\n{text}"),
        (Err(error), true) => panic!("a good config refused ({error}):\n{text}"),
    }

    let again = Config::parse(Path::new("fuzz.toml"), &render(&config))
        .unwrap_or_else(|error| panic!("the config written back does not read ({error}):\n{text}"));
    let fields = |config: &Config| {
        let entries = |list: &[allowlist_userspace::config::AllowEntry]| -> Vec<(IpNet, String, Vec<PortSpec>)> {
            list.iter()
                .map(|entry| (entry.network, entry.description.clone(), entry.ports.clone()))
                .collect()
        };
        (
            config.mode,
            config.public_ports.clone(),
            entries(&config.allow),
            entries(&config.always),
        )
    };
    assert_eq!(fields(&again), fields(&config), "round trip of:\n{text}");
    if let Some(fleet) = &config.fleet {
        check_fleet(&config, fleet, text);
    }
    // The line a section starts at is where it was written, not what it says.
    let fleet = |config: &Config| {
        config
            .fleet
            .clone()
            .map(|fleet| allowlist_userspace::fleet::FleetConfig { line: 0, ..fleet })
    };
    assert_eq!(
        fleet(&again),
        fleet(&config),
        "round trip of [fleet] in:\n{text}"
    );
}

/// An accepted `[fleet]` is within the README's bounds ("Fleet", "Bounds"): 1–16
/// `http://` or `https://` endpoints without a path; a prefix starting with `/`, at most
/// 256 bytes, without spaces; a host name of 1–253 bytes of letters, digits, `.`, `-`,
/// `_`; at most 64 followed sets, each a read-only set of the config whose name no feed
/// or DNS name of the same config has; client certificate and key, and user and password
/// file, given together or not at all.
fn check_fleet(config: &Config, fleet: &allowlist_userspace::fleet::FleetConfig, text: &str) {
    use allowlist_userspace::feeds::FeedSource;
    assert!(
        (1..=16).contains(&fleet.endpoints.len()),
        "{} endpoints accepted:\n{text}",
        fleet.endpoints.len()
    );
    for endpoint in &fleet.endpoints {
        let lower = endpoint.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("https://")
            .or_else(|| lower.strip_prefix("http://"));
        assert!(
            rest.is_some_and(|rest| !rest.is_empty() && !rest.contains('/')),
            "endpoint {endpoint:?} accepted:\n{text}"
        );
    }
    let prefix = &fleet.prefix;
    assert!(
        prefix.starts_with('/')
            && prefix.len() <= 256
            && !prefix.chars().any(|c| c.is_whitespace() || c.is_control()),
        "prefix {prefix:?} accepted:\n{text}"
    );
    let host = &fleet.host;
    assert!(
        (1..=253).contains(&host.len())
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')),
        "host {host:?} accepted:\n{text}"
    );
    assert!(fleet.sets.len() <= 64, "{} sets accepted", fleet.sets.len());
    for set in &fleet.sets {
        let named: Vec<&FeedSource> = config
            .feeds
            .iter()
            .filter(|feed| feed.name == *set)
            .map(|feed| &feed.source)
            .collect();
        assert!(
            matches!(named.as_slice(), [FeedSource::Fleet]),
            "fleet set {set}: the config's sets of that name are {} (one, the fleet's, expected):\n{text}",
            named.len()
        );
    }
    assert_eq!(
        fleet.cert_file.is_some(),
        fleet.key_file.is_some(),
        "a client certificate without its key, or the reverse, accepted:\n{text}"
    );
    assert_eq!(
        fleet.username.is_some(),
        fleet.password_file.is_some(),
        "a user without a password file, or the reverse, accepted:\n{text}"
    );
}

/// `config` written as TOML again (the keys a round trip compares).
fn render(config: &Config) -> String {
    let string = |text: &str| toml::Value::String(text.to_string()).to_string();
    let list = |ports: &[PortSpec]| {
        let items: Vec<String> = ports.iter().map(|port| string(&port.to_string())).collect();
        format!("[{}]", items.join(", "))
    };
    let interfaces: Vec<String> = config.interfaces.iter().map(|name| string(name)).collect();
    let mut text = format!(
        "interfaces = [{}]\nmode = {}\npublic_ports = {}\n",
        interfaces.join(", "),
        string(config.mode.as_str()),
        list(&config.public_ports)
    );
    if let Some(fleet) = &config.fleet {
        let strings = |items: Vec<String>| {
            let items: Vec<String> = items.iter().map(|item| string(item)).collect();
            format!("[{}]", items.join(", "))
        };
        text.push_str(&format!(
            "[fleet]\nendpoints = {}\nprefix = {}\nhost = {}\nsets = {}\n",
            strings(fleet.endpoints.clone()),
            string(&fleet.prefix),
            string(&fleet.host),
            strings(fleet.sets.iter().map(ToString::to_string).collect())
        ));
        for (key, path) in [
            ("ca_file", &fleet.ca_file),
            ("cert_file", &fleet.cert_file),
            ("key_file", &fleet.key_file),
            ("password_file", &fleet.password_file),
        ] {
            if let Some(path) = path {
                text.push_str(&format!("{key} = {}\n", string(&path.to_string_lossy())));
            }
        }
        if let Some(username) = &fleet.username {
            text.push_str(&format!("username = {}\n", string(username)));
        }
    }
    for (table, entries) in [("allow", &config.allow), ("always", &config.always)] {
        for entry in entries {
            text.push_str(&format!(
                "[[{table}]]\ncidr = {}\ndescription = {}\nports = {}\n",
                string(&entry.network.to_string()),
                string(&entry.description),
                list(&entry.ports)
            ));
        }
    }
    text
}

/// The time the CSV target judges expiry times against.
const NOW: u64 = 1_800_000_000;

/// A CSV import: reading never panics; what is read, the daemon accepts (given
/// `--force`); and importing it, exporting and importing again gives the same list.
pub fn csv(data: &[u8]) {
    let Ok(read) = csv_format::read_rows(data, NOW) else {
        return;
    };
    if let Err(problems) = allowlist::check_import_rows(&read.rows, NOW, true) {
        panic!("rows the client read, the daemon refuses: {problems:?}");
    }
    let config = Config::parse(
        Path::new("fuzz.toml"),
        "interfaces = [\"lo\"]\nmode = \"off\"\n",
    )
    .expect("the base config");
    let mut first = Allowlist::new(&config, Vec::new(), &Default::default());
    first
        .import(&read.rows, &Default::default(), false)
        .expect("the default set is writable");
    let mut exported = Vec::new();
    csv_format::write_rows(&mut exported, first.managed()).expect("writing to memory");
    let again = csv_format::read_rows(exported.as_slice(), NOW).unwrap_or_else(|bad| {
        panic!(
            "the export does not import: {bad:?}\n{}",
            String::from_utf8_lossy(&exported)
        )
    });
    let mut second = Allowlist::new(&config, Vec::new(), &Default::default());
    second
        .import(&again.rows, &Default::default(), false)
        .expect("the default set is writable");
    let fields = |list: &Allowlist| -> Vec<(IpNet, String, Vec<PortSpec>, Option<u64>)> {
        list.managed()
            .map(|entry| {
                (
                    entry.network,
                    entry.description.clone(),
                    entry.ports.clone(),
                    entry.expires_at,
                )
            })
            .collect()
    };
    assert_eq!(
        fields(&second),
        fields(&first),
        "import → export → import changed the list; export:\n{}",
        String::from_utf8_lossy(&exported)
    );
}

/// A feed body: the first byte picks the format, the rest is the body. Parsing never
/// panics; what it takes is sorted without duplicates, each network as the filter judges
/// it (host bits cleared, IPv4-mapped as IPv4), none allowing every source, and no more
/// than the bound (README, "Feeds").
pub fn feeds(data: &[u8]) {
    use allowlist_userspace::feeds::{self, Filters, Format, MAX_FEED_ENTRIES};
    const FORMATS: [Format; 10] = [
        Format::Harness,
        Format::Text,
        Format::Csv,
        Format::Json,
        Format::Aws,
        Format::Gcp,
        Format::Github,
        Format::Cloudflare,
        Format::Atlassian,
        Format::Fastly,
    ];
    let Some((first, body)) = data.split_first() else {
        return;
    };
    let format = FORMATS[usize::from(*first) % FORMATS.len()];
    let filters = Filters {
        path: Some("$..*".into()),
        services: if first & 0x80 != 0 {
            vec!["EC2".into(), "jira".into()]
        } else {
            Vec::new()
        },
        regions: if first & 0x40 != 0 {
            vec!["eu-west-1".into()]
        } else {
            Vec::new()
        },
        keys: vec!["hooks".into(), "web".into()],
    };
    let Ok(networks) = feeds::parse(format, body, &filters) else {
        return;
    };
    assert!(
        networks.len() <= MAX_FEED_ENTRIES,
        "{} networks",
        networks.len()
    );
    assert!(
        networks.windows(2).all(|pair| pair[0] < pair[1]),
        "not sorted or duplicated"
    );
    for network in &networks {
        assert_eq!(*network, allowlist_userspace::config::normalize(*network));
        assert!(
            !allowlist_userspace::config::allows_everyone(*network),
            "{network}"
        );
    }
}
