//! Feed bodies in every format: never a panic; a body is taken whole or refused whole,
//! and what is taken is normalized, bounded and never allows every source.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| allowlist_fuzz::feeds(data));
