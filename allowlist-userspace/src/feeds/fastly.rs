//! Fastly's `https://api.fastly.com/public-ip-list`:
//! `{"addresses":[…],"ipv6_addresses":[…]}`.

use serde::Deserialize;

use super::{BodyError, Format, Networks};

#[derive(Deserialize)]
struct List {
    addresses: Vec<String>,
    #[serde(default)]
    ipv6_addresses: Vec<String>,
}

pub(super) fn parse(body: &[u8], networks: &mut Networks) -> Result<(), BodyError> {
    let list: List =
        serde_json::from_slice(body).map_err(|error| BodyError::shape(Format::Fastly, error))?;
    for (index, value) in list.addresses.iter().enumerate() {
        networks.add(|| format!("addresses[{index}]"), value)?;
    }
    for (index, value) in list.ipv6_addresses.iter().enumerate() {
        networks.add(|| format!("ipv6_addresses[{index}]"), value)?;
    }
    Ok(())
}
