//! Sluice client library.
//!
//! # Layout
//! - [`wire`]: the sans-I/O codec for the Sluice wire protocol (`protocol.md`). The broker
//!   reuses these types, so there is exactly one definition of every frame.
pub mod wire;
