//! The closing table of `test` and `lint`: every step runs or is skipped, and the table says
//! which, so one failure does not hide the others.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

enum Outcome {
    Passed,
    /// With the step's error, repeated under the table: CI may show only a log's tail.
    Failed(String),
    Skipped,
}

pub struct Summary {
    title: &'static str,
    steps: Vec<(String, Outcome, Duration)>,
}

impl Summary {
    pub fn new(title: &'static str) -> Self {
        Self {
            title,
            steps: Vec::new(),
        }
    }

    /// Runs the step, reports its error at once, and returns whether it passed.
    pub fn step(&mut self, name: &str, action: impl FnOnce() -> Result<()>) -> bool {
        println!("\n==> {name}");
        let started = Instant::now();
        let result = action();
        let outcome = match &result {
            Ok(()) => Outcome::Passed,
            Err(error) => {
                eprintln!("error: {name}: {error:#}");
                Outcome::Failed(format!("{error:#}"))
            }
        };
        self.steps
            .push((name.to_string(), outcome, started.elapsed()));
        result.is_ok()
    }

    pub fn skip(&mut self, name: &str) {
        self.steps
            .push((name.to_string(), Outcome::Skipped, Duration::ZERO));
    }

    /// Prints the table; fails if any step failed.
    pub fn finish(self) -> Result<()> {
        println!("\n==> {} summary", self.title);
        let width = self
            .steps
            .iter()
            .map(|(name, ..)| name.len())
            .max()
            .unwrap_or(0);
        for (name, outcome, took) in &self.steps {
            let verdict = match outcome {
                Outcome::Passed => "ok",
                Outcome::Failed(_) => "FAILED",
                Outcome::Skipped => "skipped",
            };
            println!(
                "  {verdict:<8} {name:<width$}  {:>7.1}s",
                took.as_secs_f64()
            );
        }
        let mut failed = 0;
        for (name, outcome, _) in &self.steps {
            if let Outcome::Failed(error) = outcome {
                failed += 1;
                println!("\n  {name} failed: {error}");
            }
        }
        if failed > 0 {
            bail!(
                "{}: {failed} of {} steps failed",
                self.title,
                self.steps.len()
            );
        }
        println!("  all steps passed");
        Ok(())
    }
}
