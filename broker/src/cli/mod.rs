//! The admin commands of the `sluice` binary: listings (queues, exchanges, bindings,
//! consumers, connections), declaring, deleting and purging, closing connections and
//! cancelling consumers, exporting and importing definitions, and publishing and consuming
//! from the shell.
//! Each one connects to a running broker with the Rust client ([`sluice_client`]), does its
//! work, and closes the connection gracefully (so acks and publishes are settled first).
//!
//! Every command takes `--url` (`SLUICE_URL`, default [`DEFAULT_URL`]) and `--json`.
//! Results go to stdout; errors go to stderr as `sluice: <message> (CODE_NAME)` (the
//! protocol's error code, when the broker sent one) with exit status 1. `sluice get` on a
//! queue with no ready message exits with [`EXIT_EMPTY`].
//!
//! # Layout
//! - this file: the command line ([`AdminCommand`] and its arguments), [`run`], [`CliError`].
//! - `commands`: what each command does.
//! - `definitions`: `sluice definitions export|import` over the wire.
//! - `format`: the text tables and the JSON shapes.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use sluice_client::{ErrorCode, HeaderValue, Overflow};

pub(crate) mod chaos;
mod cluster;
mod commands;
mod definitions;
pub(crate) mod format;
pub(crate) mod messages;
pub(crate) mod scheduled;
pub(crate) mod trace;
pub(crate) mod users;

pub use users::{PermissionsArgs, UserArgs, VhostArgs};

/// The broker the admin commands talk to when neither `--url` nor `SLUICE_URL` is given
/// (as `guest`, the client's default user).
pub const DEFAULT_URL: &str = "sluice://127.0.0.1:5680";

/// The environment variable holding the password of the admin commands' user (a password in
/// `--url` is refused: command lines are visible to every user of the machine).
pub const PASSWORD_VAR: &str = "SLUICE_PASSWORD";

/// Why a `--url` given on the command line is refused, if it is: it carries a password.
pub fn refuse_password_in_url_flag(url: &str) -> Option<String> {
    let parsed = sluice_client::ConnectUrl::parse(url).ok()?;
    parsed.password().filter(|p| !p.is_empty())?;
    Some(format!(
        "--url must not carry a password: command lines are visible to every user of this machine (ps, shell history). \
         Name the user in the URL (sluice://USER@HOST:PORT) and put the password in {PASSWORD_VAR}, or put the whole URL in SLUICE_URL"
    ))
}

/// Exit status of `sluice get` when the queue has no ready message (errors exit with 1,
/// command-line mistakes with 2).
pub const EXIT_EMPTY: u8 = 3;

/// Consumer window of `sluice consume` without `--prefetch`.
pub const DEFAULT_CONSUME_PREFETCH: u32 = 100;

/// The admin subcommands; `main.rs` flattens them next to `serve`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// List queues with their depth, consumers and rates.
    ///
    /// FLAGS: D durable, E exclusive, A auto-delete. READY and UNACKED count messages,
    /// BYTES is their meta and body size, PUBLISH/S and ACK/S are messages per second over
    /// the last few seconds.
    Queues,
    /// List exchanges.
    ///
    /// The default exchange ("(default)", the empty name) and the built-in amq.* ones are
    /// included. FLAGS: D durable, A auto-delete.
    Exchanges,
    /// List bindings, by exchange, queue and routing key.
    ///
    /// Only explicit bindings: the default exchange's (routing key = queue name) are
    /// implicit.
    Bindings,
    /// List the consumers of every connection.
    Consumers,
    /// List client connections: who, from where, since when, and what they moved.
    ///
    /// IN and OUT are bytes read from and written to the connection's socket, UNSETTLED its
    /// published messages not yet confirmed. SINCE is UTC.
    Connections,
    /// Close a client connection.
    ///
    /// The client gets CONNECTION_FORCED with the reason; its unacked messages return to
    /// their queues. ID is the connection's number from `sluice connections`.
    CloseConnection(CloseConnectionArgs),
    /// Cancel a consumer of any connection.
    ///
    /// The client gets CONSUMER_CANCELLED; the consumer's unacked messages return to its
    /// queue. The connection stays open.
    CancelConsumer(CancelConsumerArgs),
    /// Declare a queue, or check that it exists as declared.
    ///
    /// Queues are durable unless --transient. Declaring an existing queue with other
    /// settings fails with PRECONDITION_FAILED.
    DeclareQueue(DeclareQueueArgs),
    /// Delete a queue with its messages.
    ///
    /// Deleting a queue that does not exist succeeds (0 messages).
    DeleteQueue(DeleteQueueArgs),
    /// Remove a queue's ready messages.
    ///
    /// Delivered, unsettled messages stay.
    Purge(QueueArgs),
    /// Show a queue's settings and counters.
    Inspect(QueueArgs),
    /// Declare an exchange, or check that it exists as declared.
    ///
    /// Exchanges are durable unless --transient.
    DeclareExchange(DeclareExchangeArgs),
    /// Delete an exchange and its bindings.
    ///
    /// Deleting an exchange that does not exist succeeds.
    DeleteExchange(DeleteExchangeArgs),
    /// Bind a queue to an exchange.
    Bind(BindArgs),
    /// Remove a binding.
    ///
    /// Give the same queue, exchange, routing key and headers as when it was bound.
    /// Removing a binding that does not exist succeeds.
    Unbind(BindArgs),
    /// Publish one message and wait for the broker's confirm.
    ///
    /// The message is published as mandatory: if no queue is bound to the exchange with that
    /// routing key, the command says so and exits with status 1 (UNROUTABLE) instead of
    /// reporting a message that went nowhere as confirmed. --no-mandatory lets the broker
    /// drop such a message silently. Other refusals also exit with status 1 and the broker's
    /// reason.
    Publish(PublishArgs),
    /// Take one message from a queue and print its body.
    ///
    /// The body is printed to stdout followed by a newline, then the message is acked (or
    /// requeued with --requeue). Exits with status 3 when the queue has no ready message.
    Get(GetArgs),
    /// Export or import the topology (exchanges, queues, bindings) as JSON.
    ///
    /// Durable exchanges and queues (not exclusive, not server-named) with their arguments,
    /// and the bindings between them; no messages. The format is the one of
    /// GET/POST /api/definitions (docs/http-api.md).
    Definitions(DefinitionsArgs),
    /// Consume from a queue, printing each body on its own line.
    ///
    /// Each message is acked once printed. Runs until --count messages are printed, or
    /// until interrupted (Ctrl-C); messages received but not printed return to the queue.
    Consume(ConsumeArgs),
    /// Show a queue's first ready messages without taking them.
    ///
    /// Nothing changes: no delivery is counted and consumers get the messages as if nobody
    /// had looked. DELIVERIES is how often a message was delivered before ("R": its next
    /// delivery is flagged redelivered), AGE the time since the queue stored it.
    Browse(BrowseArgs),
    /// Manage users in the users file (offline; then kill -HUP the broker).
    ///
    /// Passwords are read from SLUICE_NEW_PASSWORD or standard input, never from the command
    /// line, and stored as argon2id hashes.
    User(UserArgs),
    /// Manage vhosts in the users file (offline; then kill -HUP the broker).
    Vhost(VhostArgs),
    /// Manage users' permissions per vhost in the users file (offline; then kill -HUP the
    /// broker).
    Permissions(PermissionsArgs),
    /// List or cancel a queue's scheduled messages (delayed, or requeued with a delay).
    ///
    /// `scheduled list QUEUE` shows them soonest first: SEQ, DUE (Unix ms and how long until
    /// then), DELIVERIES so far and the start of the body; `scheduled cancel QUEUE SEQ`
    /// deletes one before its time.
    #[command(subcommand)]
    Scheduled(ScheduledCommand),
    /// Show or change the cluster (administrators only; a node started with --node-id).
    ///
    /// `cluster status` shows the members (ROLE: leader of the metadata group, voter, or
    /// learner while being added), the metadata leader, and every Raft group hosted on the
    /// node with its leader and replicas (LAG: log entries behind, known on the leader).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Move ready messages from one queue to another (e.g. a dead-letter queue back to its
    /// source), printing progress until done.
    ///
    /// Each batch is stored durably in DESTINATION before it leaves SOURCE: a broker crash
    /// can duplicate messages but never lose them. Exits with status 1 if the move fails
    /// (e.g. DESTINATION is full); messages not moved stay in SOURCE.
    MoveMessages(MoveMessagesArgs),
    /// Show what happened to the messages with a message id: "why is this message stuck".
    ///
    /// Every queue of the vhost you may read reports its record of the message: where it was
    /// routed from, each delivery with its consumer, connection and lease deadline, nacks and
    /// rejects with the reason the worker gave, lease expiries, dead-lettering, and where it
    /// is now. Queues follow messages that have a message_id, and keep a record for
    /// --message-history-window-ms after the message left them.
    Trace(TraceArgs),
    /// Make a queue misbehave on purpose for a while, to test its consumers and publishers
    /// (setting and clearing: administrators only; see docs/chaos.md).
    ///
    /// `chaos set QUEUE --duration 10m --delay uniform:100-500 --duplicate 5 ...` starts an
    /// injection that ends by itself; `chaos clear QUEUE` ends it now; `chaos list` shows
    /// the queues with one running (STATE CHAOS) and what chaos did to them.
    #[command(subcommand)]
    Chaos(chaos::ChaosCommand),
}

/// Arguments of `sluice trace`.
#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// The message's message_id property.
    pub message_id: String,
}

/// Which broker, and how to print: options of every admin command, global so that they may
/// come before or after the command's name (`main.rs` flattens them into the top level).
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Broker URL of the admin commands, `sluice://user@host:port[/vhost]`
    /// (`sluices://...?ca_file=ca.pem` for TLS); the password comes from SLUICE_PASSWORD (or
    /// SLUICE_URL), never from the command line.
    #[arg(long, global = true, env = "SLUICE_URL", default_value = DEFAULT_URL, hide_env_values = true)]
    pub url: String,
    /// Admin commands print JSON instead of text (`consume`: one JSON object per line).
    #[arg(long, global = true)]
    pub json: bool,
}

/// Arguments of commands that name one queue.
#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// The queue.
    pub queue: String,
}

/// Arguments of `sluice close-connection`.
#[derive(Debug, Clone, Args)]
pub struct CloseConnectionArgs {
    /// The connection's number (`sluice connections`).
    pub id: u64,
    /// What the client is told.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub reason: String,
}

/// Arguments of `sluice cancel-consumer`.
#[derive(Debug, Clone, Args)]
pub struct CancelConsumerArgs {
    /// The consumer's connection (`sluice consumers`, `sluice connections`).
    pub connection_id: u64,
    /// The consumer's tag.
    pub tag: String,
}

/// Arguments of `sluice definitions`.
#[derive(Debug, Clone, Args)]
pub struct DefinitionsArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: DefinitionsAction,
}

/// `sluice definitions export|import`.
#[derive(Debug, Clone, Subcommand)]
pub enum DefinitionsAction {
    /// Write the broker's topology as JSON to FILE, or to stdout.
    Export {
        /// Where to write it [default: stdout].
        file: Option<PathBuf>,
    },
    /// Declare what FILE holds.
    ///
    /// What already exists as given is left alone, so importing twice changes nothing. An
    /// item that conflicts (a queue that exists with other arguments) is reported and the
    /// others are still imported; the command then exits with status 1.
    Import {
        /// A file written by `sluice definitions export` or GET /api/definitions.
        file: PathBuf,
    },
}

/// Arguments of `sluice declare-queue`.
#[derive(Debug, Clone, Args)]
pub struct DeclareQueueArgs {
    /// The queue's name; "" asks the broker to generate one (printed).
    pub name: String,
    /// Not durable: the queue and its messages are gone after a broker restart.
    #[arg(long)]
    pub transient: bool,
    /// Exclusive to this command's connection, so deleted when the command exits (for tests).
    #[arg(long)]
    pub exclusive: bool,
    /// Delete the queue when its last consumer is cancelled.
    #[arg(long)]
    pub auto_delete: bool,
    /// Only check that the queue exists (NOT_FOUND otherwise); other settings are ignored.
    #[arg(long)]
    pub passive: bool,
    /// Most ready messages the queue holds.
    #[arg(long, value_name = "N")]
    pub max_length: Option<u64>,
    /// Most bytes (meta plus body) of ready messages the queue holds.
    #[arg(long, value_name = "BYTES")]
    pub max_length_bytes: Option<u64>,
    /// What happens at a length limit [broker default: drop-head].
    #[arg(long, value_enum)]
    pub overflow: Option<OverflowArg>,
    /// Messages older than this are dead-lettered (or dropped).
    #[arg(long, value_name = "MS")]
    pub message_ttl_ms: Option<u64>,
    /// Exchange that receives dead-lettered messages.
    #[arg(long, value_name = "EXCHANGE")]
    pub dead_letter_exchange: Option<String>,
    /// Routing key of dead-lettered messages [default: the message's own].
    #[arg(long, value_name = "KEY")]
    pub dead_letter_routing_key: Option<String>,
    /// Lease of deliveries from this queue [broker default: 30 minutes].
    #[arg(long, value_name = "MS")]
    pub ack_timeout_ms: Option<u64>,
    /// Deliveries after which a message is dead-lettered instead of redelivered.
    #[arg(long, value_name = "N")]
    pub delivery_limit: Option<u32>,
    /// Delete the queue after it has been unused this long.
    #[arg(long, value_name = "MS")]
    pub expires_ms: Option<u64>,
    /// Largest message (meta + body) the queue takes; larger ones are refused.
    #[arg(long, value_name = "BYTES")]
    pub max_message_bytes: Option<u32>,
    /// Priority levels above 0 (1 to 10): higher-priority messages are delivered first.
    #[arg(long, value_name = "N")]
    pub max_priority: Option<u8>,
    /// Every requeue waits before the message is ready again: INITIAL after the first
    /// delivery, times MULTIPLIER per further delivery, at most MAX (e.g. `1s,2,5m`).
    #[arg(long, value_name = "INITIAL,MULTIPLIER,MAX", value_parser = parse_backoff)]
    pub retry_backoff: Option<sluice_client::wire::RetryBackoff>,
    /// Publish dedup: a message whose message_id the queue accepted less than this long ago
    /// is confirmed but not stored again.
    #[arg(long, value_name = "MS")]
    pub dedup_window_ms: Option<u64>,
    /// Publish dedup: a message whose message_id is among the last N the queue accepted is
    /// confirmed but not stored again.
    #[arg(long, value_name = "N")]
    pub dedup_window_count: Option<u32>,
    /// Nodes of a cluster that hold the queue; a publish is confirmed once a majority of
    /// them has it durable.
    #[arg(long, value_name = "N")]
    pub replicas: Option<u8>,
    /// One consumer receives at a time; the others wait as standbys and take over in turn.
    #[arg(long)]
    pub single_active_consumer: bool,
}

/// What a queue does at its length limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OverflowArg {
    /// Drop (or dead-letter) the oldest ready message.
    DropHead,
    /// Refuse the new message (the publisher gets QUEUE_FULL).
    RejectPublish,
    /// Refuse the new message (QUEUE_FULL) and dead-letter it (reason maxlen).
    RejectPublishDlx,
}

impl From<OverflowArg> for Overflow {
    fn from(o: OverflowArg) -> Self {
        match o {
            OverflowArg::DropHead => Overflow::DropHead,
            OverflowArg::RejectPublish => Overflow::RejectPublish,
            OverflowArg::RejectPublishDlx => Overflow::RejectPublishDlx,
        }
    }
}

/// Arguments of `sluice delete-queue`.
#[derive(Debug, Clone, Args)]
pub struct DeleteQueueArgs {
    /// The queue.
    pub queue: String,
    /// Fail with PRECONDITION_FAILED if the queue has consumers.
    #[arg(long)]
    pub if_unused: bool,
    /// Fail with PRECONDITION_FAILED if the queue holds messages.
    #[arg(long)]
    pub if_empty: bool,
}

/// Arguments of `sluice declare-exchange`.
#[derive(Debug, Clone, Args)]
pub struct DeclareExchangeArgs {
    /// The exchange's name.
    pub name: String,
    /// How it routes.
    #[arg(long, value_enum)]
    pub kind: crate::topology::KindName,
    /// Not durable: gone after a broker restart.
    #[arg(long)]
    pub transient: bool,
    /// Delete the exchange when its last binding is removed.
    #[arg(long)]
    pub auto_delete: bool,
    /// Only check that the exchange exists (NOT_FOUND otherwise).
    #[arg(long)]
    pub passive: bool,
    /// Where messages that match no binding go.
    #[arg(long, value_name = "EXCHANGE")]
    pub alternate_exchange: Option<String>,
    /// Consistent-hash exchanges: hash this message header instead of the routing key.
    #[arg(long, value_name = "HEADER")]
    pub hash_header: Option<String>,
}

/// Arguments of `sluice delete-exchange`.
#[derive(Debug, Clone, Args)]
pub struct DeleteExchangeArgs {
    /// The exchange.
    pub name: String,
    /// Fail with PRECONDITION_FAILED if the exchange has bindings.
    #[arg(long)]
    pub if_unused: bool,
}

/// Arguments of `sluice bind` and `sluice unbind`.
#[derive(Debug, Clone, Args)]
pub struct BindArgs {
    /// The queue.
    pub queue: String,
    /// The exchange.
    pub exchange: String,
    /// The binding key (direct and topic exchanges).
    #[arg(default_value = "")]
    pub routing_key: String,
    /// A binding header, `KEY=VALUE` (a string) or `KEY:TYPE=VALUE` with TYPE one of str,
    /// int, bool, float, void (`KEY:void=` matches any message that has KEY), timestamp,
    /// decimal or json (arrays, tables); headers exchanges match on them
    /// (`x-match=all|any`). Repeatable.
    #[arg(long = "header", value_name = "KEY[:TYPE]=VALUE", value_parser = parse_header)]
    pub headers: Vec<HeaderArg>,
    /// Weighted and consistent-hash exchanges: the binding's share (`x-weight`). Binding
    /// the queue again with another weight changes it in place, live.
    #[arg(long, value_name = "N")]
    pub weight: Option<u32>,
}

/// Arguments of `sluice publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// The exchange ("" is the default exchange: routing key = queue name).
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// The body; read from stdin (all of it, bytes as they are) when omitted.
    pub body: Option<String>,
    /// A message header, `KEY=VALUE` (a string) or `KEY:TYPE=VALUE` with TYPE one of str,
    /// int, bool, float, void, timestamp (seconds), decimal (`12.30`) or json (arrays,
    /// objects as tables). Repeatable.
    #[arg(long = "header", value_name = "KEY[:TYPE]=VALUE", value_parser = parse_header)]
    pub headers: Vec<HeaderArg>,
    /// Publish even if no queue takes the message: the broker then confirms it and drops it
    /// without notice, as an application's non-mandatory publish would be. By default the
    /// command publishes as mandatory and fails with UNROUTABLE when the message reaches no
    /// queue.
    #[arg(long)]
    pub no_mandatory: bool,
    /// Fail with UNROUTABLE when the message reaches no queue (the default; kept for scripts
    /// that say it).
    #[arg(long, overrides_with = "no_mandatory")]
    pub mandatory: bool,
    /// Not persistent: confirmed once enqueued, lost on a broker restart.
    #[arg(long)]
    pub transient: bool,
    /// MIME type of the body.
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// Application message id.
    #[arg(long, value_name = "ID")]
    pub message_id: Option<String>,
    /// Id of the request this message answers.
    #[arg(long, value_name = "ID")]
    pub correlation_id: Option<String>,
    /// Queue a reply should go to.
    #[arg(long, value_name = "QUEUE")]
    pub reply_to: Option<String>,
    /// Per-message TTL, from when a queue accepts the message.
    #[arg(long, value_name = "MS")]
    pub expiration_ms: Option<u64>,
    /// Priority, 0 (the default, lowest) to 255; a queue with max-priority delivers higher
    /// priorities first and counts one above its maximum as the maximum.
    #[arg(long, value_name = "N")]
    pub priority: Option<u8>,
    /// Deliver no earlier than this long after the queue accepts it (e.g. `500ms`, `5s`,
    /// `2h`); the message is stored and confirmed now.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "deliver_at_ms")]
    pub delay: Option<Duration>,
    /// Deliver no earlier than this Unix time in milliseconds (a time past means now).
    #[arg(long, value_name = "UNIX_MS")]
    pub deliver_at_ms: Option<u64>,
}

/// Arguments of `sluice get`.
#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// The queue.
    pub queue: String,
    /// Put the message back (nack with requeue) instead of acking it.
    #[arg(long)]
    pub requeue: bool,
    /// Take up to N messages in one request (1..=1000, protocol.md §9.7).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub count: u32,
    /// Wait up to this long for a first message (`5s`, `500ms`, or seconds; at most 20 s).
    #[arg(long, value_name = "DURATION", value_parser = parse_wait)]
    pub wait: Option<std::time::Duration>,
}

/// A wait such as `5s`, `250ms` or `1.5` (seconds).
fn parse_wait(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("not a duration: {text:?} (e.g. 5s, 250ms)");
    let (number, millis) = match text.strip_suffix("ms") {
        Some(n) => (n, true),
        None => (text.strip_suffix('s').unwrap_or(text), false),
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    let seconds = if millis { value / 1000.0 } else { value };
    std::time::Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

/// Arguments of `sluice consume`.
#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    /// The queue.
    pub queue: String,
    /// Stop after this many messages.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Most unacked deliveries in flight (0 = no limit); never more than what --count still
    /// needs, so no extra message is taken and requeued.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CONSUME_PREFETCH)]
    pub prefetch: u32,
    /// Consumer priority: higher ones with credit get messages first [default: 0].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Circuit breaking (docs/circuit-breaking.md): FAILURES nacks, rejects or lease
    /// timeouts within WINDOW cut this consumer off for COOL_DOWN; SUCCESSES acked trials
    /// restore it (e.g. `5,30s,10s,2`).
    #[arg(long, value_name = "FAILURES,WINDOW,COOL_DOWN,SUCCESSES", value_parser = parse_circuit_breaker)]
    pub circuit_breaker: Option<sluice_client::wire::CircuitBreaker>,
    /// Put each message back (nack with requeue) instead of acking it: a failing consumer,
    /// e.g. to try circuit breaking or a queue's retry settings.
    #[arg(long)]
    pub requeue: bool,
}

/// Parses `FAILURES,WINDOW,COOL_DOWN,SUCCESSES` (e.g. `5,30s,10s,2`); the broker checks the
/// ranges.
pub fn parse_circuit_breaker(s: &str) -> Result<sluice_client::wire::CircuitBreaker, String> {
    let parts: Vec<&str> = s.split(',').collect();
    let [failures, window, cool_down, successes] = parts[..] else {
        return Err(format!(
            "expected FAILURES,WINDOW,COOL_DOWN,SUCCESSES (e.g. 5,30s,10s,2), got '{s}'"
        ));
    };
    let count = |what: &str, v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| format!("{what} '{v}' is not a whole number"))
    };
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Ok(sluice_client::wire::CircuitBreaker {
        failure_threshold: count("FAILURES", failures)?,
        window_ms: millis(parse_duration(window)?),
        cool_down_ms: millis(parse_duration(cool_down)?),
        success_threshold: count("SUCCESSES", successes)?,
    })
}

/// Arguments of `sluice browse`.
#[derive(Debug, Clone, Args)]
pub struct BrowseArgs {
    /// The queue.
    pub queue: String,
    /// Most messages to show.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BROWSE_COUNT)]
    pub count: u64,
}

/// `sluice cluster ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// Members, the metadata leader, and the groups this node hosts.
    Status,
    /// Add a running node (started with --node-id ID) whose cluster listener is at ADDR.
    AddNode {
        /// The node's id.
        id: u64,
        /// Its cluster listener, `HOST:PORT`.
        addr: String,
    },
    /// Remove a node from the cluster.
    RemoveNode {
        /// The node's id.
        id: u64,
    },
    /// Move the leadership of a replicated queue (or, without --queue, of the metadata
    /// group) to another node; returns once that node leads.
    TransferLeadership {
        /// The replicated queue [default: the metadata group].
        #[arg(long)]
        queue: Option<String>,
        /// The node that should lead.
        #[arg(long)]
        to: u64,
    },
}

/// `sluice scheduled ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum ScheduledCommand {
    /// Show scheduled messages, soonest first.
    List(ScheduledListArgs),
    /// Delete a scheduled message before its time.
    Cancel(ScheduledCancelArgs),
}

/// Arguments of `sluice scheduled list`.
#[derive(Debug, Clone, Args)]
pub struct ScheduledListArgs {
    /// The queue.
    pub queue: String,
    /// Most messages to show.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BROWSE_COUNT)]
    pub count: u64,
}

/// Arguments of `sluice scheduled cancel`.
#[derive(Debug, Clone, Args)]
pub struct ScheduledCancelArgs {
    /// The queue.
    pub queue: String,
    /// The message's SEQ, as `scheduled list` shows it.
    pub seq: u64,
}

/// Parses a duration: a whole number with a unit, `ms`, `s`, `m`, `h` or `d` (`0` alone
/// is allowed).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("'{s}' needs a unit: ms, s, m, h or d (e.g. 5s)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number with a unit (e.g. 5s)"))?;
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "unknown unit '{unit}' in '{s}': use ms, s, m, h or d"
            ))
        }
    };
    n.checked_mul(ms_per)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("'{s}' is too long"))
}

/// Parses `INITIAL,MULTIPLIER,MAX` (durations and a factor, e.g. `1s,2,5m` or `500ms,1.5,1m`).
pub fn parse_backoff(s: &str) -> Result<sluice_client::wire::RetryBackoff, String> {
    let parts: Vec<&str> = s.split(',').collect();
    let [initial, multiplier, max] = parts[..] else {
        return Err(format!(
            "expected INITIAL,MULTIPLIER,MAX (e.g. 1s,2,5m), got '{s}'"
        ));
    };
    let factor: f64 = multiplier
        .trim()
        .parse()
        .map_err(|_| format!("multiplier '{multiplier}' is not a number"))?;
    if !(1.0..=1000.0).contains(&factor) {
        return Err(format!("multiplier {factor} must be between 1 and 1000"));
    }
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Ok(sluice_client::wire::RetryBackoff {
        initial_ms: millis(parse_duration(initial)?),
        multiplier_percent: (factor * 100.0).round() as u32,
        max_ms: millis(parse_duration(max)?),
    })
}

/// Messages `sluice browse` shows without `--count`.
pub const DEFAULT_BROWSE_COUNT: u64 = 20;

/// Arguments of `sluice move-messages`.
#[derive(Debug, Clone, Args)]
pub struct MoveMessagesArgs {
    /// The queue the messages leave.
    pub source: String,
    /// The queue they go to.
    pub destination: String,
    /// Most messages to move [default: every message ready in SOURCE now].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max: Option<u64>,
}

/// A header from the command line: `KEY=VALUE`, `KEY:str=VALUE`, `KEY:int=N`,
/// `KEY:bool=true|false`, `KEY:float=X`, `KEY:void=`, `KEY:timestamp=SECONDS`,
/// `KEY:decimal=DIGITS` or `KEY:json=JSON` (any value as the HTTP API writes it: arrays,
/// objects as tables, `null` as void).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderArg {
    /// The key.
    pub key: String,
    /// The typed value.
    pub value: HeaderValue,
}

/// Parses a [`HeaderArg`]. A key may contain `:` as long as what follows its last `:` is not
/// one of the type names.
pub fn parse_header(s: &str) -> Result<HeaderArg, String> {
    let (left, raw) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got '{s}'"))?;
    let (key, kind) = match left.rsplit_once(':') {
        Some((
            key,
            kind @ ("str" | "int" | "bool" | "float" | "void" | "timestamp" | "decimal" | "json"),
        )) => (key, kind),
        _ => (left, "str"),
    };
    let value = match kind {
        "int" => HeaderValue::Int(
            raw.parse()
                .map_err(|_| format!("'{raw}' is not a 64-bit integer"))?,
        ),
        "bool" => HeaderValue::Bool(
            raw.parse()
                .map_err(|_| format!("'{raw}' is not true or false"))?,
        ),
        "float" => HeaderValue::Float(
            raw.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| format!("'{raw}' is not a finite number"))?,
        ),
        "void" if raw.is_empty() => HeaderValue::Void,
        "void" => {
            return Err(format!(
                "a void header takes no value: '{key}:void=', not '{s}'"
            ))
        }
        "timestamp" => HeaderValue::Timestamp(
            raw.parse()
                .map_err(|_| format!("'{raw}' is not whole seconds since 1970"))?,
        ),
        "decimal" => HeaderValue::Decimal(raw.parse().map_err(|e| format!("{e}"))?),
        "json" => {
            let json: serde_json::Value =
                serde_json::from_str(raw).map_err(|e| format!("'{raw}' is not JSON: {e}"))?;
            crate::topology::header_value_from_json(key, &json)?
        }
        _ => HeaderValue::from(raw),
    };
    Ok(HeaderArg {
        key: key.to_owned(),
        value,
    })
}

/// Runs an admin command to completion and returns the process's exit status. Results are
/// printed on stdout, errors on stderr.
pub fn run(command: AdminCommand, target: Target) -> ExitCode {
    // The users file is edited offline: no broker, no runtime.
    let offline = match command {
        AdminCommand::User(args) => users::user(args, target.json),
        AdminCommand::Vhost(args) => users::vhost(args, target.json),
        AdminCommand::Permissions(args) => users::permissions(args, target.json),
        command => return run_online(command, target),
    };
    match offline {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_online(command: AdminCommand, target: Target) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::execute(command, target)) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Empty) => ExitCode::from(EXIT_EMPTY),
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How a command that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did its work.
    Done,
    /// `get` found no ready message.
    Empty,
}

/// A failed admin command: a message, and the protocol error code when the broker sent one.
/// Displays as `<message> (CODE_NAME)`.
#[derive(Debug, Clone)]
pub struct CliError {
    message: String,
    code: Option<ErrorCode>,
}

impl CliError {
    /// An error without a protocol code.
    pub fn new(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: None,
        }
    }

    /// An error the broker signalled with `code`, in the command's own words.
    pub fn with_code(message: impl Into<String>, code: ErrorCode) -> Self {
        CliError {
            message: message.into(),
            code: Some(code),
        }
    }

    /// The protocol error code, if the broker sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        self.code
    }

    /// Prefixes the message with what was being done.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(code) = self.code {
            write!(f, " ({})", code.name())?;
        }
        Ok(())
    }
}

impl std::error::Error for CliError {}

impl From<sluice_client::Error> for CliError {
    /// The broker's own words for errors it sent (the code goes in parentheses); the client's
    /// description otherwise.
    fn from(e: sluice_client::Error) -> Self {
        use sluice_client::{CloseReason, Error};
        let or_code = |detail: &str, code: ErrorCode| {
            if detail.is_empty() {
                code.name().to_lowercase().replace('_', " ")
            } else {
                detail.to_owned()
            }
        };
        let message = match &e {
            Error::Server { code, message } => or_code(message, *code),
            Error::PublishRejected { code, message, .. } => {
                format!("message refused: {}", or_code(message, *code))
            }
            Error::ConsumerCancelled { code, reason } => {
                format!(
                    "consumer cancelled by the broker: {}",
                    or_code(reason, *code)
                )
            }
            Error::ConnectionClosed(CloseReason::Server {
                code: Some(code),
                reason,
            }) => format!(
                "connection closed by the broker: {}",
                or_code(reason, *code)
            ),
            other => other.to_string(),
        };
        CliError {
            message,
            code: e.code(),
        }
    }
}

impl From<io::Error> for CliError {
    fn from(e: io::Error) -> Self {
        CliError::new(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_with_optional_types() {
        let h = |key: &str, value: HeaderValue| HeaderArg {
            key: key.into(),
            value,
        };
        assert_eq!(parse_header("a=b=c"), Ok(h("a", "b=c".into())));
        assert_eq!(parse_header("n:int=-5"), Ok(h("n", HeaderValue::Int(-5))));
        assert_eq!(
            parse_header("f:bool=true"),
            Ok(h("f", HeaderValue::Bool(true)))
        );
        assert_eq!(parse_header("x:str=1"), Ok(h("x", "1".into())));
        assert_eq!(parse_header("ns:key=v"), Ok(h("ns:key", "v".into())));
        assert_eq!(parse_header("empty="), Ok(h("empty", "".into())));
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("n:int=x").is_err());
        assert!(parse_header("f:bool=yes").is_err());
    }

    #[test]
    fn headers_parse_every_value_type() {
        let value = |s: &str| parse_header(s).map(|h| h.value);
        assert_eq!(value("f:float=1"), Ok(HeaderValue::Float(1.0)));
        assert_eq!(value("f:float=-0.0"), Ok(HeaderValue::Float(-0.0)));
        assert!(value("f:float=NaN").is_err());
        assert!(value("f:float=inf").is_err());
        assert_eq!(value("v:void="), Ok(HeaderValue::Void));
        assert!(value("v:void=x").is_err());
        assert_eq!(value("t:timestamp=17"), Ok(HeaderValue::Timestamp(17)));
        assert!(value("t:timestamp=-1").is_err());
        assert_eq!(
            value("d:decimal=12.30"),
            Ok(HeaderValue::Decimal(sluice_client::Decimal {
                scale: 2,
                value: 1230
            }))
        );
        assert!(value("d:decimal=1e3").is_err());
        assert_eq!(
            value(r#"j:json=[1, 2.5, null, {"k": "v"}]"#),
            Ok(HeaderValue::Array(vec![
                HeaderValue::Int(1),
                HeaderValue::Float(2.5),
                HeaderValue::Void,
                HeaderValue::Table(vec![("k".into(), "v".into())]),
            ]))
        );
        assert!(value("j:json=[").is_err());
    }

    #[test]
    fn broker_errors_print_their_message_and_code_name() {
        let e = CliError::from(sluice_client::Error::Server {
            code: ErrorCode::NotFound,
            message: "no queue 'q'".into(),
        });
        assert_eq!(e.to_string(), "no queue 'q' (NOT_FOUND)");
        let e = CliError::from(sluice_client::Error::Server {
            code: ErrorCode::PreconditionFailed,
            message: String::new(),
        });
        assert_eq!(
            e.context("cannot delete").to_string(),
            "cannot delete: precondition failed (PRECONDITION_FAILED)"
        );
        let e = CliError::from(sluice_client::Error::Protocol("bad".into()));
        assert_eq!(e.to_string(), "protocol violation: bad");
        assert_eq!(e.code(), None);
    }

    #[test]
    fn the_command_line_parses() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            target: Target,
            #[command(subcommand)]
            command: AdminCommand,
        }
        let cli = Cli::try_parse_from([
            "sluice",
            "bind",
            "q",
            "x",
            "a.*",
            "--header",
            "n:int=1",
            "--url",
            "sluice://h:1",
        ])
        .unwrap();
        let AdminCommand::Bind(bind) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!((bind.routing_key.as_str(), bind.headers.len()), ("a.*", 1));
        assert_eq!(cli.target.url, "sluice://h:1");
        // Global: before the command too.
        let cli =
            Cli::try_parse_from(["sluice", "--url", "sluice://h:2", "--json", "queues"]).unwrap();
        assert!(matches!(cli.command, AdminCommand::Queues));
        assert_eq!(
            (cli.target.url.as_str(), cli.target.json),
            ("sluice://h:2", true)
        );
        let cli = Cli::try_parse_from(["sluice", "unbind", "q", "x"]).unwrap();
        if std::env::var_os("SLUICE_URL").is_none() {
            assert_eq!(cli.target.url, DEFAULT_URL);
        }
        let AdminCommand::Unbind(unbind) = &cli.command else {
            panic!()
        };
        assert_eq!(unbind.routing_key, "");
        assert!(Cli::try_parse_from(["sluice", "declare-exchange", "x"]).is_err());
        let cli = Cli::try_parse_from(["sluice", "consume", "q", "--count", "2", "--json"]);
        let cli = cli.unwrap();
        let AdminCommand::Consume(consume) = cli.command else {
            panic!()
        };
        assert_eq!(consume.prefetch, DEFAULT_CONSUME_PREFETCH);
        assert!(cli.target.json);
    }
}
