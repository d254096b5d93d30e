//! Users, passwords and vhosts end to end (issue #12): the users file edited offline with the
//! CLI and reloaded on SIGHUP, argon2id hashes only on disk, guest kept to loopback, failed
//! logins throttled per source address, the users/vhosts/permissions HTTP API with its tags,
//! and no password on the command line.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_client::{Client, CloseReason, Error, ErrorCode, QueueOptions};
use sluice_tests::broker::{
    sluice_bin, sluice_command, users_file_command, wait_output, within, BrokerProcess, WAIT,
};
use sluice_tests::http::{HttpClient, HttpResponse};

/// A broker logging at `info` (reloads and login summaries are read from its log).
struct Broker {
    process: BrokerProcess,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts on a fresh data directory, after `setup` prepared its users file.
    fn start_after(setup: impl FnOnce(&Path)) -> Broker {
        let dir = tempfile::tempdir().expect("temporary directory");
        let data = dir.path().join("data");
        setup(&data);
        let process = BrokerProcess::start_with(&data, &[], |cmd| {
            cmd.env("SLUICE_LOG", "info");
        });
        Broker {
            process,
            data,
            _dir: dir,
        }
    }

    fn users_file(&self) -> PathBuf {
        self.data.join("users.toml")
    }

    /// `sluice ARGS --data-dir <its data directory>`, which must succeed.
    fn offline(&self, args: &[&str], new_password: Option<&str>) -> String {
        users_file_command(&self.data, args, new_password)
    }

    /// SIGHUP, then waits for the log line saying how the reload went; returns it.
    fn reload(&self) -> String {
        let pid = rustix::process::Pid::from_raw(self.process.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("SIGHUP");
        let lines = self
            .process
            .wait_for_log(WAIT, |l| l.contains("SIGHUP: users file"));
        lines.last().expect("the matching line").clone()
    }

    fn url(&self, user: &str, password: &str, vhost: &str) -> String {
        format!("sluice://{user}:{password}@{}/{vhost}", self.process.addr())
    }

    /// A client that does not reconnect: these tests watch connections end.
    async fn login(&self, user: &str, password: &str, vhost: &str) -> Result<Client, Error> {
        let url = self.url(user, password, vhost);
        let connect = Client::builder()
            .reconnect_timeout(std::time::Duration::ZERO)
            .connect(&url);
        within("login", connect).await
    }

    fn http(&self, user: &str, password: &str) -> HttpClient {
        HttpClient::new(self.http_addr(), user, password)
    }

    fn http_addr(&self) -> &str {
        self.process.http_addr().expect("the HTTP API is on")
    }
}

/// The code and reason of a refused login (a `Close` instead of `Welcome`).
fn refusal(result: Result<Client, Error>) -> (Option<ErrorCode>, String) {
    match result {
        Ok(_) => panic!("the login was accepted"),
        Err(Error::ConnectionClosed(CloseReason::Server { code, reason })) => (code, reason),
        Err(e) => panic!("not a refusal: {e:?}"),
    }
}

fn json_of(r: &HttpResponse, status: u16) -> Value {
    assert_eq!(r.status, status, "{r:?}");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {r:?}"))
}

fn assert_status(r: &HttpResponse, status: u16, error: &str) -> String {
    let body = json_of(r, status);
    assert_eq!(body["error"], error, "{r:?}");
    body["message"].as_str().expect("a message").to_owned()
}

// ----------------------------------------------------------------------------------------
// The users file, edited offline
// ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_added_offline_are_stored_hashed_and_log_in_once_the_broker_reloads() {
    let broker = Broker::start_after(|_| {});
    // The first start wrote the file: guest, hashed, readable by its owner only.
    let text = std::fs::read_to_string(broker.users_file()).expect("users.toml");
    assert!(text.contains("name = \"guest\""), "{text}");
    assert!(text.contains("$argon2id$"), "{text}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(broker.users_file())
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    broker.offline(
        &["user", "add", "app", "--tags", "management"],
        Some("s3cret-pw"),
    );
    broker.offline(
        &[
            "permissions",
            "set",
            "app",
            "--vhost",
            "/",
            "--configure",
            "^app\\.",
            "--write",
            ".*",
            "--read",
            ".*",
        ],
        None,
    );
    let text = std::fs::read_to_string(broker.users_file()).unwrap();
    assert!(
        !text.contains("s3cret-pw"),
        "the password is stored: {text}"
    );
    assert_eq!(text.matches("$argon2id$").count(), 2, "{text}");
    let listed = broker.offline(&["user", "list", "--json"], None);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed,
        json!([{"name": "app", "tags": ["management"]}, {"name": "guest", "tags": ["administrator"]}])
    );

    // Not known until the broker is told.
    let (code, _) = refusal(broker.login("app", "s3cret-pw", "").await);
    assert_eq!(code, Some(ErrorCode::AccessRefused));
    let line = broker.reload();
    assert!(
        line.contains("users file reloaded") && line.contains("users=2"),
        "{line}"
    );
    let app = broker
        .login("app", "s3cret-pw", "")
        .await
        .expect("app logs in");
    app.declare_queue("app.jobs", QueueOptions::default())
        .await
        .expect("declare");

    // A new password read from standard input, never from the command line.
    let mut passwd = sluice_command()
        .args(["user", "passwd", "app", "--data-dir"])
        .arg(&broker.data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sluice user passwd");
    std::io::Write::write_all(&mut passwd.stdin.take().unwrap(), b"n3w-pw\n").unwrap();
    let output = wait_output(passwd);
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("kill -HUP"),
        "{output:?}"
    );
    broker.reload();
    let (code, reason) = refusal(broker.login("app", "s3cret-pw", "").await);
    assert_eq!(code, Some(ErrorCode::AccessRefused));
    assert_eq!(reason, "unknown user or wrong password");
    let again = broker
        .login("app", "n3w-pw", "")
        .await
        .expect("the new password");
    again.close().await.unwrap();

    // Deleted offline: the reload closes its live connection and refuses new ones.
    broker.offline(&["user", "delete", "app"], None);
    let line = broker.reload();
    assert!(line.contains("removed_users=[\"app\"]"), "{line}");
    // The reload's log line may come before the server has closed the connection: requests
    // may still be answered for a moment, until the close arrives.
    let closed = within("the connection closes", async {
        loop {
            match app.declare_queue("app.more", QueueOptions::default()).await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => return Err::<(), _>(e),
            }
        }
    })
    .await;
    match closed {
        Err(Error::ConnectionClosed(CloseReason::Server { code, reason })) => {
            assert_eq!(code, Some(ErrorCode::ConnectionForced));
            assert!(reason.contains("removed from the users file"), "{reason}");
        }
        other => panic!("the connection of a deleted user stayed open: {other:?}"),
    }
    refusal(broker.login("app", "n3w-pw", "").await);
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_users_file_keeps_the_users_the_broker_had() {
    let broker = Broker::start_after(|_| {});
    std::fs::write(broker.users_file(), "[[users]\nname = \"guest\"\n").unwrap();
    let line = broker.reload();
    assert!(
        line.contains("not reloaded") && line.contains("ERROR"),
        "{line}"
    );
    let guest = broker
        .login("guest", "guest", "")
        .await
        .expect("guest still logs in");
    guest.close().await.unwrap();
    broker.process.stop();
}

#[test]
fn a_broker_whose_users_file_does_not_load_does_not_start_and_says_why() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("users.toml"),
        "[[users]]\nname = \"app\"\npassword = \"plain\"\n",
    )
    .unwrap();
    let child = sluice_command()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--data-dir",
        ])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sluice serve");
    let output = wait_output(child);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let users_file = data.join("users.toml");
    assert!(
        stderr.contains(&format!("sluice: users file {}: ", users_file.display()))
            && stderr.contains("unknown field `password`"),
        "{stderr}"
    );
}

// ----------------------------------------------------------------------------------------
// Vhosts at login
// ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_path_names_the_vhost_and_a_user_without_permissions_there_is_refused() {
    let broker = Broker::start_after(|data| {
        users_file_command(
            data,
            &["vhost", "add", "staging", "--max-queues", "10"],
            None,
        );
        users_file_command(data, &["user", "add", "ci"], Some("ci-pw"));
        users_file_command(
            data,
            &[
                "permissions",
                "set",
                "ci",
                "--vhost",
                "staging",
                "--configure",
                ".*",
                "--write",
                ".*",
                "--read",
                ".*",
            ],
            None,
        );
    });
    let ci = broker
        .login("ci", "ci-pw", "staging")
        .await
        .expect("ci in staging");
    ci.close().await.unwrap();
    // `/` as %2F, as the empty path, and as no path at all.
    for url in [
        broker.url("ci", "ci-pw", "%2F"),
        broker.url("ci", "ci-pw", ""),
        format!("sluice://ci:ci-pw@{}", broker.process.addr()),
    ] {
        let (code, reason) = refusal(within("login", Client::connect(&url)).await);
        assert_eq!(code, Some(ErrorCode::AccessRefused));
        assert_eq!(
            reason,
            "access to vhost '/' refused for user 'ci': no permissions there"
        );
    }
    let (_, reason) = refusal(broker.login("ci", "ci-pw", "prod").await);
    assert_eq!(
        reason,
        "access to vhost 'prod' refused for user 'ci': no such vhost"
    );
    let (code, reason) = refusal(broker.login("ci", "ci-pw", "a%01b").await);
    assert_eq!(code, Some(ErrorCode::AccessRefused));
    assert_eq!(
        reason,
        "invalid vhost name 'a\\u{1}b': it contains a control character"
    );
    let guest = broker
        .login("guest", "guest", "%2F")
        .await
        .expect("guest in /");
    guest.close().await.unwrap();
    broker.process.stop();
}

// ----------------------------------------------------------------------------------------
// guest from loopback only
// ----------------------------------------------------------------------------------------

/// Runs `script` as root of a new user and network namespace (`unshare -rn`), where
/// 198.51.100.7 is an address of the namespace's own loopback interface: a broker listening
/// there sees its clients come from a non-loopback address, and no packet leaves the
/// namespace. `None` when `unshare` cannot make one here.
fn in_network_namespace(script: &str, env: &[(&str, &Path)]) -> Option<String> {
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["-rn", "sh", "-c", script])
        .env("SLUICE", sluice_bin())
        .env_remove("SLUICE_URL")
        .env_remove("SLUICE_PASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        cmd.env(name, value);
    }
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("SKIPPED: `unshare` cannot be run here ({e}); the namespace test needs it");
            return None;
        }
    };
    let output = wait_output(child);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if stdout.contains("NO-NAMESPACE") {
        eprintln!("SKIPPED: `unshare -rn` cannot make a network namespace here: {stderr}");
        return None;
    }
    assert!(
        output.status.success(),
        "the namespace script failed:\n{stdout}\n{stderr}"
    );
    Some(stdout)
}

/// Starts a broker on 198.51.100.7:5680 (the namespace is new: the port is free) with
/// `$EXTRA` flags, runs `sluice queues` as guest and as app from that address, and prints
/// each exit status and stderr.
const NAMESPACE_SCRIPT: &str = r#"
ip link set lo up && ip addr add 198.51.100.7/32 dev lo || { echo NO-NAMESPACE; exit 0; }
# A second run must not read the first run's line: the background shell truncates the file
# only once it gets to run.
rm -f "$DATA/../serve.out"
"$SLUICE" serve --data-dir "$DATA" --listen 198.51.100.7:5680 --http-listen off $EXTRA \
    >"$DATA/../serve.out" 2>"$DATA/../serve.err" &
broker=$!
# Bounded wait for the line that says it listens (at most 60 s).
i=0
until grep -q "sluice listening" "$DATA/../serve.out" 2>/dev/null; do
    i=$((i+1)); [ $i -gt 600 ] && { echo "the broker did not start"; cat "$DATA/../serve.err"; kill -9 $broker; exit 1; }
    sleep 0.1
done
"$SLUICE" queues --url sluice://198.51.100.7:5680 >/dev/null 2>"$DATA/../guest.err"
echo "guest=$? $(cat "$DATA/../guest.err")"
SLUICE_PASSWORD=app-pw "$SLUICE" queues --url sluice://app@198.51.100.7:5680 >/dev/null 2>"$DATA/../app.err"
echo "app=$? $(cat "$DATA/../app.err")"
kill -TERM $broker
wait $broker
echo "broker=$?"
# What the broker logged, for a failure to say what it saw.
echo "--- broker log"; tail -n 20 "$DATA/../serve.err"
"#;

#[test]
fn guest_is_refused_from_a_non_loopback_address_unless_loopback_users_is_empty() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("data");
    users_file_command(&data, &["user", "add", "app"], Some("app-pw"));
    users_file_command(
        &data,
        &[
            "permissions",
            "set",
            "app",
            "--configure",
            ".*",
            "--write",
            ".*",
            "--read",
            ".*",
        ],
        None,
    );
    let script = NAMESPACE_SCRIPT.replace("$EXTRA", "");
    let Some(out) = in_network_namespace(&script, &[("DATA", &data)]) else {
        return;
    };
    assert!(
        out.contains("guest=1 sluice: ")
            && out.contains("user 'guest' may only connect from a loopback address (loopback_users) (ACCESS_REFUSED)"),
        "{out}"
    );
    assert!(
        out.contains("app=0 "),
        "another user logs in from anywhere: {out}"
    );
    assert!(out.contains("broker=0"), "{out}");

    // `--loopback-users ''`: guest may log in from anywhere.
    let script = NAMESPACE_SCRIPT.replace("$EXTRA", "--loopback-users ''");
    let out = in_network_namespace(&script, &[("DATA", &data)]).expect("the namespace again");
    assert!(out.contains("guest=0 "), "{out}");
    assert!(out.contains("broker=0"), "{out}");
}

// ----------------------------------------------------------------------------------------
// Throttling
// ----------------------------------------------------------------------------------------

/// A login attempt from `source` (a loopback alias) to the broker.
async fn login_from(source: &str, addr: &str, user: &str, password: &str) -> Result<Client, Error> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().unwrap())
        .expect("bind to the loopback alias");
    let stream = socket
        .connect(addr.parse().unwrap())
        .await
        .expect("connect");
    Client::builder()
        .credentials(user, password)
        .connect_stream(stream)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_passwords_is_slowed_per_source_and_other_addresses_are_not() {
    let broker = Broker::start_after(|_| {});
    let addr = broker.process.addr().to_owned();
    // 20 wrong guesses from 127.0.0.1 over 10 parallel connections at a time.
    const GUESSES: u32 = 20;
    let started = Instant::now();
    let hammer: Vec<_> = (0..10)
        .map(|task| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut reasons = Vec::new();
                for i in 0..GUESSES / 10 {
                    let guess = format!("guess-{task}-{i}");
                    let r = login_from("127.0.0.1", &addr, "guest", &guess).await;
                    let (code, reason) = refusal(r);
                    assert_eq!(code, Some(ErrorCode::AccessRefused), "{reason}");
                    reasons.push(reason);
                }
                reasons
            })
        })
        .collect();
    // Meanwhile, the right password from another address gets in at once.
    let other = Instant::now();
    let good = within(
        "login from 127.0.0.2",
        login_from("127.0.0.2", &addr, "guest", "guest"),
    )
    .await
    .expect("guest from 127.0.0.2");
    let other = other.elapsed();
    good.close().await.unwrap();
    let mut reasons = Vec::new();
    for task in hammer {
        reasons.extend(within("the guesses", task).await.unwrap());
    }
    let took = started.elapsed();
    // A guess is either checked (and wrong), or refused unchecked because it would have had
    // to wait too long for its turn.
    let checked = reasons
        .iter()
        .filter(|r| *r == "unknown user or wrong password")
        .count();
    let unchecked = reasons
        .iter()
        .filter(|r| *r == "too many failed logins from 127.0.0.1; try again later")
        .count();
    assert_eq!(checked + unchecked, GUESSES as usize, "{reasons:?}");
    assert!(checked >= 10, "{reasons:?}");
    // 5 at once, then 2 a second: N checked guesses take at least (N - 5) / 2 seconds.
    let floor = Duration::from_secs_f64((checked as f64 - 5.0) / 2.0 - 0.25);
    assert!(took >= floor, "{checked} guesses checked in {took:?}");
    assert!(other < Duration::from_secs(3), "127.0.0.2 waited {other:?}");

    // The log summarises instead of a line per guess.
    let log = broker.process.stop_and_log();
    let lines = log.lines().filter(|l| l.contains("login failed")).count();
    assert!((1..=3).contains(&lines), "{lines} lines:\n{log}");
    assert!(!log.contains("guess-"), "a password is logged:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_basic_auth_failures_share_the_throttle_of_the_wire_protocol() {
    let broker = Broker::start_after(|_| {});
    let addr = broker.process.addr().to_owned();
    // The burst is spent over the wire...
    for i in 0..5 {
        refusal(login_from("127.0.0.1", &addr, "guest", &format!("wrong-{i}")).await);
    }
    // ...so wrong passwords over HTTP, from the same address, come at 2 a second.
    let started = Instant::now();
    let wrong = broker.http("guest", "not-it");
    for _ in 0..4 {
        assert_status(&wrong.get("/api/overview").await, 401, "ACCESS_REFUSED");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs_f64(1.5),
        "4 wrong passwords took {took:?}"
    );
    broker.process.stop();
}

// ----------------------------------------------------------------------------------------
// The HTTP API
// ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_vhosts_and_permissions_are_managed_over_http_by_administrators_only() {
    let broker = Broker::start_after(|_| {});
    let admin = broker.http("guest", "guest");

    // Users: created with a password (hashed) or a hash, tags checked.
    assert_eq!(
        admin
            .put(
                "/api/users/ops",
                r#"{"password": "ops-pw", "tags": ["monitoring"]}"#
            )
            .await
            .status,
        201
    );
    assert_eq!(
        admin
            .put("/api/users/nobody", r#"{"password": "pw"}"#)
            .await
            .status,
        201
    );
    assert_eq!(
        admin
            .put("/api/users/ops", r#"{"tags": ["monitoring"]}"#)
            .await
            .status,
        204
    );
    let message = assert_status(
        &admin.put("/api/users/x", r#"{"tags": ["root"]}"#).await,
        400,
        "INVALID_ARGUMENT",
    );
    assert!(message.contains("unknown tag 'root'"), "{message}");
    let message = assert_status(
        &admin.put("/api/users/y", r#"{"tags": []}"#).await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_eq!(
        message,
        "user 'y' does not exist; creating it needs a password"
    );
    assert_status(
        &admin
            .put("/api/users/z", r#"{"password_hash": "plain"}"#)
            .await,
        400,
        "INVALID_ARGUMENT",
    );
    let text = std::fs::read_to_string(broker.users_file()).unwrap();
    assert!(
        !text.contains("ops-pw") && text.contains("name = \"ops\""),
        "{text}"
    );
    assert_eq!(
        json_of(&admin.get("/api/users/ops").await, 200),
        json!({"name": "ops", "tags": ["monitoring"]})
    );
    let users = json_of(&admin.get("/api/users").await, 200);
    assert_eq!(users.as_array().unwrap().len(), 3, "{users}");

    // Tags: none at all is 403, monitoring reads but does not administer, 401 for a bad password.
    let nobody = broker.http("nobody", "pw");
    let message = assert_status(&nobody.get("/api/overview").await, 403, "NOT_ALLOWED");
    assert!(message.contains("lacks the tag management"), "{message}");
    let ops = broker.http("ops", "ops-pw");
    json_of(&ops.get("/api/queues").await, 200);
    let message = assert_status(&ops.get("/api/users").await, 403, "NOT_ALLOWED");
    assert_eq!(
        message,
        "user 'ops' lacks the tag administrator that this request requires"
    );
    assert_status(&ops.put("/api/vhosts/x", "{}").await, 403, "NOT_ALLOWED");
    assert_status(&ops.get("/api/permissions").await, 403, "NOT_ALLOWED");
    assert_status(
        &ops.delete("/api/connections/1", None).await,
        403,
        "NOT_ALLOWED",
    );
    assert_status(
        &broker.http("ops", "wrong").get("/api/queues").await,
        401,
        "ACCESS_REFUSED",
    );
    assert_eq!(
        json_of(&ops.get("/api/whoami").await, 200),
        json!({"name": "ops", "tags": ["monitoring"], "permissions": []})
    );

    // Vhosts, with limits; `/` is %2F in a path.
    assert_eq!(
        admin
            .put("/api/vhosts/staging", r#"{"limits": {"max_queues": 10}}"#)
            .await
            .status,
        201
    );
    assert_eq!(
        admin
            .put("/api/vhosts/staging", r#"{"limits": {"max_queues": 20}}"#)
            .await
            .status,
        204
    );
    assert_eq!(
        json_of(&admin.get("/api/vhosts/staging").await, 200),
        json!({"name": "staging", "limits": {"max_queues": 20}})
    );
    assert_eq!(
        json_of(&admin.get("/api/vhosts/%2F").await, 200)["name"],
        "/"
    );
    assert_eq!(
        json_of(&admin.get("/api/vhosts").await, 200)
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_status(
        &admin
            .put("/api/vhosts/v", r#"{"limits": {"max_queue": 1}}"#)
            .await,
        400,
        "INVALID_ARGUMENT",
    );

    // Permissions per vhost and user.
    let spec = r#"{"configure": "^ops\\.", "write": ".*", "read": ".*"}"#;
    assert_eq!(
        admin.put("/api/permissions/staging/ops", spec).await.status,
        204
    );
    assert_status(
        &admin.put("/api/permissions/nowhere/ops", spec).await,
        404,
        "NOT_FOUND",
    );
    assert_status(
        &admin
            .put(
                "/api/permissions/staging/ops",
                r#"{"configure": "(", "write": "", "read": ""}"#,
            )
            .await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_eq!(
        json_of(&admin.get("/api/permissions/staging/ops").await, 200),
        json!({"user": "ops", "vhost": "staging", "configure": "^ops\\.", "write": ".*", "read": ".*"})
    );
    let all = json_of(&admin.get("/api/permissions").await, 200);
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    let live = broker
        .login("ops", "ops-pw", "staging")
        .await
        .expect("ops in staging");
    let (_, reason) = refusal(broker.login("ops", "ops-pw", "").await);
    assert_eq!(
        reason,
        "access to vhost '/' refused for user 'ops': no permissions there"
    );

    // Deleting the user closes its connection and refuses it from then on.
    assert_eq!(admin.delete("/api/users/ops", None).await.status, 204);
    match within(
        "closed",
        live.declare_queue("ops.q", QueueOptions::default()),
    )
    .await
    {
        Err(Error::ConnectionClosed(CloseReason::Server { code, reason })) => {
            assert_eq!(code, Some(ErrorCode::ConnectionForced));
            assert_eq!(reason, "user 'ops' was deleted");
        }
        other => panic!("the deleted user's connection stayed open: {other:?}"),
    }
    assert_status(&ops.get("/api/queues").await, 401, "ACCESS_REFUSED");
    assert_status(
        &admin.get("/api/permissions/staging/ops").await,
        404,
        "NOT_FOUND",
    );
    assert_eq!(admin.delete("/api/vhosts/staging", None).await.status, 204);
    assert_status(
        &admin.delete("/api/vhosts/staging", None).await,
        404,
        "NOT_FOUND",
    );

    // An edit made offline is not overwritten: the API asks for a reload first.
    broker.offline(&["vhost", "add", "offline"], None);
    let message = assert_status(
        &admin.put("/api/vhosts/online", "{}").await,
        409,
        "PRECONDITION_FAILED",
    );
    assert!(message.contains("kill -HUP"), "{message}");
    broker.reload();
    assert_eq!(admin.put("/api/vhosts/online", "{}").await.status, 201);
    assert_eq!(
        json_of(&admin.get("/api/vhosts").await, 200)
            .as_array()
            .unwrap()
            .len(),
        3
    );
    broker.process.stop();
}

// ----------------------------------------------------------------------------------------
// No password on the command line
// ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_url_is_refused_and_the_environment_carries_it_instead() {
    let broker = Broker::start_after(|data| {
        users_file_command(data, &["user", "add", "app"], Some("app-pw"));
        users_file_command(
            data,
            &[
                "permissions",
                "set",
                "app",
                "--configure",
                ".*",
                "--write",
                ".*",
                "--read",
                ".*",
            ],
            None,
        );
    });
    let addr = broker.process.addr().to_owned();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = sluice_command();
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        wait_output(cmd.spawn().expect("sluice"))
    };
    let with_password = format!("sluice://app:app-pw@{addr}");
    let refused = run(&["queues", "--url", &with_password], &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr.starts_with("sluice: --url must not carry a password"),
        "{stderr}"
    );
    assert!(
        stderr.contains("SLUICE_PASSWORD") && !stderr.contains("app-pw"),
        "{stderr}"
    );

    // The user in --url, the password in SLUICE_PASSWORD.
    let user_only = format!("sluice://app@{addr}");
    let ok = run(
        &["queues", "--url", &user_only],
        &[("SLUICE_PASSWORD", "app-pw")],
    );
    assert!(ok.status.success(), "{ok:?}");
    // Or the whole URL in SLUICE_URL.
    let ok = run(&["queues"], &[("SLUICE_URL", &with_password)]);
    assert!(ok.status.success(), "{ok:?}");
    // Offline commands never take a password as an argument either.
    let add = run(
        &[
            "user",
            "add",
            "x",
            "--data-dir",
            broker.data.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(add.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&add.stderr);
    assert!(
        stderr.contains("no password given: set SLUICE_NEW_PASSWORD"),
        "{stderr}"
    );
    broker.process.stop();
}
