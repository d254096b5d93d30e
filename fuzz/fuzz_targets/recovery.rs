#![no_main]
//! See docs/fuzzing.md and `sluice_fuzz::recovery` for the input and the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::recovery::check(data));
