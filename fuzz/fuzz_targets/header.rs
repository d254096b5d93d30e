#![no_main]
//! See docs/fuzzing.md and `sluice_fuzz::header` for the input and the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::header::check(data));
