//! Benchmarks for Sluice.
//!
//! - [`storage`]: the storage engine against the raw disk (binary `storage-bench`).
//! - [`load`]: the load generator against Sluice, RabbitMQ and NATS JetStream (binary
//!   `sluice-bench`).

pub mod load;
pub mod storage;
