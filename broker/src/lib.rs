//! Sluice broker: a persistent message broker for producer/consumer microservices.
//!
//! # Layout
//! - [`config`]: settings from flags, `SLUICE_*` variables and a TOML file.
//! - [`server`]: the TCP listeners, the connection limit and graceful shutdown.
//! - [`tls`]: TLS on the client and HTTP ports: the certificate, mutual TLS, reload on SIGHUP.
//! - [`limits`]: the descriptor limit, and the share of it connections may take.
//! - `connection`: one task set per client: handshake, reading frames, the session that
//!   answers requests, writing frames.
//! - [`cluster`]: Raft groups (openraft) over our own raft log, the cluster transport, the
//!   metadata group (members, replicated-queue catalog); absent unless `--node-id` is given.
//! - [`broker`]: shared state: the registry of queues and the routing table, the durable
//!   topology ([`definitions`]).
//! - [`queue`]: one task per queue: its log, ready messages, consumers, deliveries in flight.
//! - [`moves`]: moving ready messages from one queue to another (redrive), crash-safe, as a
//!   task operators follow by id.
//! - [`routing`]: exchanges, bindings and the AMQP 0-9-1 matching rules.
//! - `publish`: the checks and routing of one published message, shared by the sessions and
//!   the HTTP API.
//! - [`storage`]: the crash-safe, segmented, memory-mapped log that holds every durable queue.
//! - [`topology`]: the topology as JSON, for `sluice definitions` and `/api/definitions`.
//! - [`auth`]: who may do what: vhosts, users' tags, permissions (configure/write/read).
//! - [`admin`]: listings for operators (queues, exchanges, bindings, consumers).
//! - [`http`]: the HTTP admin API (axum): the same listings and changes as JSON, health probes,
//!   `/metrics`.
//! - [`metrics`]: what `/metrics` exports: broker-wide histograms and the scrape's collector,
//!   which reads the queues' counters ([`queue::QueueStats`]) without asking the queues.
//! - [`error`]: broker failures as wire error codes, in one place.
//! - [`flow`]: publisher flow control: blocked while the disk is nearly full or memory use is
//!   above its limit.
//! - [`cli`]: the admin commands of the `sluice` binary (listings, declare/delete/purge,
//!   publish and consume from the shell), built on the Rust client.
//!
//! The wire format itself lives in [`sluice_client::wire`], shared with the clients.
pub mod admin;
pub mod auth;
pub mod broker;
pub mod chaos;
pub mod cli;
pub mod cluster;
pub mod config;
mod connection;
pub mod definitions;
pub mod error;
pub mod flow;
pub mod http;
pub mod limits;
pub mod message_trace;
pub mod metrics;
pub mod moves;
mod publish;
pub mod queue;
pub mod routing;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod tls;
pub mod topology;

#[cfg(test)]
mod tests;
