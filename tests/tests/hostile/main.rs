//! Hostile and unlucky clients against the real `sluice` binary: each test plays one kind of
//! bad client and asserts that the broker's memory stays bounded, that a well-behaved client
//! next to it keeps being served, and that nothing confirmed is lost.

mod descriptors;
mod fuzz;
mod headers;
mod listings;
mod memory_limit;
mod slow_consumer;
mod unread_replies;

use std::path::Path;
use std::time::Duration;

use sluice_client::Client;
use sluice_tests::broker::BrokerProcess;

/// A running broker for one test.
#[derive(Debug)]
pub struct Broker {
    /// The process.
    pub process: BrokerProcess,
}

impl Broker {
    /// Starts a broker on `dir` with extra `serve` flags.
    pub fn start(dir: &Path, extra: &[&str]) -> Broker {
        Broker {
            process: BrokerProcess::start(dir, extra),
        }
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        self.process.addr()
    }

    /// Connects a well-behaved client.
    pub async fn client(&self) -> Client {
        within("connect", Client::connect(&self.process.url()))
            .await
            .expect("connect")
    }
}

pub use sluice_tests::broker::within;

impl Broker {
    /// Fails the test when the broker's peak resident memory so far is `bound` or more.
    pub fn assert_peak_rss_below(&self, bound: u64, what: &str) {
        let peak = self.process.peak_rss_bytes();
        assert!(
            peak < bound,
            "{what}: the broker's peak RSS is {} MiB, over {} MiB",
            peak >> 20,
            bound >> 20
        );
    }
}

/// A short bound for things a healthy broker answers at once, even next to a hostile client.
pub const PROMPT: Duration = Duration::from_secs(5);
