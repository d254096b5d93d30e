//! The `sluice` admin commands end to end: a real broker process (`sluice serve` on a
//! temporary data directory and a free port) and the real binary's subcommands against it,
//! checked through their exit status, stdout (`--json` where the test reads values) and
//! stderr.
//!
//! The binary is the one `cargo test --workspace` builds next to this test's own executable
//! (`target/<profile>/sluice`); `cargo build -p sluice-broker --bin sluice` builds it when
//! only this crate's tests are run.

use std::io::{Read, Write};
use std::process::{ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use serde_json::Value;
use sluice_tests::broker::{sluice_command, wait_bounded, BrokerProcess, WAIT as TIMEOUT};

/// A broker process on a temporary data directory, stopped by its pid when dropped.
struct Broker {
    process: BrokerProcess,
    url: String,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts `sluice serve` on a free port and waits for the line that names the port.
    fn start() -> Broker {
        let dir = tempfile::tempdir().expect("temporary directory");
        let process = BrokerProcess::start(&dir.path().join("data"), &[]);
        let url = process.url();
        Broker {
            process,
            url,
            _dir: dir,
        }
    }

    /// Runs `sluice ARGS --url <this broker>` with `stdin` as its standard input.
    fn run_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Run {
        let mut child = sluice_command()
            .args(args)
            .args(["--url", &self.url])
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting sluice");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            pipe.write_all(input).expect("writing the command's stdin");
            // Dropping the pipe closes it: the command sees the end of its input.
        }
        let stdout = drain(child.stdout.take().expect("stdout is piped"));
        let stderr = drain(child.stderr.take().expect("stderr is piped"));
        // A bounded wait: a hung command fails the test instead of stalling it.
        let status = wait_bounded(child, TIMEOUT).unwrap_or_else(|| {
            panic!(
                "`sluice {}` did not finish within {TIMEOUT:?}",
                shell_words(args)
            )
        });
        let run = Run {
            args: shell_words(args),
            status,
            stdout: String::from_utf8(stdout.join().expect("stdout reader")).expect("UTF-8"),
            stderr: String::from_utf8(stderr.join().expect("stderr reader")).expect("UTF-8"),
        };
        eprintln!("$ sluice {}\n{}{}", run.args, run.stdout, run.stderr);
        run
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, None)
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        run.assert_success();
        run.stdout
    }

    /// Runs a `--json` command that must succeed; returns its parsed stdout.
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let stdout = self.ok(&args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "`sluice {}` printed no JSON ({e}):\n{stdout}",
                shell_words(&args)
            )
        })
    }

    /// The queue named `name` in `sluice queues --json`, if listed.
    fn queue(&self, name: &str) -> Option<Value> {
        let queues = self.json(&["queues"]);
        let queues = queues.as_array().expect("a JSON array of queues");
        queues.iter().find(|q| q["name"] == name).cloned()
    }

    /// Lists queues until `name` shows `ready` and `unacked` messages. Acks reach a queue
    /// after the command that sent them has exited (the broker answers `Close` once publishes
    /// are settled, not acks), so a listing right after may be a moment behind; each try is
    /// a whole command, which paces the retries.
    fn wait_for_counts(&self, name: &str, ready: u64, unacked: u64) -> Value {
        let started = Instant::now();
        loop {
            let queue = self
                .queue(name)
                .unwrap_or_else(|| panic!("queue {name} is not listed"));
            if queue["ready"] == ready && queue["unacked"] == unacked {
                return queue;
            }
            assert!(
                started.elapsed() < TIMEOUT,
                "{name} never showed ready={ready} unacked={unacked}: {queue}"
            );
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("broker log:\n{}", self.process.log());
        }
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Arguments as a shell would show them (empty ones quoted).
fn shell_words(args: &[&str]) -> String {
    let quoted: Vec<&str> = args
        .iter()
        .map(|a| if a.is_empty() { "\"\"" } else { *a })
        .collect();
    quoted.join(" ")
}

/// What a command did.
struct Run {
    args: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn assert_success(&self) {
        assert!(
            self.status.success(),
            "`sluice {}` failed ({}):\n{}",
            self.args,
            self.status,
            self.stderr
        );
    }
}

#[test]
fn queues_messages_and_bindings_from_the_shell() {
    let broker = Broker::start();

    let declared = broker.json(&["declare-queue", "cli-tasks", "--max-length", "100"]);
    assert_eq!(declared["name"], "cli-tasks");
    assert_eq!(declared["ready"], 0);

    // One body as an argument, one from stdin; each command waits for its confirm.
    broker.ok(&["publish", "", "cli-tasks", "hello"]);
    let run = broker.run_with_stdin(
        &["publish", "", "cli-tasks", "--header", "attempt:int=2"],
        Some(b"from stdin"),
    );
    run.assert_success();

    let queue = broker.wait_for_counts("cli-tasks", 2, 0);
    assert_eq!(queue["durable"], true, "{queue}");
    let inspected = broker.json(&["inspect", "cli-tasks"]);
    assert_eq!(inspected["arguments"]["max_length"], 100, "{inspected}");

    // `get` prints the body and acks it.
    assert_eq!(broker.ok(&["get", "cli-tasks"]), "hello\n");
    let message = broker.json(&["get", "cli-tasks"]);
    assert_eq!(message["body"], "from stdin", "{message}");
    assert_eq!(message["headers"]["attempt"], 2, "{message}");
    broker.wait_for_counts("cli-tasks", 0, 0);
    let empty = broker.run(&["get", "cli-tasks"]);
    assert_eq!(
        empty.status.code(),
        Some(3),
        "empty queue: {}",
        empty.stderr
    );
    assert_eq!(empty.stdout, "");

    // An exchange, a binding, routed and unroutable publishes.
    broker.ok(&["declare-exchange", "cli-events", "--kind", "topic"]);
    broker.ok(&["bind", "cli-tasks", "cli-events", "order.*"]);
    let bindings = broker.json(&["bindings"]);
    let bound = bindings
        .as_array()
        .expect("a JSON array of bindings")
        .iter()
        .any(|b| {
            b["exchange"] == "cli-events"
                && b["queue"] == "cli-tasks"
                && b["routing_key"] == "order.*"
        });
    assert!(bound, "binding not listed: {bindings}");
    broker.ok(&[
        "publish",
        "cli-events",
        "order.created",
        "o-1",
        "--mandatory",
    ]);
    broker.ok(&["publish", "cli-events", "order.paid", "o-2", "--mandatory"]);
    let refused = broker.run(&["publish", "cli-events", "invoice.sent", "x", "--mandatory"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(refused.stderr.starts_with("sluice: "), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("(UNROUTABLE)"),
        "{}",
        refused.stderr
    );

    // `consume --count` prints one body per line and stops; nothing is left unacked.
    assert_eq!(
        broker.ok(&["consume", "cli-tasks", "--count", "2"]),
        "o-1\no-2\n"
    );
    broker.wait_for_counts("cli-tasks", 0, 0);

    broker.ok(&["unbind", "cli-tasks", "cli-events", "order.*"]);
    assert_eq!(broker.json(&["bindings"]), Value::Array(Vec::new()));

    // Deleted, then gone from the listing; purging it now is a typed error.
    broker.ok(&["delete-queue", "cli-tasks"]);
    assert!(broker.queue("cli-tasks").is_none());
    let missing = broker.run(&["purge", "cli-tasks"]);
    assert!(!missing.status.success());
    assert_eq!(missing.stdout, "");
    assert!(missing.stderr.starts_with("sluice: "), "{}", missing.stderr);
    assert!(missing.stderr.contains("(NOT_FOUND)"), "{}", missing.stderr);
}

#[test]
fn text_listings_and_connection_errors() {
    let broker = Broker::start();
    broker.ok(&["declare-queue", "cli-text", "--transient"]);
    broker.ok(&["publish", "", "cli-text", "payload"]);

    let table = broker.ok(&["queues"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .expect("a header line")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "FLAGS",
            "READY",
            "UNACKED",
            "CONSUMERS",
            "BYTES",
            "PUBLISH/S",
            "ACK/S"
        ]
    );
    let row: Vec<&str> = lines
        .find(|l| l.starts_with("cli-text "))
        .expect("a row for cli-text")
        .split_whitespace()
        .collect();
    // Not durable: no flag letters.
    assert_eq!(&row[..5], ["cli-text", "-", "1", "0", "0"]);

    let exchanges = broker.ok(&["exchanges"]);
    assert!(
        exchanges.lines().any(|l| l.starts_with("amq.topic ")),
        "{exchanges}"
    );

    // A declare that contradicts the existing queue.
    let mismatch = broker.run(&["declare-queue", "cli-text"]);
    assert_eq!(mismatch.status.code(), Some(1));
    assert!(
        mismatch.stderr.contains("(PRECONDITION_FAILED)"),
        "{}",
        mismatch.stderr
    );

    // Wrong credentials: refused by the broker, the password not echoed.
    let url = broker.url.replace("guest:guest", "guest:not-the-password");
    let refused = sluice_command()
        .args(["queues", "--url", &url])
        .stdin(Stdio::null())
        .output()
        .expect("running sluice");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr.contains("(ACCESS_REFUSED)"), "{stderr}");
    assert!(!stderr.contains("not-the-password"), "{stderr}");
}
