//! Google Cloud's `cloud.json`: `{"prefixes":[{"ipv4Prefix"|"ipv6Prefix","service",
//! "scope"}]}`, taken where `regions` (empty: all) names the entry's scope.

use serde::Deserialize;

use super::{wanted, BodyError, Filters, Format, Networks};

#[derive(Deserialize)]
struct Ranges {
    prefixes: Vec<Prefix>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Prefix {
    ipv4_prefix: Option<String>,
    ipv6_prefix: Option<String>,
    #[serde(default)]
    scope: String,
}

pub(super) fn parse(
    body: &[u8],
    filters: &Filters,
    networks: &mut Networks,
) -> Result<(), BodyError> {
    let ranges: Ranges =
        serde_json::from_slice(body).map_err(|error| BodyError::shape(Format::Gcp, error))?;
    for (index, prefix) in ranges.prefixes.iter().enumerate() {
        if !wanted(&filters.regions, &prefix.scope) {
            continue;
        }
        match (&prefix.ipv4_prefix, &prefix.ipv6_prefix) {
            (Some(value), None) | (None, Some(value)) => {
                networks.add(|| format!("prefixes[{index}]"), value)?
            }
            _ => {
                return Err(BodyError::Address {
                    at: format!("prefixes[{index}]"),
                    detail: "needs exactly one of ipv4Prefix and ipv6Prefix".into(),
                })
            }
        }
    }
    Ok(())
}
