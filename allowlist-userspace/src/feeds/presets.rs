//! Documented static lists, for providers that publish fixed addresses instead of an
//! API: `preset = "NAME"` in a `[[feed]]` lists them without fetching anything.

/// A provider's documented addresses.
#[derive(Debug, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    pub description: &'static str,
    pub networks: &'static [&'static str],
    /// Where the provider documents them.
    pub source: &'static str,
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "elastic.io-eu",
        description: "elastic.io egress, app.elastic.io (EU)",
        networks: &["34.89.196.206/32", "34.159.187.160/32"],
        source: "https://docs.elastic.io/guides/egress-ip-addresses",
    },
    Preset {
        name: "elastic.io-us",
        description: "elastic.io egress, app-us.elastic.io (US)",
        networks: &["35.245.125.178/32"],
        source: "https://docs.elastic.io/guides/egress-ip-addresses",
    },
];

/// The preset called `name`, if there is one.
pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|preset| preset.name == name)
}
