//! AWS `ip-ranges.json`: `{"prefixes":[{"ip_prefix","region","service",…}],
//! "ipv6_prefixes":[{"ipv6_prefix","region","service",…}]}`, taken where `services` and
//! `regions` (empty: all) name the entry's service and region.

use serde::Deserialize;

use super::{wanted, BodyError, Filters, Format, Networks};

#[derive(Deserialize)]
struct Ranges {
    prefixes: Vec<V4>,
    #[serde(default)]
    ipv6_prefixes: Vec<V6>,
}

#[derive(Deserialize)]
struct V4 {
    ip_prefix: String,
    region: String,
    service: String,
}

#[derive(Deserialize)]
struct V6 {
    ipv6_prefix: String,
    region: String,
    service: String,
}

pub(super) fn parse(
    body: &[u8],
    filters: &Filters,
    networks: &mut Networks,
) -> Result<(), BodyError> {
    let ranges: Ranges =
        serde_json::from_slice(body).map_err(|error| BodyError::shape(Format::Aws, error))?;
    let take = |region: &str, service: &str| {
        wanted(&filters.regions, region) && wanted(&filters.services, service)
    };
    for (index, entry) in ranges.prefixes.iter().enumerate() {
        if take(&entry.region, &entry.service) {
            networks.add(|| format!("prefixes[{index}].ip_prefix"), &entry.ip_prefix)?;
        }
    }
    for (index, entry) in ranges.ipv6_prefixes.iter().enumerate() {
        if take(&entry.region, &entry.service) {
            networks.add(
                || format!("ipv6_prefixes[{index}].ipv6_prefix"),
                &entry.ipv6_prefix,
            )?;
        }
    }
    Ok(())
}
