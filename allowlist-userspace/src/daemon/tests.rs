//! The daemon's state transitions with a fake kernel: what the kernel is told, what is
//! saved, and what is undone when a step fails.

use std::collections::BTreeMap;

use allowlist_common::FlowKey;
use ipnet::IpNet;

use super::{Actor, Daemon, Kernel};
use crate::{
    allowlist::{ImportRow, Origin},
    compile::CompiledList,
    config::{Config, Mode, XdpMode},
    control::{Request, Safety},
    filter::{
        ApplyReport, AttachedMode, Counters, DroppedSource, EgressMechanism, FilterError,
        RemoteFilterRebuild,
    },
    startup::StartPlan,
    state::{PendingConfirm, State},
};

/// Requests in these tests come from root's CLI.
const ROOT: Actor = Actor::Client { uid: 0, pid: 1 };

/// Remembers what the daemon made the kernel judge by; fails on request.
#[derive(Default)]
struct FakeKernel {
    /// The list as the last whole apply and the in-place changes since left it.
    list: CompiledList,
    mode: Option<Mode>,
    /// The revert armed in the kernel.
    pending: Option<PendingConfirm>,
    /// The deadline of the armed revert passes in the kernel before the next mode write.
    deadline_passes: bool,
    features: u32,
    attached: BTreeMap<String, AttachedMode>,
    egress: BTreeMap<String, EgressMechanism>,
    pinned: bool,
    /// Refuse every apply (whole or in place) from now on.
    failing: bool,
    whole_applies: usize,
    region_applies: usize,
    /// What the kernel's table of dropped sources holds.
    dropped: Vec<DroppedSource>,
}

fn refused() -> FilterError {
    FilterError::Kernel {
        context: "the fake kernel".into(),
        message: "refused on purpose".into(),
    }
}

impl Kernel for FakeKernel {
    fn apply(&mut self, list: &CompiledList) -> Result<ApplyReport, FilterError> {
        if self.failing {
            return Err(refused());
        }
        self.list = list.clone();
        self.whole_applies += 1;
        Ok(ApplyReport::default())
    }
    fn apply_region(
        &mut self,
        list: &CompiledList,
        _region: IpNet,
    ) -> Result<ApplyReport, FilterError> {
        if self.failing {
            return Err(refused());
        }
        self.list = list.clone();
        self.region_applies += 1;
        Ok(ApplyReport::default())
    }
    fn set_mode(
        &mut self,
        mode: Mode,
        pending: Option<PendingConfirm>,
    ) -> Result<Mode, FilterError> {
        // The program's own revert on the deadline, crossing a confirmation in flight.
        if let (Some(armed), None, true) = (self.pending, pending, self.deadline_passes) {
            self.mode = Some(armed.revert_to);
            self.pending = None;
            return Ok(armed.revert_to);
        }
        self.mode = Some(mode);
        self.pending = pending;
        Ok(mode)
    }
    fn set_features(&mut self, features: u32) -> Result<(), FilterError> {
        self.features = features;
        Ok(())
    }
    fn mode(&self) -> Mode {
        self.mode.unwrap_or(Mode::Off)
    }
    fn entry_counts(&self) -> (usize, usize) {
        (self.list.v4.len(), self.list.v6.len())
    }
    fn counters(&self) -> Result<Counters, FilterError> {
        Ok(Counters::new())
    }
    fn interface_counters(&self) -> Result<BTreeMap<String, Counters>, FilterError> {
        Ok(BTreeMap::new())
    }
    fn attach(
        &mut self,
        interface: &str,
        _wanted: XdpMode,
        recorded: Option<AttachedMode>,
    ) -> Result<AttachedMode, FilterError> {
        let mode = recorded.unwrap_or(AttachedMode::Native);
        self.attached.insert(interface.to_string(), mode);
        Ok(mode)
    }
    fn attach_egress(&mut self, interface: &str) -> Result<EgressMechanism, FilterError> {
        self.egress
            .insert(interface.to_string(), EgressMechanism::Tc);
        Ok(EgressMechanism::Tc)
    }
    fn egress(&self) -> &BTreeMap<String, EgressMechanism> {
        &self.egress
    }
    fn detach_others(&mut self, keep: &[String]) -> Result<(), FilterError> {
        self.attached
            .retain(|interface, _| keep.contains(interface));
        Ok(())
    }
    fn attached(&self) -> &BTreeMap<String, AttachedMode> {
        &self.attached
    }
    fn seed_flows(&mut self, flows: &[FlowKey]) -> Result<usize, FilterError> {
        Ok(flows.len())
    }
    fn rebuild_remote_filter(&mut self) -> Result<RemoteFilterRebuild, FilterError> {
        Ok(RemoteFilterRebuild::default())
    }
    fn pin_program(&mut self) -> Result<(), FilterError> {
        self.pinned = true;
        Ok(())
    }
    fn complete_layout(&mut self) -> Result<(), FilterError> {
        Ok(())
    }
    fn dropped_sources(&self) -> Result<Vec<DroppedSource>, FilterError> {
        Ok(self.dropped.clone())
    }
    fn prefix_hits(&self) -> Result<BTreeMap<IpNet, crate::filter::PrefixHits>, FilterError> {
        Ok(BTreeMap::new())
    }
}

/// A daemon on `lo` in `mode` with one config entry, its state in a temporary directory.
/// A daemon on no interface: with `lo` protected, the lockout check would count every
/// TCP connection on this host's loopback (whatever else runs here) as someone at risk.
fn daemon(mode: &str) -> (Daemon<FakeKernel>, tempfile::TempDir) {
    daemon_on("[]", mode)
}

fn daemon_on(interfaces: &str, mode: &str) -> (Daemon<FakeKernel>, tempfile::TempDir) {
    daemon_from(|dir| {
        format!(
            "interfaces = {interfaces}\nmode = \"{mode}\"\nstate_dir = {:?}\nsocket = {:?}\n\n[[allow]]\ncidr = \"192.0.2.0/24\"\ndescription = \"office\"\n",
            dir.join("state"),
            dir.join("run/control.sock"),
        )
    })
}

/// A daemon on the fake kernel from the config `text` makes for a fresh directory (its
/// `state` directory created).
fn daemon_from(
    text: impl FnOnce(&std::path::Path) -> String,
) -> (Daemon<FakeKernel>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = text(dir.path());
    let config = Config::parse(&dir.path().join("allowlist.toml"), &text).unwrap();
    std::fs::create_dir(dir.path().join("state")).unwrap();
    let plan = StartPlan::new(config).unwrap();
    let daemon = Daemon::assemble(plan, FakeKernel::default(), None).unwrap();
    (daemon, dir)
}

fn add(network: &str) -> Request {
    Request::Add {
        network: crate::config::parse_network(network).unwrap(),
        description: Some("added".into()),
        expires_in_secs: None,
        never_expires: false,
        ports: None,
        set: Default::default(),
        safety: Safety::default(),
    }
}

fn covers(daemon: &Daemon<FakeKernel>, address: &str) -> bool {
    daemon
        .filter
        .list
        .access_of(address.parse().unwrap())
        .is_some()
}

fn saved(daemon: &Daemon<FakeKernel>) -> Vec<IpNet> {
    let (state, _) = State::load(&daemon.config.state_dir).unwrap().unwrap();
    state.entries.iter().map(|entry| entry.network).collect()
}

/// The names in the state directory, sorted.
fn leftover_files(daemon: &Daemon<FakeKernel>) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&daemon.config.state_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_start_applies_the_list_and_mode_attaches_pins_and_saves() {
    let (daemon, _dir) = daemon_on("[\"lo\"]", "enforce");
    assert!(covers(&daemon, "192.0.2.7") && !covers(&daemon, "198.51.100.1"));
    assert_eq!(daemon.filter.mode, Some(Mode::Enforce));
    assert_eq!(daemon.filter.attached.keys().collect::<Vec<_>>(), ["lo"]);
    assert!(daemon.filter.pinned);
    assert!(saved(&daemon).is_empty(), "only the file's entries so far");
}

#[test]
fn add_and_remove_change_the_kernel_in_place_and_are_saved() {
    let (mut daemon, _dir) = daemon("enforce");
    assert!(daemon.handle(add("198.51.100.7"), &ROOT).ok);
    assert!(covers(&daemon, "198.51.100.7"));
    assert_eq!(
        daemon.filter.region_applies, 1,
        "one change, written in place"
    );
    assert_eq!(
        saved(&daemon),
        ["198.51.100.7/32".parse::<IpNet>().unwrap()]
    );

    let remove = Request::Remove {
        network: "198.51.100.7/32".parse().unwrap(),
        if_present: false,
        set: Default::default(),
        safety: Safety::default(),
    };
    assert!(daemon.handle(remove, &ROOT).ok);
    assert!(!covers(&daemon, "198.51.100.7"));
    assert!(saved(&daemon).is_empty());
}

#[test]
fn a_change_the_kernel_refuses_is_undone_in_memory_and_not_saved() {
    let (mut daemon, _dir) = daemon("enforce");
    daemon.filter.failing = true;
    let reply = daemon.handle(add("198.51.100.7"), &ROOT);
    assert!(!reply.ok, "{reply:?}");
    assert!(daemon
        .allowlist
        .managed_entry("198.51.100.7/32".parse().unwrap(), &Default::default())
        .is_none());
    assert!(saved(&daemon).is_empty());
    let state_file = crate::state::path(&daemon.config.state_dir);
    let state_before = std::fs::read(&state_file).unwrap();
    let files_before = leftover_files(&daemon);

    let import = Request::Import {
        rows: vec![ImportRow {
            line: 2,
            network: "203.0.113.0/24".parse().unwrap(),
            description: String::new(),
            scope: None,
        }],
        set: Default::default(),
        replace: true,
        dry_run: false,
        safety: Safety::default(),
    };
    assert!(!daemon.handle(import, &ROOT).ok);
    assert_eq!(daemon.allowlist.managed().count(), 0);
    // The state file was being written while the kernel refused the list.
    assert_eq!(std::fs::read(&state_file).unwrap(), state_before);
    assert_eq!(leftover_files(&daemon), files_before);
    daemon.filter.failing = false;
    assert!(
        daemon.handle(add("198.51.100.7"), &ROOT).ok,
        "the daemon goes on"
    );
}

#[test]
fn a_change_that_cannot_be_saved_is_taken_back_out_of_the_kernel() {
    let (mut daemon, _dir) = daemon("enforce");
    assert!(daemon.handle(add("198.51.100.7"), &ROOT).ok);
    // The state file cannot be replaced: a directory stands where it would be renamed.
    let state_file = crate::state::path(&daemon.config.state_dir);
    std::fs::remove_file(&state_file).unwrap();
    std::fs::create_dir(&state_file).unwrap();
    let import = Request::Import {
        rows: vec![ImportRow {
            line: 2,
            network: "203.0.113.0/24".parse().unwrap(),
            description: String::new(),
            scope: None,
        }],
        set: Default::default(),
        replace: true,
        dry_run: false,
        safety: Safety::default(),
    };
    let reply = daemon.handle(import, &ROOT);
    assert!(!reply.ok, "{reply:?}");
    assert!(
        covers(&daemon, "198.51.100.7") && !covers(&daemon, "203.0.113.1"),
        "the kernel judges by the list before the import again"
    );
    assert!(
        !leftover_files(&daemon)
            .iter()
            .any(|name| name.ends_with(".tmp")),
        "{:?}",
        leftover_files(&daemon)
    );
    assert!(daemon
        .allowlist
        .managed_entry("198.51.100.7/32".parse().unwrap(), &Default::default())
        .is_some());
}

#[test]
fn an_expired_entry_leaves_the_kernel_and_the_last_one_switches_enforcing_to_monitor() {
    let (mut daemon, _dir) = daemon("monitor");
    // Only entries of the operator's own count: drop the file's, keep one temporary.
    let mut config = daemon.config.clone();
    config.allow.clear();
    daemon.allowlist.set_config(&config);
    daemon.config = config;
    assert!(daemon.handle(add("198.51.100.7"), &ROOT).ok);
    let activate = Request::SetMode {
        mode: Mode::Enforce,
        confirm_secs: None,
        safety: Safety::default(),
    };
    assert!(daemon.handle(activate, &ROOT).ok);
    // Its time is up.
    let mut entry = daemon
        .allowlist
        .managed_entry("198.51.100.7/32".parse().unwrap(), &Default::default())
        .unwrap()
        .clone();
    entry.expires_at = Some(1);
    daemon
        .allowlist
        .restore_managed(entry.network, &entry.set, Some(entry.clone()));
    assert_eq!(daemon.next_deadline(), Some(1));

    assert!(daemon.tick());
    assert!(!covers(&daemon, "198.51.100.7"));
    assert_eq!(
        daemon.mode,
        Mode::Monitor,
        "never lock everyone out on a timer"
    );
    assert_eq!(daemon.filter.mode, Some(Mode::Monitor));
    assert!(saved(&daemon).is_empty());
    assert_eq!(daemon.next_deadline(), None);
}

#[test]
fn re_adding_keeps_what_is_not_given_and_the_origin() {
    let (mut daemon, _dir) = daemon("enforce");
    assert!(daemon.handle(add("198.51.100.7"), &ROOT).ok);
    let again = Request::Add {
        network: "198.51.100.7/32".parse().unwrap(),
        description: None,
        expires_in_secs: Some(3600),
        never_expires: false,
        ports: None,
        set: Default::default(),
        safety: Safety::default(),
    };
    assert!(daemon.handle(again, &ROOT).ok);
    let entry = daemon
        .allowlist
        .managed_entry("198.51.100.7/32".parse().unwrap(), &Default::default())
        .unwrap();
    assert_eq!(entry.description, "added");
    assert_eq!(entry.origin, Origin::Cli);
    assert!(entry.expires_at.is_some());
}

#[test]
fn a_confirm_deadline_is_armed_in_the_kernel_and_a_confirmation_disarms_it() {
    let (mut daemon, _dir) = daemon("monitor");
    let activate = Request::SetMode {
        mode: Mode::Enforce,
        confirm_secs: Some(60),
        safety: Safety::default(),
    };
    assert!(daemon.handle(activate, &ROOT).ok);
    let armed = daemon
        .filter
        .pending
        .expect("the kernel holds the deadline");
    assert_eq!(armed.revert_to, Mode::Monitor);
    assert!(daemon.handle(add("198.51.100.7"), &ROOT).ok);
    assert_eq!(
        daemon.filter.pending,
        Some(armed),
        "a list change keeps it armed"
    );

    let reply = daemon.handle(Request::Confirm, &ROOT);
    assert!(reply.ok, "{reply:?}");
    assert_eq!(daemon.filter.pending, None);
    assert_eq!(daemon.filter.mode, Some(Mode::Enforce));
}

#[test]
fn a_confirmation_that_crosses_the_kernels_revert_is_too_late_and_the_daemon_follows_the_kernel() {
    let (mut daemon, _dir) = daemon("monitor");
    let activate = Request::SetMode {
        mode: Mode::Enforce,
        confirm_secs: Some(60),
        safety: Safety::default(),
    };
    assert!(daemon.handle(activate, &ROOT).ok);
    daemon.filter.deadline_passes = true;

    let reply = daemon.handle(Request::Confirm, &ROOT);
    assert!(!reply.ok, "{reply:?}");
    assert!(
        reply
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("too late"),
        "{reply:?}"
    );
    assert_eq!(daemon.mode, Mode::Monitor);
    assert_eq!(daemon.filter.mode, Some(Mode::Monitor));
    assert_eq!(daemon.pending_confirm, None);
    let (state, _) = State::load(&daemon.config.state_dir).unwrap().unwrap();
    assert_eq!((state.mode, state.pending_confirm), (Mode::Monitor, None));
}

#[test]
fn top_ranks_dropped_or_monitored_sources_by_packets_within_since_and_limit() {
    use allowlist_common::Reason;

    let (mut daemon, _dir) = daemon("monitor");
    let now = crate::clock::now();
    let source = |address: &str, reason, packets, ago| DroppedSource {
        source: address.parse().unwrap(),
        ifindex: 1,
        reason,
        packets,
        bytes: packets * 100,
        last_seen: now - ago,
    };
    daemon.filter.dropped = vec![
        source("198.51.100.1", Reason::DroppedNotListed, 5, 10),
        source("198.51.100.2", Reason::DroppedPortNotAllowed, 50, 7200),
        source("198.51.100.3", Reason::MonitorNotListed, 7, 10),
        source("198.51.100.4", Reason::DroppedNotListed, 9, 10),
    ];
    let sources = |rows: Vec<crate::control::DroppedRow>| {
        rows.iter()
            .map(|row| row.source.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        sources(daemon.top(false, None, None).unwrap()),
        ["198.51.100.2", "198.51.100.4", "198.51.100.1"]
    );
    assert_eq!(
        sources(daemon.top(false, Some(3600), Some(1)).unwrap()),
        ["198.51.100.4"]
    );
    assert_eq!(
        sources(daemon.top(true, None, None).unwrap()),
        ["198.51.100.3"]
    );
    assert!(daemon.top(true, None, None).unwrap()[0].interface == "lo");
}

#[test]
fn add_host_lists_a_name_as_its_own_set_refuses_the_files_and_remove_host_forgets_it() {
    let (mut daemon, _dir) = daemon("enforce");
    let add_host = |host: &str| Request::AddHost {
        host: host.into(),
        description: Some("runner".into()),
        ports: None,
    };
    let remove_host = |host: &str| Request::RemoveHost {
        host: host.into(),
        if_present: false,
        safety: Safety::default(),
    };
    let reply = daemon.handle(add_host("Runner.Example.com."), &ROOT);
    assert!(reply.ok, "{reply:?}");
    let hosts = daemon.config.cli_hosts();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].host, "runner.example.com");
    assert_eq!(hosts[0].description, "runner");
    // Saved with the state, for the next start.
    assert_eq!(daemon.state().hosts, hosts);
    // Again: an update, not a second name.
    assert!(daemon.handle(add_host("runner.example.com"), &ROOT).ok);
    assert_eq!(daemon.config.cli_hosts().len(), 1);
    for bad in ["10.0.0.1", "localhost", "a..b"] {
        let reply = daemon.handle(add_host(bad), &ROOT);
        assert!(!reply.ok, "{bad}: {reply:?}");
    }
    assert!(daemon.handle(remove_host("runner.example.com"), &ROOT).ok);
    assert!(daemon.config.cli_hosts().is_empty());
    assert!(daemon.state().hosts.is_empty());
    let reply = daemon.handle(remove_host("runner.example.com"), &ROOT);
    assert!(!reply.ok, "{reply:?}");
}

/// A daemon following fleet set `office` (no etcd: revisions are handed to it as the
/// follower would).
fn fleet_daemon() -> (Daemon<FakeKernel>, tempfile::TempDir) {
    daemon_from(|dir| {
        format!(
            "interfaces = []\nmode = \"enforce\"\nstate_dir = {:?}\nsocket = {:?}\n\n[[allow]]\ncidr = \"192.0.2.0/24\"\n\n[fleet]\nendpoints = [\"http://127.0.0.1:1\"]\nhost = \"h1\"\nsets = [\"office\"]\n",
            dir.join("state"),
            dir.join("run/control.sock"),
        )
    })
}

fn office() -> crate::allowlist::SetName {
    crate::allowlist::SetName::new("office").unwrap()
}

/// Set `office` whole, as a full read gives it.
fn office_whole(networks: &[&str]) -> BTreeMap<crate::allowlist::SetName, super::DesiredSet> {
    let networks = networks
        .iter()
        .map(|network| (network.parse().unwrap(), String::new()))
        .collect();
    BTreeMap::from([(
        office(),
        super::DesiredSet {
            networks,
            ..Default::default()
        },
    )])
}

/// Changes to set `office`: `Some(description)` lists a network, `None` unlists it.
fn office_delta(
    changes: &[(&str, Option<&str>)],
) -> BTreeMap<crate::allowlist::SetName, super::SetDelta> {
    let changes = changes
        .iter()
        .map(|(network, description)| (network.parse().unwrap(), description.map(String::from)))
        .collect();
    BTreeMap::from([(
        office(),
        super::SetDelta {
            changes,
            ..Default::default()
        },
    )])
}

fn saved_revision(daemon: &Daemon<FakeKernel>) -> Option<i64> {
    let (state, _) = State::load(&daemon.config.state_dir).unwrap().unwrap();
    state.feeds.get(&office()).and_then(|feed| feed.revision)
}

#[test]
fn a_watch_message_applies_as_a_delta_and_its_revision_is_saved_once_the_kernel_has_it() {
    use super::FleetOutcome;
    let (mut daemon, _dir) = fleet_daemon();
    let whole = office_whole(&["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24"]);
    assert_eq!(
        daemon.fleet_apply(5, Some(1), &whole),
        FleetOutcome::Applied
    );
    assert!(covers(&daemon, "10.0.0.1") && !covers(&daemon, "10.0.3.1"));

    let delta = office_delta(&[("10.0.3.0/24", Some("new")), ("10.0.0.0/24", None)]);
    assert_eq!(
        daemon.fleet_apply_delta(5, 6, Some(1), &delta),
        Some(FleetOutcome::Applied)
    );
    assert!(covers(&daemon, "10.0.3.1") && !covers(&daemon, "10.0.0.1"));
    assert!(covers(&daemon, "10.0.1.1"), "what did not change stays");
    assert_eq!(daemon.filter.list, daemon.allowlist.compile().unwrap());
    assert_eq!(saved_revision(&daemon), Some(6));
    let entry = daemon
        .allowlist
        .feed_entries()
        .find(|entry| entry.network.to_string() == "10.0.3.0/24")
        .unwrap();
    assert_eq!(entry.description, "new");

    // The kernel refuses the next one: nothing changes, and the revision saved stays.
    daemon.filter.failing = true;
    let delta = office_delta(&[("10.0.4.0/24", Some(""))]);
    assert_eq!(
        daemon.fleet_apply_delta(6, 7, Some(1), &delta),
        Some(FleetOutcome::Refused)
    );
    daemon.filter.failing = false;
    assert!(!daemon
        .allowlist
        .feed_entries()
        .any(|e| e.network.to_string() == "10.0.4.0/24"));
    assert_eq!(saved_revision(&daemon), Some(6));
    // The kernel is not as of 7: a delta after it is not taken, the sets must come whole.
    assert_eq!(daemon.fleet_apply_delta(7, 8, Some(1), &delta), None);
}

#[test]
fn a_delta_that_would_empty_a_set_or_comes_from_another_history_is_handed_back_whole() {
    use super::FleetOutcome;
    let (mut daemon, _dir) = fleet_daemon();
    let whole = office_whole(&["10.0.0.0/24", "10.0.1.0/24"]);
    assert_eq!(
        daemon.fleet_apply(5, Some(1), &whole),
        FleetOutcome::Applied
    );
    let empties = office_delta(&[("10.0.0.0/24", None), ("10.0.1.0/24", None)]);
    assert_eq!(daemon.fleet_apply_delta(5, 6, Some(1), &empties), None);
    assert!(covers(&daemon, "10.0.0.1"), "nothing applied");
    let other_cluster = office_delta(&[("10.0.3.0/24", Some(""))]);
    assert_eq!(
        daemon.fleet_apply_delta(5, 6, Some(2), &other_cluster),
        None
    );
    assert_eq!(saved_revision(&daemon), Some(5));
}

#[test]
fn a_delta_of_unchanged_entries_or_other_sets_moves_the_revision_only() {
    use super::FleetOutcome;
    let (mut daemon, _dir) = fleet_daemon();
    assert_eq!(
        daemon.fleet_apply(5, Some(1), &office_whole(&["10.0.0.0/24"])),
        FleetOutcome::Applied
    );
    let applies = daemon.filter.whole_applies + daemon.filter.region_applies;
    let same = office_delta(&[("10.0.0.0/24", Some(""))]);
    assert_eq!(
        daemon.fleet_apply_delta(5, 9, Some(1), &same),
        Some(FleetOutcome::Applied)
    );
    assert_eq!(
        daemon.filter.whole_applies + daemon.filter.region_applies,
        applies
    );
    assert_eq!(saved_revision(&daemon), Some(9));
}
