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
        let url = process.cli_url();
        Broker {
            process,
            url,
            _dir: dir,
        }
    }

    /// Starts `sluice serve EXTRA...` on a free port logging at `info`, so that tests can
    /// read its log lines.
    fn start_logging(extra: &[&str]) -> Broker {
        let dir = tempfile::tempdir().expect("temporary directory");
        let process = BrokerProcess::start_with(&dir.path().join("data"), extra, |cmd| {
            cmd.env("SLUICE_LOG", "info");
        });
        let url = process.cli_url();
        Broker {
            process,
            url,
            _dir: dir,
        }
    }

    /// Runs `sluice ARGS --url <this broker>` with `stdin` as its standard input.
    fn run_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Run {
        let mut args = args.to_vec();
        args.extend(["--url", &self.url]);
        run_sluice(&args, stdin)
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

/// Runs `sluice ARGS` with `stdin` as its standard input, stdout and stderr captured (pipes,
/// as in a script), bounded in time.
fn run_sluice(args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut child = sluice_command()
        .args(args)
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
    /// Asserts the command failed with status 1 and printed exactly `message` on stderr: one
    /// line, `sluice: ` first. Returns nothing else it printed there (log lines).
    fn assert_fails_with(&self, message: &str) {
        assert_eq!(
            self.status.code(),
            Some(1),
            "`sluice {}`: {}",
            self.args,
            self.stderr
        );
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("sluice: "))
            .collect();
        assert_eq!(errors, [format!("sluice: {message}")], "{}", self.stderr);
        assert_eq!(self.stdout, "");
    }

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
            "ACK/S",
            "OLDEST"
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
    let refused = sluice_command()
        .args(["queues", "--url", &broker.url])
        .env("SLUICE_PASSWORD", "not-the-password")
        .stdin(Stdio::null())
        .output()
        .expect("running sluice");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr.contains("(ACCESS_REFUSED)"), "{stderr}");
    assert!(!stderr.contains("not-the-password"), "{stderr}");
}

// ----------------------------------------------------------------------------------------
// The command line as a new user meets it
// ----------------------------------------------------------------------------------------

#[test]
fn version_names_the_program() {
    let run = run_sluice(&["--version"], None);
    run.assert_success();
    assert_eq!(
        run.stdout,
        format!("sluice {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn url_and_json_may_come_before_the_command() {
    let broker = Broker::start();
    let run = run_sluice(
        &["--url", &broker.url, "--json", "declare-queue", "early-url"],
        None,
    );
    run.assert_success();
    let declared: Value = serde_json::from_str(&run.stdout).expect("JSON on stdout");
    assert_eq!(declared["name"], "early-url");

    // `serve` has no use for them: said plainly rather than ignored.
    let run = run_sluice(&["--url", &broker.url, "serve"], None);
    run.assert_fails_with(
        "--url is for the admin commands, not for serve; set the address to listen on with --listen",
    );
}

#[test]
fn listen_takes_a_host_name_and_the_server_prints_the_address_it_bound() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("data");
    let mut child = sluice_command()
        .args([
            "serve",
            "--listen",
            "localhost:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&data)
        .env("SLUICE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting sluice serve");
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut first = String::new();
        let _ = std::io::BufRead::read_line(&mut reader, &mut first);
        let _ = tx.send(first);
        // Keep reading: the server writes more lines, and a closed pipe is not this test's point.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let line = rx.recv_timeout(TIMEOUT);
    // Reached through the same host name, as a user would.
    let queues = line.as_ref().ok().and_then(|line| {
        let port = line
            .strip_prefix("sluice listening on 127.0.0.1:")?
            .split_whitespace()
            .next()?
            .to_owned();
        let url = format!("sluice://localhost:{port}");
        Some(run_sluice(&["queues", "--url", &url], None))
    });
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("the server printed no line");
    assert!(
        line.starts_with("sluice listening on 127.0.0.1:") && !line.contains("127.0.0.1:0 "),
        "{line}"
    );
    queues.expect("a port in the line").assert_success();
}

#[test]
fn a_host_name_that_does_not_resolve_is_one_line_naming_it() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("data");
    let data = data.to_str().expect("UTF-8 path");
    let run = run_sluice(
        &[
            "serve",
            "--listen",
            "no-such-host.invalid:5680",
            "--data-dir",
            data,
        ],
        None,
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("sluice: "))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].starts_with(
            "sluice: invalid setting listen: the host of 'no-such-host.invalid:5680' does not resolve"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn a_port_already_in_use_is_one_line_naming_the_address_and_exit_status_1() {
    let broker = Broker::start();
    let addr = broker.process.addr().to_owned();
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("data");
    // SLUICE_LOG unset: the default `info` lines come too, and the error is still said once.
    let run = run_sluice(
        &[
            "serve",
            "--listen",
            &addr,
            "--data-dir",
            data.to_str().expect("UTF-8 path"),
        ],
        None,
    );
    run.assert_fails_with(&format!(
        "cannot listen on {addr}: the address is already in use (is another broker running?); choose another with --listen"
    ));
    assert_eq!(run.stderr.matches("already in use").count(), 1);
    // A pipe is no terminal: no colour codes.
    assert!(!run.stderr.contains('\x1b'), "{:?}", run.stderr);
}

#[test]
fn a_start_failure_says_its_cause_once() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"").expect("a file");
    let path = file.to_str().expect("UTF-8 path");
    let run = run_sluice(
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", path],
        None,
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("sluice: "))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].starts_with(&format!("sluice: cannot open the data directory {path}: ")),
        "{}",
        errors[0]
    );
    assert_eq!(
        errors[0].matches("File exists").count(),
        1,
        "the cause repeated: {}",
        errors[0]
    );
}

#[test]
fn an_unroutable_publish_says_the_message_reached_no_queue() {
    let broker = Broker::start();
    let run = broker.run(&["publish", "amq.topic", "nobody.listens", "lost"]);
    run.assert_fails_with(
        "no queue is bound to exchange 'amq.topic' with routing key 'nobody.listens', so the message was dropped; bind a queue first (UNROUTABLE)",
    );

    // Asked for: published, and the output does not claim it went anywhere.
    let run = broker.run(&[
        "publish",
        "amq.topic",
        "nobody.listens",
        "lost",
        "--no-mandatory",
    ]);
    run.assert_success();
    assert!(
        run.stdout
            .contains("the broker does not say whether any queue took it"),
        "{}",
        run.stdout
    );
    let published = broker.json(&[
        "publish",
        "amq.topic",
        "nobody.listens",
        "x",
        "--no-mandatory",
    ]);
    assert_eq!(published["routed"], Value::Null, "{published}");

    broker.ok(&["declare-queue", "routed", "--transient"]);
    let published = broker.json(&["publish", "", "routed", "x"]);
    assert_eq!(published["routed"], true, "{published}");
}

#[test]
fn declaring_a_queue_with_other_arguments_names_the_one_that_differs() {
    let broker = Broker::start();
    broker.ok(&["declare-queue", "limited", "--max-length", "10"]);
    let run = broker.run(&["declare-queue", "limited", "--max-length", "20"]);
    run.assert_fails_with(
        "queue 'limited' exists with other arguments; argument max_length: existing 10, requested 20 (PRECONDITION_FAILED)",
    );
    let run = broker.run(&[
        "declare-queue",
        "limited",
        "--max-length",
        "10",
        "--dead-letter-exchange",
        "dlx",
    ]);
    run.assert_fails_with(
        "queue 'limited' exists with other arguments; argument dead_letter_exchange: existing absent, requested 'dlx' (PRECONDITION_FAILED)",
    );
    assert!(!run.stderr.contains("QueueArguments"), "{}", run.stderr);
}

// ----------------------------------------------------------------------------------------
// The broker's log
// ----------------------------------------------------------------------------------------

#[test]
fn json_logs_are_one_object_a_line_and_record_each_connection() {
    let broker = Broker::start_logging(&["--log-format", "json"]);
    broker.ok(&["queues"]);
    let lines = broker
        .process
        .wait_for_log(TIMEOUT, |l| l.contains("connection closed"));
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let event = |message: &str| {
        events
            .iter()
            .find(|e| e["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} in {events:?}"))
    };
    let opened = event("connection opened");
    let closed = event("connection closed");
    for e in [opened, closed] {
        let peer: std::net::SocketAddr = e["peer"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no peer address: {e}"));
        assert!(peer.ip().is_loopback(), "{e}");
        assert_eq!(e["user"], "guest", "{e}");
        assert_eq!(
            e["client"],
            format!("sluice-client-rs {}", env!("CARGO_PKG_VERSION")),
            "{e}"
        );
        assert_eq!(e["connection_name"], "sluice-cli", "{e}");
        assert_eq!(e["level"], "INFO", "{e}");
    }
    assert!(closed["duration_ms"].is_u64(), "{closed}");
    let reason = closed["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("closed by the client"), "{closed}");
}

#[test]
fn text_logs_have_no_colour_in_a_pipe_and_record_connections_and_failed_logins() {
    let broker = Broker::start_logging(&[]);
    broker.ok(&["queues"]);
    let mut lines = broker
        .process
        .wait_for_log(TIMEOUT, |l| l.contains("connection closed"));
    let closed = lines.last().expect("the matching line").clone();
    for field in [
        "peer=\"127.0.0.1:",
        "user=\"guest\"",
        "client=\"sluice-client-rs ",
        "connection_name=\"sluice-cli\"",
        "duration_ms=",
        "reason=\"closed by the client",
    ] {
        assert!(closed.contains(field), "no {field} in: {closed}");
    }
    assert!(
        lines.iter().any(|l| l.contains("connection opened")),
        "{lines:?}"
    );

    let url = broker.url.replace("sluice://", "sluice://mallory@");
    let refused = sluice_command()
        .args(["queues", "--url", &url])
        .env("SLUICE_PASSWORD", "guess")
        .stdin(Stdio::null())
        .output()
        .expect("running sluice");
    assert_eq!(refused.status.code(), Some(1));
    let more = broker
        .process
        .wait_for_log(TIMEOUT, |l| l.contains("login failed"));
    let failed = more.last().expect("the matching line").clone();
    lines.extend(more);
    assert!(failed.contains(" WARN "), "{failed}");
    assert!(failed.contains("user=\"mallory\""), "{failed}");
    assert!(failed.contains("source=127.0.0.1"), "{failed}");
    assert!(
        !failed.contains("guess"),
        "the password is logged: {failed}"
    );
    assert!(
        lines
            .iter()
            .all(|l| !l.contains('\x1b') && !l.contains("Some(")),
        "{lines:?}"
    );
}

#[test]
fn a_broker_that_is_not_running_is_said_plainly_with_what_to_do() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("sluice://127.0.0.1:{port}");
    let run = run_sluice(&["queues", "--url", &url], None);
    run.assert_fails_with(&format!(
        "cannot connect to sluice://127.0.0.1:{port}/: nothing is listening there; start the broker with `sluice serve`, or give its address with --url"
    ));
}
