//! The filter's errors, worded for an operator: what was being done, and the kernel's
//! reason for refusing it down to the errno.

use std::{error::Error, io};

use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("{context}: {cause}")]
    Io { context: String, cause: io::Error },
    #[error("{context}: {message}")]
    Kernel { context: String, message: String },
    #[error("{pin_path} holds a filter in map layout {version}, written by {writer}: newer than this {ours} (layout {ours_layout}), which cannot read it and has left it untouched, still enforcing. Install {writer} again, or remove the filter with `allowlistd uninstall --pin-path {pin_path}` (the host is unfiltered until a daemon starts)", ours = super::layout::WRITER, ours_layout = allowlist_common::LAYOUT_VERSION)]
    NewerLayout {
        pin_path: String,
        version: u32,
        writer: String,
    },
}

pub(super) type Result<T, E = FilterError> = std::result::Result<T, E>;

pub(super) fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> FilterError {
    let context = context.into();
    move |cause| FilterError::Io { context, cause }
}

/// aya's errors name the call that failed ("`bpf_map_update_elem` failed") and keep the
/// errno, which is what tells an operator why (a full map, a missing capability), in
/// their source chain; the message carries all of it, as every caller prints Display.
pub(super) fn kernel_error<E: Error + 'static>(
    context: impl Into<String>,
) -> impl FnOnce(E) -> FilterError {
    let context = context.into();
    move |error| FilterError::Kernel {
        context,
        message: with_causes(&error),
    }
}

fn with_causes(error: &(dyn Error + 'static)) -> String {
    let mut message = describe(error);
    let mut source = error.source();
    while let Some(cause) = source {
        // Some errors quote their cause in their own message already.
        if !message.contains(&cause.to_string()) {
            message.push_str(": ");
            message.push_str(&describe(cause));
        }
        source = cause.source();
    }
    message
}

/// An OS error with its symbolic name too, the one man pages and kernel docs use.
fn describe(cause: &(dyn Error + 'static)) -> String {
    match cause
        .downcast_ref::<io::Error>()
        .and_then(io::Error::raw_os_error)
    {
        Some(code) if Errno::from_raw(code) != Errno::UnknownErrno => {
            let errno = Errno::from_raw(code);
            format!("{} ({errno:?})", errno.desc())
        }
        _ => cause.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use aya::{maps::MapError, sys::SyscallError};

    use super::*;

    fn failed(call: &'static str, errno: i32) -> MapError {
        MapError::SyscallError(SyscallError {
            call,
            io_error: io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn a_kernel_error_says_which_call_failed_and_its_errno() {
        let error = kernel_error("adding 192.0.2.1/32 to slot 0")(failed(
            "bpf_map_update_elem",
            libc::ENOSPC,
        ));
        assert_eq!(
            error.to_string(),
            "adding 192.0.2.1/32 to slot 0: `bpf_map_update_elem` failed: No space left on device (ENOSPC)"
        );
        for (errno, name) in [(libc::E2BIG, "E2BIG"), (libc::EPERM, "EPERM")] {
            let error = kernel_error("loading")(failed("bpf_prog_load", errno));
            assert!(error.to_string().contains(name), "{error}");
        }
    }

    #[test]
    fn a_cause_the_error_already_quotes_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("opening the pin: {0}")]
        struct Quoting(#[source] io::Error);
        let error = kernel_error("taking over")(Quoting(io::Error::other("gone")));
        assert_eq!(error.to_string(), "taking over: opening the pin: gone");
    }
}
