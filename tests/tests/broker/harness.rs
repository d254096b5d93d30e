//! Starts the real `sluice` binary on a free port and a temporary data directory, and stops
//! it by its process id.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sluice_client::Client;

/// How long any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(60);

/// The `sluice` binary built with this test (cargo builds every workspace binary first).
pub fn sluice_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = dir.join("sluice");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bin sluice` (scripts/test does)",
        bin.display()
    );
    bin
}

/// A running broker; killed (SIGKILL) when dropped if still running.
pub struct Broker {
    child: Option<Child>,
    /// `host:port` it listens on.
    pub addr: String,
    stderr: mpsc::Receiver<String>,
}

impl Broker {
    /// Starts a broker on `dir` and waits for its "listening" line.
    pub fn start(dir: &Path) -> Broker {
        Self::start_with(dir, &[])
    }

    /// Starts a broker with extra `serve` flags.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Broker {
        let mut child = Command::new(sluice_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("SLUICE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sluice");
        let stdout = child.stdout.take().expect("stdout");
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = line_tx.send(line);
            }
            for _ in lines {}
        });
        let stderr = child.stderr.take().expect("stderr");
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        let line = match line_rx.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log: Vec<String> = err_rx.try_iter().collect();
                panic!("sluice did not start:\n{}", log.join("\n"));
            }
        };
        let addr = line
            .strip_prefix("sluice listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_owned();
        Broker {
            child: Some(child),
            addr,
            stderr: err_rx,
        }
    }

    /// The connection URL.
    pub fn url(&self) -> String {
        format!("sluice://guest:guest@{}", self.addr)
    }

    /// Connects a client.
    pub async fn client(&self) -> Client {
        tokio::time::timeout(WAIT, Client::connect(&self.url()))
            .await
            .expect("connect in time")
            .expect("connect")
    }

    /// SIGKILL: a crash.
    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let status = child.wait();
            let _ = tx.send(());
            (child, status)
        });
        if rx.recv_timeout(WAIT).is_err() {
            // Do not leave it running: kill it by its id, then fail.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            let _ = waiter.join();
            panic!("sluice did not stop on SIGTERM: {}", self.log());
        }
        let (_, status) = waiter.join().expect("waiter");
        let status = status.expect("wait");
        assert!(
            status.success(),
            "sluice exited with {status}: {}",
            self.log()
        );
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `f` under the test-wide time limit.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}
