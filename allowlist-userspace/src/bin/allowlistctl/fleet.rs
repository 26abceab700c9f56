//! `allowlistctl fleet`: talks to etcd (as the config's [fleet] section says), not to
//! the daemon.

use std::{collections::BTreeMap, path::Path};

use allowlist_userspace::{
    clock,
    fleet::{admin, etcd::Etcd, FleetConfig, Layout},
};
use comfy_table::Table;
use ipnet::IpNet;

use crate::{
    cli::FleetAction,
    input::{network_argument, read_csv},
    Failure,
};

pub fn run(config: &Path, action: FleetAction) -> Result<(), Failure> {
    let fleet = FleetConfig::load(config).map_err(Failure::error)?;
    let etcd = Etcd::new(&fleet).map_err(|error| Failure::error(error.to_string()))?;
    let layout = Layout::new(&fleet.prefix);
    match action {
        FleetAction::Push {
            file,
            set,
            dry_run,
            json,
            allow_empty,
        } => {
            let mut entries = BTreeMap::new();
            for row in read_csv(&file)? {
                if row
                    .scope
                    .as_ref()
                    .is_some_and(|scope| !scope.ports.is_empty() || scope.expires_at.is_some())
                {
                    return Err(Failure::error(format!(
                        "{}:{}: fleet entries carry no ports or expiry; leave those columns empty. Nothing was pushed",
                        file.display(),
                        row.line
                    )));
                }
                entries.insert(row.network, row.description);
            }
            // An empty file is more often a failed export than a wish to drop every
            // host's access at once.
            if entries.is_empty() && !allow_empty {
                return Err(Failure::error(format!(
                    "{}: no entries; pushing it would empty set {set} on every host. Give --allow-empty if that is meant. Nothing was pushed",
                    file.display()
                )));
            }
            let before = admin::read_set(&etcd, &layout, &set).map_err(Failure::error)?;
            let plan = admin::plan(&before, &entries);
            let revision = if dry_run {
                None
            } else {
                Some(admin::push(&etcd, &layout, &set, &entries).map_err(Failure::error)?)
            };
            if json {
                let mut value = serde_json::to_value(&plan).unwrap_or_default();
                value["dry_run"] = dry_run.into();
                value["revision"] = revision.into();
                println!("{value}");
            } else {
                let verb = if dry_run { "would push" } else { "pushed" };
                let at = revision.map_or_else(String::new, |r| format!(" at revision {r}"));
                println!(
                    "{verb} set {set}{at}: {} entries ({} added, {} removed, {} updated)",
                    plan.entries, plan.added, plan.removed, plan.updated
                );
            }
            Ok(())
        }
        FleetAction::Add {
            networks,
            set,
            description,
        } => {
            allowlist_userspace::allowlist::check_description(&description)
                .map_err(Failure::usage)?;
            let networks = parse(&networks)?;
            let revision = admin::add(&etcd, &layout, &set, &networks, &description)
                .map_err(Failure::error)?;
            println!(
                "added {} to fleet set {set} at revision {revision}",
                networks.len()
            );
            Ok(())
        }
        FleetAction::Remove { networks, set } => {
            let networks = parse(&networks)?;
            let revision =
                admin::remove(&etcd, &layout, &set, &networks).map_err(Failure::error)?;
            println!(
                "removed {} from fleet set {set} at revision {revision}",
                networks.len()
            );
            Ok(())
        }
        FleetAction::Status { json } => {
            let view = admin::status(&etcd, &layout).map_err(Failure::error)?;
            if json {
                println!("{}", serde_json::to_string(&view).unwrap_or_default());
                return Ok(());
            }
            println!("last change: revision {}", view.revision);
            let mut table = Table::new();
            table.load_preset(comfy_table::presets::NOTHING);
            table.set_header([
                "HOST",
                "APPLIED",
                "LAG",
                "MODE",
                "ENTRIES",
                "HELD",
                "LAST SEEN",
                "ERROR",
            ]);
            for host in &view.hosts {
                table.add_row([
                    host.status.host.clone(),
                    host.status.applied_revision.to_string(),
                    match host.lag {
                        0 => "current".into(),
                        ..0 => format!("{} ahead of etcd", host.lag.unsigned_abs()),
                        _ => format!("{} behind", host.lag),
                    },
                    host.status.mode.clone(),
                    host.status.entries.to_string(),
                    host.status.held.join("; "),
                    format!("{} ago", clock::format_duration(host.last_seen_secs)),
                    host.status.error.clone().unwrap_or_default(),
                ]);
            }
            println!("{table}");
            for key in &view.unreadable {
                eprintln!("allowlistctl: unreadable host status {key}");
            }
            Ok(())
        }
    }
}

fn parse(networks: &[String]) -> Result<Vec<IpNet>, Failure> {
    networks.iter().map(|n| network_argument(n)).collect()
}
