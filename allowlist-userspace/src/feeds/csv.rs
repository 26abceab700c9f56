//! CSV as `allowlistctl export` writes it (`ip_address,description[,ports,expires_at]`),
//! read by the same reader as `import`. The feed takes the addresses; its ports are the
//! feed's `ports`.

use super::{BodyError, Format, Networks};

pub(super) fn parse(body: &[u8], networks: &mut Networks) -> Result<(), BodyError> {
    let rows = crate::csv_format::read_rows(body, crate::clock::now()).map_err(|bad| {
        let first = bad
            .first()
            .map(|row| format!("line {}: {}", row.line, row.problem))
            .unwrap_or_default();
        BodyError::shape(
            Format::Csv,
            super::shorten(format!("{} bad rows, the first: {first}", bad.len())),
        )
    })?;
    for row in rows.rows {
        let network = row.network.to_string();
        networks.add(|| format!("line {}", row.line), &network)?;
    }
    Ok(())
}
