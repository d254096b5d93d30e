//! What the fuzz targets check, kept out of the target files so the seed generator
//! (`gen-seeds`) shares the input formats with them. docs/fuzzing.md describes each target.
//!
//! Every `check` function takes arbitrary bytes, must never panic on them, and panics (a
//! crash for libFuzzer) only when an invariant fails.

pub mod frame;
pub mod header;
pub mod meta;
pub mod recovery;
