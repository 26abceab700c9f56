//! Atlassian's `https://ip-ranges.atlassian.com/`: `{"items":[{"cidr","product":[…],
//! "direction":["egress",…],…}]}`. Connections from Atlassian's cloud come from its
//! egress ranges, so items whose `direction` does not include `egress` are left out
//! (items without `direction` are taken); `services` (empty: all) names products.

use serde::Deserialize;

use super::{wanted, BodyError, Filters, Format, Networks};

#[derive(Deserialize)]
struct Ranges {
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    cidr: String,
    #[serde(default)]
    product: Vec<String>,
    direction: Option<Vec<String>>,
}

pub(super) fn parse(
    body: &[u8],
    filters: &Filters,
    networks: &mut Networks,
) -> Result<(), BodyError> {
    let ranges: Ranges =
        serde_json::from_slice(body).map_err(|error| BodyError::shape(Format::Atlassian, error))?;
    for (index, item) in ranges.items.iter().enumerate() {
        let egress = item
            .direction
            .as_ref()
            .is_none_or(|directions| directions.iter().any(|d| d == "egress"));
        let product = filters.services.is_empty()
            || item.product.iter().any(|p| wanted(&filters.services, p));
        if egress && product {
            networks.add(|| format!("items[{index}].cidr"), &item.cidr)?;
        }
    }
    Ok(())
}
