//! Many map writes in one `bpf(2)` call: `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH`,
//! which aya 0.14 does not expose. Writing a whole list one element per syscall costs
//! about as much in entering the kernel as in the map update itself; a batch call runs the
//! same per-element update (or delete) in a loop inside the kernel.
//!
//! The kernel processes the elements in order and stops at the first it refuses, writing
//! back in `count` how many it processed: [`Stopped::done`]. LPM tries and hash maps take
//! both calls through the kernel's generic batch loop (hash maps since 5.6, LPM tries since
//! 5.13); a kernel or map without them answers `EINVAL` (the command is unknown),
//! `ENOTSUPP` or `EOPNOTSUPP` before writing anything, which [`Stopped::unsupported`]
//! tells, so callers fall back to one write per element.

use std::{
    io, mem,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{maps::MapData, Pod};
use aya_obj::generated::{bpf_attr, bpf_cmd};

/// The kernel-internal errno for an operation a map type lacks (`include/linux/errno.h`);
/// the batch commands return it to user space as it is.
const ENOTSUPP: i32 = 524;

/// Where a batch call stopped: the elements before `done` were written, the one at `done`
/// was refused (or the call failed as a whole when `done` is 0 or the whole batch).
#[derive(Debug)]
pub(super) struct Stopped {
    pub done: usize,
    pub error: io::Error,
}

impl Stopped {
    /// Whether the kernel has no batch call for this map (nothing was written): write one
    /// element at a time instead.
    pub fn unsupported(&self) -> bool {
        self.done == 0
            && matches!(
                self.error.raw_os_error(),
                Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
            )
    }
}

/// Adds or replaces `keys[i]` → `values[i]` in `map`, in order. `K` and `V` must be the
/// map's key and value types (their sizes are what the kernel strides by).
pub(super) fn update<K: Pod, V: Pod>(
    map: &MapData,
    keys: &[K],
    values: &[V],
) -> Result<(), Stopped> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    call(
        bpf_cmd::BPF_MAP_UPDATE_BATCH,
        map,
        keys.as_ptr().cast(),
        values.as_ptr().cast(),
        keys.len(),
    )
}

/// Removes `keys` from `map`, in order; a key not in the map stops the call (`ENOENT`).
pub(super) fn delete<K: Pod>(map: &MapData, keys: &[K]) -> Result<(), Stopped> {
    call(
        bpf_cmd::BPF_MAP_DELETE_BATCH,
        map,
        keys.as_ptr().cast(),
        std::ptr::null(),
        keys.len(),
    )
}

fn call(
    command: bpf_cmd,
    map: &MapData,
    keys: *const u8,
    values: *const u8,
    count: usize,
) -> Result<(), Stopped> {
    let Ok(count) = u32::try_from(count) else {
        return Err(Stopped {
            done: 0,
            error: io::Error::from_raw_os_error(libc::E2BIG),
        });
    };
    if count == 0 {
        return Ok(());
    }
    // SAFETY: bpf_attr is a plain C union of integers; all zeroes is the kernel's
    // "unset" for every field (no in/out batch cursor, no flags).
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    // SAFETY: writing the `batch` member of a zeroed union of integers.
    let batch = unsafe { &mut attr.batch };
    batch.map_fd = map.fd().as_fd().as_raw_fd() as u32;
    batch.keys = keys as u64;
    batch.values = values as u64;
    batch.count = count;
    // SAFETY: `attr` lives across the call and is as large as the size passed; `keys`
    // (and `values` for an update) point at `count` elements of the map's key (value)
    // size, which the kernel only reads; it writes back only `attr.batch.count`.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command as libc::c_long,
            &mut attr as *mut bpf_attr,
            mem::size_of::<bpf_attr>(),
        )
    };
    if result == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    // SAFETY: reading the integer the kernel may have written back.
    let written_back = unsafe { attr.batch.count };
    // The kernel writes back how many elements it processed once its loop ran; a call
    // refused before it (no batch command for the map, a bad argument) leaves `count` as
    // it was sent, and then nothing was written.
    let done = if written_back == count {
        0
    } else {
        written_back as usize
    };
    Err(Stopped { done, error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_before_the_first_element_in_an_unsupported_way_means_no_batch_support() {
        let stopped = |done, errno| Stopped {
            done,
            error: io::Error::from_raw_os_error(errno),
        };
        for errno in [libc::EINVAL, libc::EOPNOTSUPP, ENOTSUPP] {
            assert!(stopped(0, errno).unsupported(), "errno {errno}");
            assert!(
                !stopped(3, errno).unsupported(),
                "after 3 elements the kernel has batch calls: element 3 was refused"
            );
        }
        assert!(!stopped(0, libc::ENOSPC).unsupported());
        assert!(!stopped(0, libc::ENOENT).unsupported());
    }
}
