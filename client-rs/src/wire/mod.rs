//! The Sluice wire protocol as plain data and a sans-I/O codec (no sockets here).
mod header;

pub use header::{HeaderValue, Headers};
