//! Cloudflare's `https://api.cloudflare.com/client/v4/ips`:
//! `{"result":{"ipv4_cidrs":[…],"ipv6_cidrs":[…]},"success":true,…}`.

use serde::Deserialize;

use super::{BodyError, Format, Networks};

#[derive(Deserialize)]
struct Response {
    success: bool,
    result: Option<Cidrs>,
}

#[derive(Deserialize)]
struct Cidrs {
    ipv4_cidrs: Vec<String>,
    #[serde(default)]
    ipv6_cidrs: Vec<String>,
}

pub(super) fn parse(body: &[u8], networks: &mut Networks) -> Result<(), BodyError> {
    let shape = |detail: String| BodyError::shape(Format::Cloudflare, detail);
    let response: Response =
        serde_json::from_slice(body).map_err(|error| shape(error.to_string()))?;
    let cidrs = match (response.success, response.result) {
        (true, Some(cidrs)) => cidrs,
        _ => return Err(shape("success is not true, or no result".into())),
    };
    for (index, value) in cidrs.ipv4_cidrs.iter().enumerate() {
        networks.add(|| format!("result.ipv4_cidrs[{index}]"), value)?;
    }
    for (index, value) in cidrs.ipv6_cidrs.iter().enumerate() {
        networks.add(|| format!("result.ipv6_cidrs[{index}]"), value)?;
    }
    Ok(())
}
