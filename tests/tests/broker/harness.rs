//! The broker under test and the waits every test uses; the process itself is
//! [`sluice_tests::broker::BrokerProcess`].

use std::path::Path;
use std::time::Duration;

use sluice_client::Client;
use sluice_tests::broker::BrokerProcess;

/// How long any single wait in these tests may take.
pub const WAIT: Duration = sluice_tests::broker::WAIT;

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
        within("connect", Client::connect(&self.url()))
            .await
            .expect("connect")
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

/// Runs `f` under the test-wide time limit.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}
