//! Storage tests on real files: no mocks. A "crash" is a copy of the data directory taken
//! while the store is running (exactly what the disk holds if the process dies then), optionally
//! with the pages a power loss could lose zeroed; recovery then runs on the copy.

mod damage;
mod descriptors;
mod full_disk;
mod fuzz_like;
mod lifecycle;
mod model;
pub(crate) mod support;
