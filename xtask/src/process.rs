//! Running external programs. Every error names the command that failed, so a newcomer
//! can copy it and run it by hand.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use anyhow::{ensure, Context as _, Result};

/// The command as one could type it into a shell (environment overrides first).
pub fn describe(cmd: &Command) -> String {
    let env = cmd.get_envs().filter_map(|(key, value)| {
        value.map(|value| {
            format!(
                "{}={}",
                key.to_string_lossy(),
                shell_word(&value.to_string_lossy())
            )
        })
    });
    let words = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|word| shell_word(&word.to_string_lossy()));
    env.chain(words).collect::<Vec<_>>().join(" ")
}

fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=+,@%[]".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs the command with the terminal as its input and output, echoing it first so logs show
/// what was run.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = describe(cmd);
    println!("$ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    ensure!(status.success(), "`{shown}` failed ({status})");
    Ok(())
}

/// Runs the command silently and returns its standard output; on failure the error carries
/// its standard error.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let shown = describe(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    ensure!(
        output.status.success(),
        "`{shown}` failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A program's output line by line, bytes that are not UTF-8 replaced rather than ending the
/// reading: a reader that stopped early would leave the program blocked on a full pipe.
pub fn lossy_lines(output: impl Read) -> impl Iterator<Item = String> {
    let mut reader = BufReader::new(output);
    std::iter::from_fn(move || {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Some(String::from_utf8_lossy(&line).into_owned())
            }
        }
    })
}

/// [`lossy_lines`] read on a thread of their own, so the caller can wait for the next with
/// a timeout (a program may stop writing without ending).
pub fn lines_in_background(output: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in lossy_lines(output) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    received
}

#[cfg(test)]
mod tests {
    use super::lossy_lines;

    #[test]
    fn lines_with_bytes_that_are_not_utf8_are_read_and_so_are_the_lines_after_them() {
        let output: &[u8] = b"first\nbad \xff byte\r\nlast without newline";
        let lines: Vec<String> = lossy_lines(output).collect();
        assert_eq!(
            lines,
            ["first", "bad \u{fffd} byte", "last without newline"]
        );
    }
}
