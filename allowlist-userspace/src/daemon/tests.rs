//! The daemon's state transitions with a fake kernel: what the kernel is told, what is
//! saved, and what is undone when a step fails.

use std::collections::BTreeMap;

use allowlist_common::FlowKey;
use ipnet::IpNet;

use super::{Daemon, Kernel};
use crate::{
    allowlist::{ImportRow, Origin},
    compile::CompiledList,
    config::{Config, Mode, XdpMode},
    control::{Request, Safety},
    filter::{ApplyReport, AttachedMode, Counters, EgressMechanism, FilterError},
    startup::StartPlan,
    state::State,
};

/// Remembers what the daemon made the kernel judge by; fails on request.
#[derive(Default)]
struct FakeKernel {
    /// The list as the last whole apply and the in-place changes since left it.
    list: CompiledList,
    mode: Option<Mode>,
    features: u32,
    attached: BTreeMap<String, AttachedMode>,
    egress: BTreeMap<String, EgressMechanism>,
    pinned: bool,
    /// Refuse every apply (whole or in place) from now on.
    failing: bool,
    whole_applies: usize,
    region_applies: usize,
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
    fn set_mode(&mut self, mode: Mode) -> Result<(), FilterError> {
        self.mode = Some(mode);
        Ok(())
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
    fn pin_program(&mut self) -> Result<(), FilterError> {
        self.pinned = true;
        Ok(())
    }
}

/// A daemon on `lo` in `mode` with one config entry, its state in a temporary directory.
fn daemon(mode: &str) -> (Daemon<FakeKernel>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "interfaces = [\"lo\"]\nmode = \"{mode}\"\nstate_dir = {:?}\nsocket = {:?}\n\n[[allow]]\ncidr = \"192.0.2.0/24\"\ndescription = \"office\"\n",
        dir.path().join("state"),
        dir.path().join("run/control.sock"),
    );
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

#[test]
fn a_start_applies_the_list_and_mode_attaches_pins_and_saves() {
    let (daemon, _dir) = daemon("enforce");
    assert!(covers(&daemon, "192.0.2.7") && !covers(&daemon, "198.51.100.1"));
    assert_eq!(daemon.filter.mode, Some(Mode::Enforce));
    assert_eq!(daemon.filter.attached.keys().collect::<Vec<_>>(), ["lo"]);
    assert!(daemon.filter.pinned);
    assert!(saved(&daemon).is_empty(), "only the file's entries so far");
}

#[test]
fn add_and_remove_change_the_kernel_in_place_and_are_saved() {
    let (mut daemon, _dir) = daemon("enforce");
    assert!(daemon.handle(add("198.51.100.7")).ok);
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
        safety: Safety::default(),
    };
    assert!(daemon.handle(remove).ok);
    assert!(!covers(&daemon, "198.51.100.7"));
    assert!(saved(&daemon).is_empty());
}

#[test]
fn a_change_the_kernel_refuses_is_undone_in_memory_and_not_saved() {
    let (mut daemon, _dir) = daemon("enforce");
    daemon.filter.failing = true;
    let reply = daemon.handle(add("198.51.100.7"));
    assert!(!reply.ok, "{reply:?}");
    assert!(daemon
        .allowlist
        .managed_entry("198.51.100.7/32".parse().unwrap())
        .is_none());
    assert!(saved(&daemon).is_empty());

    let import = Request::Import {
        rows: vec![ImportRow {
            line: 2,
            network: "203.0.113.0/24".parse().unwrap(),
            description: String::new(),
            scope: None,
        }],
        replace: true,
        dry_run: false,
        safety: Safety::default(),
    };
    assert!(!daemon.handle(import).ok);
    assert_eq!(daemon.allowlist.managed().count(), 0);
    daemon.filter.failing = false;
    assert!(daemon.handle(add("198.51.100.7")).ok, "the daemon goes on");
}

#[test]
fn a_change_that_cannot_be_saved_is_taken_back_out_of_the_kernel() {
    let (mut daemon, _dir) = daemon("enforce");
    assert!(daemon.handle(add("198.51.100.7")).ok);
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
        replace: true,
        dry_run: false,
        safety: Safety::default(),
    };
    let reply = daemon.handle(import);
    assert!(!reply.ok, "{reply:?}");
    assert!(
        covers(&daemon, "198.51.100.7") && !covers(&daemon, "203.0.113.1"),
        "the kernel judges by the list before the import again"
    );
    assert!(daemon
        .allowlist
        .managed_entry("198.51.100.7/32".parse().unwrap())
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
    assert!(daemon.handle(add("198.51.100.7")).ok);
    let activate = Request::SetMode {
        mode: Mode::Enforce,
        confirm_secs: None,
        safety: Safety::default(),
    };
    assert!(daemon.handle(activate).ok);
    // Its time is up.
    let mut entry = daemon
        .allowlist
        .managed_entry("198.51.100.7/32".parse().unwrap())
        .unwrap()
        .clone();
    entry.expires_at = Some(1);
    daemon
        .allowlist
        .restore_managed(entry.network, Some(entry.clone()));
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
    assert!(daemon.handle(add("198.51.100.7")).ok);
    let again = Request::Add {
        network: "198.51.100.7/32".parse().unwrap(),
        description: None,
        expires_in_secs: Some(3600),
        never_expires: false,
        ports: None,
        safety: Safety::default(),
    };
    assert!(daemon.handle(again).ok);
    let entry = daemon
        .allowlist
        .managed_entry("198.51.100.7/32".parse().unwrap())
        .unwrap();
    assert_eq!(entry.description, "added");
    assert_eq!(entry.origin, Origin::Cli);
    assert!(entry.expires_at.is_some());
}
