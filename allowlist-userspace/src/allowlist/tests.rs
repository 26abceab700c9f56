//! Unit tests of the allowlist's rules: who owns an entry, sets, imports, expiry and the
//! deciding entry.

use std::path::Path;

use super::*;

fn config(text: &str) -> Config {
    Config::parse(Path::new("t.toml"), text).unwrap()
}

fn d() -> SetName {
    SetName::default()
}

fn set(name: &str) -> SetName {
    SetName::new(name).unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn row(line: u64, network: &str, description: &str) -> ImportRow {
    ImportRow {
        line,
        network: crate::config::parse_network(network).unwrap(),
        description: description.into(),
        scope: None,
    }
}

fn described(description: &str) -> EntryUpdate {
    EntryUpdate {
        description: Some(description.into()),
        ..EntryUpdate::default()
    }
}

fn expiring(at: Option<u64>) -> EntryUpdate {
    EntryUpdate {
        expires_at: Some(at),
        ..EntryUpdate::default()
    }
}

const CONFIG: &str = r#"
interfaces = ["lo"]
mode = "monitor"
[[allow]]
cidr = "192.0.2.0/24"
description = "from config"
[[always]]
cidr = "169.254.169.254"
description = "metadata"
"#;

#[test]
fn re_adding_changes_what_is_given_and_keeps_the_rest() {
    let mut list = Allowlist::new(&config(CONFIG), vec![], &BTreeMap::new());
    let ssh = crate::ports::parse_list("22/tcp").unwrap();
    let first = EntryUpdate {
        description: Some("office".into()),
        expires_at: Some(Some(u64::MAX - 1)),
        ports: Some(ssh.clone()),
    };
    assert!(list.add(net("203.0.113.0/24"), &d(), first).unwrap());
    assert!(!list
        .add(net("203.0.113.9/24"), &d(), described("new office"))
        .unwrap());
    let entry = list.managed().next().unwrap().clone();
    assert_eq!(
        (entry.description.as_str(), entry.expires_at, &entry.ports),
        ("new office", Some(u64::MAX - 1), &ssh),
        "only the description was given"
    );
    assert!(!list
        .add(net("203.0.113.0/24"), &d(), EntryUpdate::default())
        .unwrap());
    assert_eq!(list.managed().next().unwrap().description, "new office");
    list.add(net("203.0.113.0/24"), &d(), described(""))
        .unwrap();
    assert_eq!(
        list.managed().next().unwrap().description,
        "",
        "-d \"\" clears"
    );
}

#[test]
fn config_owned_entries_cannot_be_changed_from_the_cli() {
    let mut list = Allowlist::new(&config(CONFIG), vec![], &BTreeMap::new());
    assert!(matches!(
        list.remove(net("169.254.169.254/32"), &d()),
        Err(ListError::OwnedByConfig {
            origin: Origin::Always,
            ..
        })
    ));
    assert!(matches!(
        list.remove(net("192.0.2.0/24"), &d()),
        Err(ListError::OwnedByConfig {
            origin: Origin::Config,
            ..
        })
    ));
    assert!(matches!(
        list.add(net("192.0.2.0/24"), &d(), EntryUpdate::default()),
        Err(ListError::OwnedByConfig { .. })
    ));
    assert_eq!(
        list.remove(net("198.51.100.1/32"), &d()),
        Err(ListError::NotListed(net("198.51.100.1/32")))
    );
}

#[test]
fn always_entries_do_not_make_the_list_non_empty() {
    let only_always =
        config("interfaces = [\"lo\"]\nmode = \"off\"\n[[always]]\ncidr = \"10.0.0.1\"\n");
    let mut list = Allowlist::new(&only_always, vec![], &BTreeMap::new());
    assert!(!list.has_operator_entries());
    list.add(net("10.9.9.9/32"), &d(), EntryUpdate::default())
        .unwrap();
    assert!(list.has_operator_entries());
    assert_eq!(list.compile().unwrap().v4.len(), 2);
}

#[test]
fn import_adds_updates_and_replace_removes_the_rest() {
    let mut list = Allowlist::new(&config(CONFIG), vec![], &BTreeMap::new());
    list.add(net("10.0.0.1/32"), &d(), described("keep"))
        .unwrap();
    list.add(net("10.0.0.2/32"), &d(), described("old"))
        .unwrap();
    list.add(net("10.0.0.3/32"), &d(), EntryUpdate::default())
        .unwrap();
    let rows = [
        row(2, "10.0.0.1", "keep"),
        row(3, "10.0.0.2", "first"),
        row(4, "10.0.0.2", "last wins"),
        row(5, "2001:db8::/48", "v6"),
        row(6, "192.0.2.0/24", "config owns this"),
    ];
    let plan = list.plan_import(&rows, &d(), true).unwrap();
    assert_eq!(plan.added, [net("2001:db8::/48")]);
    assert_eq!(plan.updated, [net("10.0.0.2/32")]);
    assert_eq!(plan.removed, [net("10.0.0.3/32")]);
    assert_eq!(plan.unchanged_config, [net("192.0.2.0/24")]);
    assert_eq!(list.import(&rows, &d(), true).unwrap(), plan);
    let descriptions: Vec<_> = list
        .managed()
        .map(|e| (e.network.to_string(), e.description.clone()))
        .collect();
    assert_eq!(
        descriptions,
        [
            ("10.0.0.1/32".to_string(), "keep".to_string()),
            ("10.0.0.2/32".to_string(), "last wins".to_string()),
            ("2001:db8::/48".to_string(), "v6".to_string())
        ]
    );
}

#[test]
fn expired_entries_leave_and_the_next_expiry_is_known() {
    let mut list = Allowlist::new(&config(CONFIG), vec![], &BTreeMap::new());
    list.add(net("10.0.0.1/32"), &d(), expiring(Some(100)))
        .unwrap();
    list.add(net("10.0.0.2/32"), &d(), expiring(Some(200)))
        .unwrap();
    assert_eq!(list.next_expiry(), Some(100));
    assert_eq!(list.expire(150).len(), 1);
    assert_eq!(list.next_expiry(), Some(200));
    // Updating an entry moves or clears its expiry.
    list.add(net("10.0.0.2/32"), &d(), expiring(Some(300)))
        .unwrap();
    assert_eq!(list.next_expiry(), Some(300));
    list.add(net("10.0.0.2/32"), &d(), expiring(None)).unwrap();
    assert_eq!(list.next_expiry(), None);
    assert!(list.expire(u64::MAX).is_empty());
}

#[test]
fn the_longest_prefix_decides() {
    let mut list = Allowlist::new(&config(CONFIG), vec![], &BTreeMap::new());
    list.add(net("192.0.2.128/25"), &d(), described("narrow"))
        .unwrap();
    let entry = list.deciding_entry("192.0.2.200".parse().unwrap()).unwrap();
    assert_eq!(entry.description, "narrow");
    let entry = list.deciding_entry("192.0.2.1".parse().unwrap()).unwrap();
    assert_eq!(entry.origin, Origin::Config);
    assert!(list
        .deciding_entry("198.51.100.1".parse().unwrap())
        .is_none());
}

#[test]
fn sets_hold_their_own_entries_and_replacing_one_leaves_the_others() {
    let mut list = Allowlist::new(&config(CONFIG), vec![], &BTreeMap::new());
    list.add(net("10.0.0.1/32"), &set("ci"), described("ci runner"))
        .unwrap();
    list.add(net("10.0.0.1/32"), &d(), described("also mine"))
        .unwrap();
    list.add(net("10.0.0.2/32"), &d(), EntryUpdate::default())
        .unwrap();
    assert_eq!(
        list.managed().count(),
        3,
        "one network may be in several sets"
    );
    let plan = list
        .import(&[row(2, "10.0.0.9", "new runner")], &set("ci"), true)
        .unwrap();
    assert_eq!(plan.added, [net("10.0.0.9/32")]);
    assert_eq!(plan.removed, [net("10.0.0.1/32")]);
    let mut left: Vec<_> = list
        .managed()
        .map(|e| (e.network.to_string(), e.set.to_string()))
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            ("10.0.0.1/32".to_string(), "default".to_string()),
            ("10.0.0.2/32".to_string(), "default".to_string()),
            ("10.0.0.9/32".to_string(), "ci".to_string()),
        ]
    );
    assert!(matches!(
        list.remove(net("10.0.0.9/32"), &d()),
        Err(ListError::InOtherSets { .. })
    ));
    assert!(list.remove(net("10.0.0.1/32"), &d()).is_ok());
    assert!(list.deciding_entry("10.0.0.1".parse().unwrap()).is_none());
}

#[test]
fn the_config_files_sets_are_read_only() {
    let mut list = Allowlist::new(&config(CONFIG), vec![], &BTreeMap::new());
    for name in ["config", "always"] {
        assert!(matches!(
            list.add(net("10.0.0.1/32"), &set(name), EntryUpdate::default()),
            Err(ListError::ReadOnlySet { .. })
        ));
        assert!(list.plan_import(&[], &set(name), true).is_err());
    }
    let from_config = list.deciding_entry("192.0.2.1".parse().unwrap()).unwrap();
    assert_eq!(from_config.set.as_str(), "config");
}

#[test]
fn entries_saved_before_sets_load_into_the_default_set() {
    let old = r#"{"network":"10.0.0.0/8","description":"x","origin":"cli","added_at":1}"#;
    let entry: Entry = serde_json::from_str(old).unwrap();
    assert_eq!(entry.set, SetName::default());
}

#[test]
fn importing_into_a_copy_leaves_the_list_it_was_copied_from_as_it_was() {
    let mut list = Allowlist::new(&config(CONFIG), vec![], &BTreeMap::new());
    list.add(net("10.0.0.1/32"), &d(), described("kept"))
        .unwrap();
    let before = list.clone();
    let mut next = list.clone();
    next.import(&[row(2, "10.0.0.2", "new")], &d(), true)
        .unwrap();
    assert_eq!(list, before, "the list a rollback goes back to");
    let networks: Vec<IpNet> = next.managed().map(|entry| entry.network).collect();
    assert_eq!(networks, [net("10.0.0.2/32")]);
}

#[test]
fn rows_for_one_network_apply_in_file_order_and_a_two_column_row_keeps_earlier_ports() {
    let mut list = Allowlist::new(&config(CONFIG), vec![], &BTreeMap::new());
    let scoped = ImportRow {
        scope: Some(RowScope {
            ports: vec!["443/udp".parse().unwrap()],
            expires_at: None,
        }),
        ..row(2, "::ffff:198.51.100.7", "first")
    };
    let rows = [
        scoped,
        row(4, "198.51.100.7", "second"),
        row(6, "198.51.100.7/32", "last"),
    ];
    let plan = list.import(&rows, &d(), false).unwrap();
    assert_eq!(plan.added, [net("198.51.100.7/32")]);
    let entry = list.managed_entry(net("198.51.100.7/32"), &d()).unwrap();
    assert_eq!(entry.description, "last");
    assert_eq!(entry.ports, ["443/udp".parse().unwrap()]);
}
