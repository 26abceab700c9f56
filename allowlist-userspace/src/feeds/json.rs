//! Any JSON document, with a JSONPath expression (RFC 9535) that selects the address
//! strings, e.g. `$.prefixes[*].ip_prefix`. Every node selected must be a string.

use serde_json_path::JsonPath;

use super::{BodyError, Format, Networks};

/// Checks a JSONPath expression (at config load, so a bad one is refused with its line).
pub fn check_path(path: &str) -> Result<(), String> {
    JsonPath::parse(path)
        .map(|_| ())
        .map_err(|error| format!("invalid JSONPath {path:?}: {error}"))
}

pub(super) fn parse(body: &[u8], path: &str, networks: &mut Networks) -> Result<(), BodyError> {
    let shape = |detail: String| BodyError::shape(Format::Json, detail);
    let path = JsonPath::parse(path).map_err(|error| shape(error.to_string()))?;
    let document: serde_json::Value =
        serde_json::from_slice(body).map_err(|error| shape(error.to_string()))?;
    for node in path.query_located(&document) {
        let at = node.location().to_string();
        match node.node().as_str() {
            Some(value) => networks.add(|| at.clone(), value)?,
            None => {
                return Err(BodyError::Address {
                    at,
                    detail: "selected a value that is not a string".into(),
                })
            }
        }
    }
    Ok(())
}
