//! The hand-written analyses in BENCHMARKS.md: why a target is missed, and what would
//! close it. They are not generated, because no run can know them and text generated
//! from format strings goes stale as the code changes; each sits between markers,
//!
//! ```text
//! <!-- analysis:drop-rate -->
//! **Why.** …
//! <!-- /analysis -->
//! ```
//!
//! and `cargo xtask bench` carries every block over unchanged when it rewrites the file,
//! writing this run's figures around it.

use std::{collections::BTreeMap, fs, io, path::Path};

use anyhow::{bail, Context as _, Result};

const START: &str = "<!-- analysis:";
const START_CLOSE: &str = " -->";
const END: &str = "<!-- /analysis -->";

/// The analyses of a BENCHMARKS.md, by key, each exactly as written between its markers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Analyses(BTreeMap<String, String>);

impl Analyses {
    /// The analyses of the file at `path`; none if there is no file yet.
    pub fn read(path: &Path) -> Result<Analyses> {
        match fs::read_to_string(path) {
            Ok(text) => Analyses::parse(&text).with_context(|| format!("in {}", path.display())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Analyses::default()),
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Every block of `text`. A block left open, one opened inside another, or a key used
    /// twice is an error: written back, such a file would lose text.
    pub fn parse(text: &str) -> Result<Analyses> {
        let mut analyses = BTreeMap::new();
        let mut rest = text;
        while let Some(at) = rest.find(START) {
            let offset = text.len() - rest.len() + at;
            let line = 1 + text[..offset].matches('\n').count();
            let after = &rest[at + START.len()..];
            let Some(key_end) = after.find(START_CLOSE) else {
                bail!("line {line}: an analysis marker without its closing `{START_CLOSE}`");
            };
            let key = &after[..key_end];
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                bail!("line {line}: {key:?} is not an analysis key (letters, digits and -)");
            }
            let body = &after[key_end + START_CLOSE.len()..];
            let Some(end) = body.find(END) else {
                bail!("line {line}: the analysis {key:?} has no `{END}` after it");
            };
            if body[..end].contains(START) {
                bail!("line {line}: the analysis {key:?} holds another one's marker before its `{END}`");
            }
            if analyses
                .insert(key.to_string(), body[..end].to_string())
                .is_some()
            {
                bail!("line {line}: a second analysis {key:?}; keep one");
            }
            rest = &body[end + END.len()..];
        }
        Ok(Analyses(analyses))
    }

    /// Fails for a block whose key is none of `known`: the report would not write it
    /// back, and its text would be lost.
    pub fn check_keys(&self, known: &[&str]) -> Result<()> {
        for key in self.0.keys() {
            if !known.contains(&key.as_str()) {
                bail!(
                    "BENCHMARKS.md has an analysis {key:?}, which is no topic of the report \
                     ({}); rename or remove it",
                    known.join(", ")
                );
            }
        }
        Ok(())
    }

    /// The block of `key` with its markers, for the report to write: what the file had,
    /// unchanged, or an invitation to write one.
    pub fn block(&self, key: &str) -> String {
        let body = self.0.get(key).map_or(
            "\n*Not analysed yet: write why this target is missed, and what would close it, \
             between these markers; `cargo xtask bench` keeps what is there.*\n",
            String::as_str,
        );
        format!("{START}{key}{START_CLOSE}{body}{END}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# Benchmarks\n\nfigures\n\n\
        <!-- analysis:drop-rate -->\n**Why.** Cache misses.\n\n**What would close it.** \
        A smaller screen.\n<!-- /analysis -->\n\nmore figures\n\
        <!-- analysis:memory -->kept *exactly*, even  spacing<!-- /analysis -->\n";

    #[test]
    fn blocks_are_read_exactly_as_written_between_their_markers() {
        let analyses = Analyses::parse(FILE).unwrap();
        assert_eq!(
            analyses.block("drop-rate"),
            "<!-- analysis:drop-rate -->\n**Why.** Cache misses.\n\n**What would close it.** \
             A smaller screen.\n<!-- /analysis -->"
        );
        assert_eq!(
            analyses.block("memory"),
            "<!-- analysis:memory -->kept *exactly*, even  spacing<!-- /analysis -->"
        );
        // Written back, a block reads the same again.
        let rewritten = format!("new figures\n{}\n", analyses.block("memory"));
        assert_eq!(
            Analyses::parse(&rewritten).unwrap().block("memory"),
            analyses.block("memory")
        );
    }

    #[test]
    fn a_topic_without_a_block_gets_an_invitation_that_is_kept_from_then_on() {
        let block = Analyses::default().block("config-load");
        assert!(
            block.starts_with("<!-- analysis:config-load -->"),
            "{block}"
        );
        assert!(block.contains("Not analysed yet"), "{block}");
        assert_eq!(Analyses::parse(&block).unwrap().block("config-load"), block);
    }

    #[test]
    fn malformed_blocks_and_unknown_keys_are_refused_rather_than_lost() {
        for (text, says) in [
            (
                "<!-- analysis:memory -->\nno end\n",
                "no `<!-- /analysis -->`",
            ),
            (
                "<!-- analysis:a -->1<!-- analysis:b -->2<!-- /analysis -->",
                "another one's marker",
            ),
            (
                "<!-- analysis:a -->1<!-- /analysis --><!-- analysis:a -->2<!-- /analysis -->",
                "a second analysis",
            ),
            (
                "<!-- analysis:drop rate -->1<!-- /analysis -->",
                "not an analysis key",
            ),
        ] {
            let error = Analyses::parse(text).unwrap_err().to_string();
            assert!(error.contains(says), "{text:?}: {error}");
        }
        let analyses = Analyses::parse(FILE).unwrap();
        assert!(analyses.check_keys(&["drop-rate", "memory"]).is_ok());
        let error = analyses.check_keys(&["drop-rate"]).unwrap_err().to_string();
        assert!(error.contains("\"memory\""), "{error}");
    }
}
