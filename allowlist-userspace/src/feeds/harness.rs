//! Harness Cloud's IP allowlist API (`GET /gateway/ci/ips/allowlist?accountIdentifier=…`
//! with `X-API-KEY`): `{"status":"SUCCESS","data":{"ipAddresses":["34.102.159.101", …]}}`.
//! Free-tier accounts get an empty list.

use serde::Deserialize;

use super::{BodyError, Format, Networks};

#[derive(Deserialize)]
struct Response {
    status: String,
    data: Option<Data>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    ip_addresses: Vec<String>,
}

pub(super) fn parse(body: &[u8], networks: &mut Networks) -> Result<(), BodyError> {
    let shape = |detail| BodyError::shape(Format::Harness, detail);
    let response: Response =
        serde_json::from_slice(body).map_err(|error| shape(error.to_string()))?;
    if response.status != "SUCCESS" {
        return Err(shape(format!(
            "status is {:?}, not \"SUCCESS\"",
            super::shorten(response.status)
        )));
    }
    let data = response
        .data
        .ok_or_else(|| shape("no data.ipAddresses".to_string()))?;
    for (index, address) in data.ip_addresses.iter().enumerate() {
        networks.add(|| format!("data.ipAddresses[{index}]"), address)?;
    }
    Ok(())
}
