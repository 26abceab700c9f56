//! Plain text: one address or network per line; `#` starts a comment; blank lines and
//! surrounding whitespace are ignored.

use super::{BodyError, Format, Networks};

pub(super) fn parse(body: &[u8], networks: &mut Networks) -> Result<(), BodyError> {
    let text = std::str::from_utf8(body)
        .map_err(|error| BodyError::shape(Format::Text, format!("not UTF-8: {error}")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, line) in text.lines().enumerate() {
        let value = line.split('#').next().unwrap_or_default().trim();
        if !value.is_empty() {
            networks.add(|| format!("line {}", index + 1), value)?;
        }
    }
    Ok(())
}
