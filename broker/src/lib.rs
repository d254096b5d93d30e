//! Sluice broker: a persistent message broker for producer/consumer microservices.
//!
//! # Layout
//! - [`storage`]: the crash-safe, segmented, memory-mapped log that holds every durable queue.
//! - [`routing`]: exchanges, bindings and the AMQP 0-9-1 matching rules.
pub mod routing;
pub mod storage;
