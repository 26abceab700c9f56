//! Config files: never a panic, never a start plan `allowlistd check` would refuse, and
//! what is accepted compiles to what its entries say and survives a round trip.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| allowlist_fuzz::config(data));
