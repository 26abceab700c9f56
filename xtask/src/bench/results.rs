//! Reading what the benchmark runner recorded (see tests/examples/bench/results.rs):
//!
//! ```text
//! figure <TAB> key <TAB> unit <TAB> median <TAB> min <TAB> max <TAB> runs
//! note   <TAB> key <TAB> text
//! ```

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{bail, Context as _, Result};

/// One figure: the median of `runs` runs.
#[derive(Clone, Debug)]
pub struct Figure {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

#[derive(Debug, Default)]
pub struct Results {
    figures: BTreeMap<String, Figure>,
    notes: BTreeMap<String, String>,
}

impl Results {
    pub fn read(path: &Path) -> Result<Results> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Results::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Results> {
        let mut results = Results::default();
        for (number, line) in text.lines().enumerate() {
            let fields: Vec<&str> = line.split('\t').collect();
            let number = number + 1;
            match fields.as_slice() {
                ["figure", key, _unit, median, min, max, runs] => {
                    let parse = |text: &str| -> Result<f64> {
                        text.parse()
                            .with_context(|| format!("line {number}: bad number {text:?}"))
                    };
                    results.figures.insert(
                        key.to_string(),
                        Figure {
                            median: parse(median)?,
                            min: parse(min)?,
                            max: parse(max)?,
                            runs: runs
                                .parse()
                                .with_context(|| format!("line {number}: bad run count"))?,
                        },
                    );
                }
                ["note", key, text] => {
                    results.notes.insert(key.to_string(), text.to_string());
                }
                [""] => {}
                _ => bail!("line {number}: not a figure or a note: {line:?}"),
            }
        }
        Ok(results)
    }

    pub fn figure(&self, key: &str) -> Option<&Figure> {
        self.figures.get(key)
    }

    /// The median of a figure, if the run measured it.
    pub fn median(&self, key: &str) -> Option<f64> {
        self.figure(key).map(|figure| figure.median)
    }

    pub fn note(&self, key: &str) -> Option<&str> {
        self.notes.get(key).map(String::as_str)
    }

    /// Every figure key starting with `prefix`.
    pub fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> {
        self.figures
            .keys()
            .filter(move |key| key.starts_with(prefix))
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_figures_and_notes() {
        let results =
            Results::parse("note\tmode\tquick\nfigure\tper_packet.noop\tns\t7\t6\t9\t3\n").unwrap();
        assert_eq!(results.note("mode"), Some("quick"));
        let noop = results.figure("per_packet.noop").unwrap();
        assert_eq!(
            (noop.median, noop.min, noop.max, noop.runs),
            (7.0, 6.0, 9.0, 3)
        );
        assert!(Results::parse("figure\tx\n").is_err());
    }
}
