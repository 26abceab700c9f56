//! GitHub's `https://api.github.com/meta`: an object whose lists of networks are named
//! by what uses them (`hooks`, `web`, `api`, `git`, `actions`, `pages`, …). The feed
//! takes the lists its `keys` name; a key missing from the body refuses it (GitHub
//! renaming a list must not quietly empty the feed).

use serde_json::{Map, Value};

use super::{BodyError, Format, Networks};

pub(super) fn parse(
    body: &[u8],
    keys: &[String],
    networks: &mut Networks,
) -> Result<(), BodyError> {
    let shape = |detail: String| BodyError::shape(Format::Github, detail);
    let meta: Map<String, Value> =
        serde_json::from_slice(body).map_err(|error| shape(error.to_string()))?;
    for key in keys {
        let list = meta
            .get(key)
            .ok_or_else(|| shape(format!("no list {key:?}")))?
            .as_array()
            .ok_or_else(|| shape(format!("{key:?} is not a list")))?;
        for (index, value) in list.iter().enumerate() {
            let value = value
                .as_str()
                .ok_or_else(|| shape(format!("{key}[{index}] is not a string")))?;
            networks.add(|| format!("{key}[{index}]"), value)?;
        }
    }
    Ok(())
}
