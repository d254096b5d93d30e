//! Process-level tests of Sluice on real files.
//!
//! The storage tests inside `sluice-broker` simulate a crash by copying a data directory while
//! the store runs. The tests in this crate crash for real: a child process (the `log_writer`
//! binary of this crate) appends to a store and reports on stdout what it has confirmed, the
//! test kills it with SIGKILL (or lets it run into a file-size limit), then reopens the
//! directory and checks that every confirmed message is still there, byte for byte.
//!
//! # Modules
//! - [`workload`]: the deterministic messages the writer appends and the tests expect back,
//!   and the store settings both sides use.
//! - [`protocol`]: the line protocol the writer speaks on stdout.
//! - [`broker`]: the real `sluice` binary as a child process, for the end-to-end suites.
//! - [`cluster`]: a cluster of `sluice serve` processes on loopback (kill, restart, wipe).
//! - [`child`]: a child process with a line reader, bounded waits and kill-on-drop.
//! - [`history`]: what clients saw of each message in a cluster test, and its model check
//!   (no confirmed message lost, no acked one back).
//! - [`http`]: a minimal HTTP/1.1 client for the broker's admin API.
//! - [`ledger`]: what the writer has confirmed so far, and the check of a reopened log
//!   against it.
//! - [`otlp`]: an OTLP/HTTP receiver that keeps the spans the broker exports.
//! - [`proxy`]: a fault-injecting TCP proxy (refuse, blackhole, cut; per source IP).
//! - [`tmpfs`]: a small tmpfs mounted for one test, for a real full disk.
//! - [`writer`]: the commands that start the writer, and reopening what it wrote.

pub mod broker;
pub mod child;
pub mod cluster;
pub mod history;
pub mod http;
pub mod ledger;
pub mod otlp;
pub mod protocol;
pub mod proxy;
pub mod tmpfs;
pub mod workload;
pub mod writer;
