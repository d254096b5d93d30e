//! The broker under test and the waits every test uses; the process itself is
//! [`sluice_tests::broker::BrokerProcess`].

use std::path::Path;

use sluice_client::Client;
use sluice_tests::broker::BrokerProcess;

/// A running broker; killed (SIGKILL) when dropped if still running.
pub struct Broker {
    process: BrokerProcess,
    /// `host:port` it listens on.
    pub addr: String,
}

impl Broker {
    /// Starts a broker on `dir` and waits for its "listening" line.
    pub fn start(dir: &Path) -> Broker {
        Self::start_with(dir, &[])
    }

    /// Starts a broker with extra `serve` flags.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Broker {
        let process = BrokerProcess::start(dir, extra);
        let addr = process.addr().to_owned();
        Broker { process, addr }
    }

    /// The connection URL.
    pub fn url(&self) -> String {
        self.process.url()
    }

    /// Connects a client.
    pub async fn client(&self) -> Client {
        // These tests watch a crash end the connection (and its publishes): no reconnecting.
        let url = self.url();
        let connect = Client::builder()
            .reconnect_timeout(std::time::Duration::ZERO)
            .connect(&url);
        within("connect", connect).await.expect("connect")
    }

    /// SIGKILL: a crash.
    pub fn kill9(self) {
        self.process.kill9();
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(self) {
        self.process.stop();
    }
}

pub use sluice_tests::broker::within;
