//! CSV imports: never a panic, nothing the daemon would refuse, and import → export →
//! import gives back the same list.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| allowlist_fuzz::csv(data));
