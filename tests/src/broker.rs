//! The real `sluice` binary as a child process: started on a free port and a data directory,
//! stopped by its process id. Shared by the end-to-end suites (`tests/broker`, `tests/cli.rs`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Longest wait for the broker's first line, for a clean stop, or for one CLI command (debug
/// builds on a busy two-core machine).
pub const WAIT: Duration = Duration::from_secs(60);

/// A client of `broker`, connected within [`WAIT`].
pub async fn connect(broker: &BrokerProcess) -> sluice_client::Client {
    within("connect", sluice_client::Client::connect(&broker.url()))
        .await
        .expect("connect")
}

/// The consumer's next delivery, within [`WAIT`].
pub async fn next_delivery(consumer: &mut sluice_client::Consumer) -> sluice_client::Message {
    use futures_util::StreamExt;
    within("a delivery", consumer.next())
        .await
        .expect("the consumer ended")
        .expect("a delivery")
}

/// Runs `f` under the test-wide time limit ([`WAIT`]); panics naming `what` if it runs out.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Environment settings that would change what the broker or the CLI do; removed from every
/// child so the developer's shell cannot leak into a test.
const SLUICE_VARIABLES: &[&str] = &[
    "SLUICE_URL",
    "SLUICE_CONFIG",
    "SLUICE_DATA_DIR",
    "SLUICE_LISTEN",
    "SLUICE_HTTP_LISTEN",
    "SLUICE_TLS_CERT",
    "SLUICE_TLS_KEY",
    "SLUICE_TLS_CLIENT_CA",
    "SLUICE_TLS_LISTEN",
    "SLUICE_SEGMENT_BYTES",
    "SLUICE_MAX_MESSAGE_BYTES",
    "SLUICE_HEARTBEAT_MS",
    "SLUICE_USERS",
    "SLUICE_USERS_FILE",
    "SLUICE_LOOPBACK_USERS",
    "SLUICE_PASSWORD",
    "SLUICE_NEW_PASSWORD",
    "SLUICE_MIN_FREE_DISK_BYTES",
    "SLUICE_SLOW_CONSUMER_TIMEOUT_MS",
    "SLUICE_MAX_MEMORY_BYTES",
    "SLUICE_MAX_CONNECTIONS",
    "SLUICE_HANDSHAKE_TIMEOUT_MS",
    "SLUICE_LOG",
    "SLUICE_LOG_FORMAT",
    "SLUICE_NODE_ID",
    "SLUICE_CLUSTER_LISTEN",
    "SLUICE_CLUSTER_ADVERTISE",
    "SLUICE_CLUSTER_JOIN",
    "SLUICE_CLUSTER_ELECTION_TIMEOUT_MS",
];

/// The `sluice` binary of the target directory the running test was built into
/// (`target/<profile>/`; tests run from `target/<profile>/deps/`). `scripts/test` builds it.
pub fn sluice_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let mut dir = exe.parent().expect("the test's directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(format!("sluice{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build --workspace --bins` (scripts/test does)",
        bin.display()
    );
    bin
}

/// A `sluice` command with no `SLUICE_*` variables from the environment.
pub fn sluice_command() -> Command {
    let mut cmd = Command::new(sluice_bin());
    for var in SLUICE_VARIABLES {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs an offline users-file command, `sluice ARGS --data-dir DATA_DIR` (`user add ...`,
/// `vhost add ...`, `permissions set ...`), with `SLUICE_NEW_PASSWORD` set to `new_password`
/// when given; panics with its stderr unless it succeeds. Returns its stdout. A broker started
/// on `data_dir` afterwards finds the users file as edited (created with `guest` first if
/// there was none).
pub fn users_file_command(data_dir: &Path, args: &[&str], new_password: Option<&str>) -> String {
    let mut cmd = sluice_command();
    cmd.args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(password) = new_password {
        cmd.env("SLUICE_NEW_PASSWORD", password);
    }
    let child = cmd.spawn().expect("start sluice");
    let output = wait_output(child);
    assert!(
        output.status.success(),
        "sluice {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Waits (bounded by [`WAIT`]) for `child` and collects its piped output.
pub fn wait_output(child: Child) -> std::process::Output {
    let (tx, rx) = mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT) {
        Ok(output) => output.expect("waiting for sluice"),
        Err(_) => {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            panic!("sluice did not finish within {WAIT:?}")
        }
    }
}

/// Waits for `child` at most `limit`; kills it (by its pid) and returns `None` past that.
pub fn wait_bounded(mut child: Child, limit: Duration) -> Option<ExitStatus> {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(());
        status
    });
    if rx.recv_timeout(limit).is_err() {
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        let _ = waiter.join();
        return None;
    }
    waiter.join().expect("waiter thread").ok()
}

/// A running `sluice serve`; SIGKILLed and reaped when dropped if still running.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Option<Child>,
    addr: String,
    http_addr: Option<String>,
    tls_addr: Option<String>,
    cluster_addr: Option<String>,
    stderr: mpsc::Receiver<String>,
}

impl BrokerProcess {
    /// Starts `sluice serve --data-dir DIR --listen 127.0.0.1:0 EXTRA...` and waits (bounded)
    /// for the stdout lines which name the port, the HTTP API's port and the TLS port (and,
    /// when `EXTRA` sets `--cluster-listen`, the cluster listener's address). Unless `EXTRA`
    /// sets `--http-listen`, the HTTP API listens on a free port too (`127.0.0.1:0`): brokers
    /// of tests running in parallel would collide on the default one. `EXTRA` may set
    /// `--listen` itself (`--listen off`).
    pub fn start(data_dir: &Path, extra: &[&str]) -> BrokerProcess {
        Self::start_with(data_dir, extra, |_| {})
    }

    /// Like [`start`](Self::start), with `customize` applied to the command just before it is
    /// spawned: more environment, or a resource limit set in the child with
    /// `std::os::unix::process::CommandExt::pre_exec`.
    pub fn start_with(
        data_dir: &Path,
        extra: &[&str],
        customize: impl FnOnce(&mut Command),
    ) -> BrokerProcess {
        let mut cmd = sluice_command();
        cmd.arg("serve").arg("--data-dir").arg(data_dir);
        if !extra.iter().any(|a| a.starts_with("--listen")) {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if !extra.iter().any(|a| a.starts_with("--http-listen")) {
            cmd.args(["--http-listen", "127.0.0.1:0"]);
        }
        let clustered = extra.iter().any(|a| a.starts_with("--cluster-listen"));
        // `SLUICE_TEST_LOG` sets the brokers' log filter, to see what they did in a failure.
        let log_filter = std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "warn".into());
        cmd.args(extra)
            .env("SLUICE_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        customize(&mut cmd);
        let mut child = cmd.spawn().expect("start sluice serve");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Forwards until `start` has what it needs and drops the receiver; the rest of
            // stdout is read and dropped so the broker never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = line_tx.send(line);
            }
        });
        let stderr = child.stderr.take().expect("stderr is piped");
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        let mut broker = BrokerProcess {
            child: Some(child),
            addr: String::new(),
            http_addr: None,
            tls_addr: None,
            cluster_addr: None,
            stderr: err_rx,
        };
        let mut announced = Announced::default();
        // The lines are told apart by their prefix, so a cluster line may come anywhere.
        while !announced.complete(clustered) {
            let line = match line_rx.recv_timeout(WAIT) {
                Ok(line) => line,
                Err(_) => panic!(
                    "sluice did not announce its addresses (so far {announced:?}):\n{}",
                    broker.log()
                ),
            };
            announced.take(&line);
        }
        broker.addr = announced.client.flatten().unwrap_or_default();
        broker.http_addr = announced.http.flatten();
        broker.tls_addr = announced.tls.flatten();
        broker.cluster_addr = announced.cluster;
        broker
    }

    /// `host:port` of its cluster listener, when started with `--cluster-listen`.
    pub fn cluster_addr(&self) -> Option<&str> {
        self.cluster_addr.as_deref()
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Its peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:") * 1024
    }

    /// Its resident memory now (`VmRSS`), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:") * 1024
    }

    /// Whether the process is still running (not exited, not killed).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `host:port` it listens on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `host:port` of its TLS port, unless TLS is off.
    pub fn tls_addr(&self) -> Option<&str> {
        self.tls_addr.as_deref()
    }

    /// `host:port` of its HTTP admin API, unless that is off.
    pub fn http_addr(&self) -> Option<&str> {
        self.http_addr.as_deref()
    }

    /// The connection URL, as guest.
    pub fn url(&self) -> String {
        format!("sluice://guest:guest@{}", self.addr)
    }

    /// The URL for the CLI's `--url`, which refuses passwords: no user info, so the CLI logs
    /// in as the client's default user, guest (from loopback, where guest is allowed).
    pub fn cli_url(&self) -> String {
        format!("sluice://{}", self.addr)
    }

    /// Runs `sluice --url URL ARGS` against this broker to completion (bounded) and returns
    /// its stdout; panics with its stderr if it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let child = sluice_command()
            .arg("--url")
            .arg(self.cli_url())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sluice");
        let output = wait_output(child);
        assert!(
            output.status.success(),
            "sluice {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8 output")
    }

    /// SIGKILL: a crash.
    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL, and returns what it logged that was not read yet, up to its last line.
    pub fn kill9_and_log(mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.rest_of_log()
    }

    /// SIGTERM, then a bounded wait for a clean exit; panics if it does not come.
    pub fn stop(self) {
        self.stop_and_log();
    }

    /// Like [`stop`](Self::stop), and returns what it logged that was not read yet, up to
    /// its last line (what it says while stopping included).
    pub fn stop_and_log(mut self) -> String {
        self.stop_child();
        self.rest_of_log()
    }

    /// Once the process is gone: its stderr lines not read yet.
    fn rest_of_log(&self) -> String {
        let mut lines = Vec::new();
        // The reader thread ends at the end of the pipe, which came with the exit.
        while let Ok(line) = self.stderr.recv_timeout(WAIT) {
            lines.push(line);
        }
        lines.join("\n")
    }

    fn stop_child(&mut self) {
        let child = self.child.take().expect("running");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        match wait_bounded(child, WAIT) {
            Some(status) => assert!(
                status.success(),
                "sluice exited with {status}: {}",
                self.log()
            ),
            None => panic!("sluice did not stop on SIGTERM: {}", self.log()),
        }
    }

    /// Reads its stderr until a line satisfies `wanted`, waiting at most `limit` in all;
    /// returns the lines read, the matching one last. Panics with what was read if none does.
    pub fn wait_for_log(&self, limit: Duration, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = std::time::Instant::now() + limit;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let found = wanted(&line);
                    lines.push(line);
                    if found {
                        return lines;
                    }
                }
                Err(_) => panic!(
                    "no such log line within {limit:?}; the log was:\n{}",
                    lines.join("\n")
                ),
            }
        }
    }

    /// What it logged on stderr so far.
    pub fn log(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }
}

/// The addresses a starting broker announced on stdout so far; `Some(None)` is a listener
/// announced as off.
#[derive(Debug, Default)]
struct Announced {
    client: Option<Option<String>>,
    http: Option<Option<String>>,
    tls: Option<Option<String>>,
    cluster: Option<String>,
    /// Other lines, kept for the failure message.
    other: Vec<String>,
}

impl Announced {
    /// Takes in one stdout line.
    fn take(&mut self, line: &str) {
        let on_off = |rest: &str| {
            rest.strip_prefix("on ")
                .map(|addr| addr.split_whitespace().next().unwrap_or("").to_owned())
        };
        // "sluice listening on 127.0.0.1:PORT (data directory ...)" or "sluice listening off (...)"
        if let Some(rest) = line.strip_prefix("sluice listening ") {
            self.client = Some(on_off(rest));
        } else if let Some(rest) = line.strip_prefix("sluice http ") {
            self.http = Some(on_off(rest));
        } else if let Some(rest) = line.strip_prefix("sluice tls ") {
            self.tls = Some(on_off(rest));
        } else if let Some(addr) = line.strip_prefix("cluster listening on ") {
            self.cluster = Some(addr.trim().to_owned());
        } else {
            self.other.push(line.to_owned());
        }
    }

    fn complete(&self, clustered: bool) -> bool {
        self.client.is_some()
            && self.http.is_some()
            && self.tls.is_some()
            && (!clustered || self.cluster.is_some())
    }
}

/// A `kB` field of `/proc/PID/status`.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
