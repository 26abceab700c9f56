//! The figures a run produces, written as they come to a tab-separated file that
//! `cargo xtask bench` turns into tables and BENCHMARKS.md:
//!
//! ```text
//! figure <TAB> key <TAB> unit <TAB> median <TAB> min <TAB> max <TAB> runs
//! note   <TAB> key <TAB> text
//! ```

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};

pub struct Results {
    path: PathBuf,
    lines: Vec<String>,
}

impl Results {
    pub fn new(path: PathBuf) -> Self {
        Results {
            path,
            lines: Vec::new(),
        }
    }

    /// Records the median of `samples` (one per run) under `key`; returns the median.
    pub fn figure(&mut self, key: &str, unit: &str, samples: &[f64]) -> Result<f64> {
        let median = median(samples);
        let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        println!(
            "  {key:<48} {median:>12.3} {unit:<6} (min {min:.3}, max {max:.3}, {} runs)",
            samples.len()
        );
        self.lines.push(format!(
            "figure\t{key}\t{unit}\t{median}\t{min}\t{max}\t{}",
            samples.len()
        ));
        self.save()?;
        Ok(median)
    }

    /// A fact about the run that the report quotes (tool versions, sizes, variants).
    pub fn note(&mut self, key: &str, text: &str) -> Result<()> {
        println!("  {key}: {text}");
        self.lines
            .push(format!("note\t{key}\t{}", text.replace(['\t', '\n'], " ")));
        self.save()
    }

    fn save(&self) -> Result<()> {
        let mut text = self.lines.join("\n");
        text.push('\n');
        fs::write(&self.path, text).with_context(|| format!("writing {}", self.path.display()))
    }
}

/// The median (the mean of the middle two for an even count).
pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}
