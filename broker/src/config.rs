//! Server settings: command-line flags, `SLUICE_*` environment variables and a TOML file, in
//! that order of precedence, over built-in defaults that need no set-up at all.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::limits::{LimitArgs, Limits};
use crate::queue::history::HistorySettings;
use crate::telemetry::OtlpSettings;
use crate::tls::TlsFiles;
use sluice_client::wire::{
    DEFAULT_HEARTBEAT_MS, DEFAULT_MAX_FRAME_LEN, DEFAULT_MAX_MESSAGE_LEN, DEFAULT_PORT,
    FRAME_OVERHEAD_RESERVE, MIN_MAX_FRAME_LEN,
};

/// The data directory used when none is configured, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "sluice-data";
/// The HTTP admin API's port when none is configured (on the loopback interface).
pub const DEFAULT_HTTP_PORT: u16 = 15680;
/// The TLS port when a certificate is given and no port (protocol.md §5.1).
pub const DEFAULT_TLS_PORT: u16 = 5681;

/// TLS, resolved: where it listens and what it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The TLS port's address.
    pub listen: SocketAddr,
    /// The PEM files, read at start and on SIGHUP.
    pub files: TlsFiles,
}

/// Where the HTTP admin API listens: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpListen {
    /// Listen on this address; port 0 picks a free port.
    On(SocketAddr),
    /// No HTTP server.
    Off,
}

impl HttpListen {
    /// The address, unless the API is off.
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            HttpListen::On(addr) => Some(addr),
            HttpListen::Off => None,
        }
    }
}

impl FromStr for HttpListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(HttpListen::Off);
        }
        s.parse()
            .map(HttpListen::On)
            .map_err(|_| format!("expected host:port or `off`, got '{s}'"))
    }
}

impl fmt::Display for HttpListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpListen::On(addr) => addr.fmt(f),
            HttpListen::Off => f.write_str("off"),
        }
    }
}

impl<'de> Deserialize<'de> for HttpListen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Flags of `sluice serve`; each also reads an environment variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (flags and environment variables win).
    #[arg(long, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory holding the queues' logs and the topology [default: ./sluice-data].
    #[arg(long, env = "SLUICE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on for plain (unencrypted) clients, `HOST:PORT`, or `off` (then TLS
    /// must be on) [default: 127.0.0.1:5680]; a host name is resolved (IPv4 loopback
    /// preferred); port 0 picks a free port.
    #[arg(long, env = "SLUICE_LISTEN", value_name = "HOST:PORT|off")]
    pub listen: Option<String>,
    /// Address of the HTTP admin API, or `off` [default: 127.0.0.1:15680]; port 0 picks a
    /// free port. With TLS on it serves HTTPS with the same certificate.
    #[arg(long, env = "SLUICE_HTTP_LISTEN", value_name = "ADDR|off")]
    pub http_listen: Option<HttpListen>,
    /// The server's TLS certificate chain (PEM, leaf first); turns TLS on, with --tls-key.
    #[arg(long, env = "SLUICE_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The TLS certificate's private key (PEM).
    #[arg(long, env = "SLUICE_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) for mutual TLS: clients without a certificate signed by one of
    /// them are refused in the TLS handshake, on the wire and the HTTP port.
    #[arg(long, env = "SLUICE_TLS_CLIENT_CA", value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,
    /// Address to listen on for TLS clients (`sluices://`), `HOST:PORT` [default:
    /// 127.0.0.1:5681 when a certificate is given].
    #[arg(long, env = "SLUICE_TLS_LISTEN", value_name = "HOST:PORT")]
    pub tls_listen: Option<String>,
    /// Size of each segment file of a queue log, in bytes [default: 8 MiB].
    #[arg(long, env = "SLUICE_SEGMENT_BYTES")]
    pub segment_bytes: Option<usize>,
    /// Largest accepted message (meta + body), in bytes [default: 16 MiB].
    #[arg(long, env = "SLUICE_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<u32>,
    /// Heartbeat interval offered to clients that have no preference, in ms; 0 = off.
    #[arg(long, env = "SLUICE_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u32>,
    /// The users file: vhosts, users (argon2id password hashes), tags and permissions
    /// [default: DATA_DIR/users.toml, created with user guest on first start]. Edit it with
    /// `sluice user|vhost|permissions`, then `kill -HUP` the broker.
    #[arg(long, env = "SLUICE_USERS_FILE")]
    pub users_file: Option<PathBuf>,
    /// Users who may log in from loopback addresses only, comma-separated; an empty value
    /// allows every user from anywhere [default: guest].
    #[arg(long, env = "SLUICE_LOOPBACK_USERS", value_delimiter = ',', num_args = 0..)]
    pub loopback_users: Option<Vec<String>>,
    /// Publishers are blocked while the data directory's file system has less free space.
    #[arg(long, env = "SLUICE_MIN_FREE_DISK_BYTES")]
    pub min_free_disk_bytes: Option<u64>,
    /// A connection whose socket stays full this long (it does not read what it asked for) is
    /// closed with SLOW_CONSUMER, in ms [default: 30000].
    #[arg(long, env = "SLUICE_SLOW_CONSUMER_TIMEOUT_MS")]
    pub slow_consumer_timeout_ms: Option<u64>,
    /// Publishers are blocked while the broker's resident heap memory is above this, in
    /// bytes; 0 = no limit [default: 40% of the machine's or the cgroup's memory].
    #[arg(long, env = "SLUICE_MAX_MEMORY_BYTES")]
    pub max_memory_bytes: Option<u64>,
    /// Most client connections at once, those still in their handshake included; more are
    /// refused with CONNECTION_LIMIT [default: half the descriptor limit left after a reserve
    /// of 64; the rest is kept for queue files].
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Time a client has to complete the handshake, in ms [default: 10000].
    #[arg(long, env = "SLUICE_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// This node's id in a cluster (a positive number, unique and never reused); turns the
    /// cluster on, with --cluster-listen. Without it the broker runs alone, as always.
    #[arg(long, env = "SLUICE_NODE_ID", value_name = "N")]
    pub node_id: Option<u64>,
    /// Address of the cluster listener, where the other nodes connect, `HOST:PORT`; port 0
    /// picks a free one. Connections to other nodes leave from this host's IP.
    #[arg(long, env = "SLUICE_CLUSTER_LISTEN", value_name = "HOST:PORT")]
    pub cluster_listen: Option<String>,
    /// The cluster address other nodes dial, when it differs from the bound one (a DNS name
    /// in Kubernetes) [default: the bound cluster listener address].
    #[arg(long, env = "SLUICE_CLUSTER_ADVERTISE", value_name = "HOST:PORT")]
    pub cluster_advertise: Option<String>,
    /// Cluster addresses of members to join through, comma-separated. A node with an empty
    /// data directory and no --join starts a new cluster; a node with data rejoins by itself.
    #[arg(
        long,
        env = "SLUICE_CLUSTER_JOIN",
        value_delimiter = ',',
        value_name = "ADDR,..."
    )]
    pub join: Option<Vec<String>>,
    /// How long a follower waits without hearing from its leader before it may campaign, in
    /// ms: a dead node's queues get a new leader after 1.5 to 2 times this. Heartbeats go
    /// every tenth of it. Raise it where nodes stall for long (loaded machines) [default: 1000].
    #[arg(long, env = "SLUICE_CLUSTER_ELECTION_TIMEOUT_MS", value_name = "MS")]
    pub cluster_election_timeout_ms: Option<u64>,
    /// How long each queue keeps the history of a message that left it (`sluice trace`), in
    /// ms; 0 = no message history [default: 600000, ten minutes].
    #[arg(long, env = "SLUICE_MESSAGE_HISTORY_WINDOW_MS", value_name = "MS")]
    pub message_history_window_ms: Option<u64>,
    /// Most messages each queue keeps the history of; the oldest records go first
    /// [default: 10000].
    #[arg(long, env = "SLUICE_MESSAGE_HISTORY_MAX_MESSAGES", value_name = "N")]
    pub message_history_max_messages: Option<usize>,
    /// Export the broker's spans (publish, route, store, confirm, deliver, settle) over
    /// OTLP/HTTP to this collector, e.g. `http://127.0.0.1:4318` (`/v1/traces` is added
    /// when the URL has no path). Off by default.
    #[arg(long, env = "SLUICE_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// With --otlp-endpoint: the share of messages without a `traceparent` the broker starts
    /// a trace for, 0.0 to 1.0. Messages with one follow their sampled flag [default: 0].
    #[arg(long, env = "SLUICE_OTLP_SAMPLE_RATIO", value_name = "RATIO")]
    pub otlp_sample_ratio: Option<f64>,
    /// Limits per user, connection, consumer and exchange ([`crate::limits::Limits`]).
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The TOML file's `[cluster]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    node_id: Option<u64>,
    listen: Option<String>,
    advertise: Option<String>,
    join: Option<Vec<String>>,
    election_timeout_ms: Option<u64>,
}

/// This node's cluster settings, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// The node's id.
    pub node_id: u64,
    /// The cluster listener.
    pub listen: SocketAddr,
    /// The address peers dial; `None`: the bound one.
    pub advertise: Option<String>,
    /// Members to join through.
    pub join: Vec<String>,
    /// The raft election timeout (its maximum; see `--cluster-election-timeout-ms`).
    pub election_timeout: Duration,
}

/// The default of `--cluster-election-timeout-ms`.
pub const DEFAULT_ELECTION_TIMEOUT: Duration = Duration::from_millis(1000);
/// The range `--cluster-election-timeout-ms` must be in: below it heartbeats (a tenth) would
/// flood the peers, above it a dead node's queues would wait minutes.
pub const ELECTION_TIMEOUT_RANGE_MS: std::ops::RangeInclusive<u64> = 300..=60_000;

/// The `[server]`-less TOML file: the same names as the flags, with underscores.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    http_listen: Option<HttpListen>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tls_listen: Option<String>,
    segment_bytes: Option<usize>,
    max_message_bytes: Option<u32>,
    heartbeat_ms: Option<u32>,
    users_file: Option<PathBuf>,
    loopback_users: Option<Vec<String>>,
    min_free_disk_bytes: Option<u64>,
    slow_consumer_timeout_ms: Option<u64>,
    max_memory_bytes: Option<u64>,
    max_connections: Option<usize>,
    handshake_timeout_ms: Option<u64>,
    max_connections_per_user: Option<usize>,
    max_handshaking: Option<usize>,
    max_consumers_per_connection: Option<usize>,
    max_unsettled_publish_bytes: Option<usize>,
    max_prefetch: Option<u32>,
    max_bindings_per_exchange: Option<usize>,
    max_header_entries: Option<usize>,
    max_header_bytes: Option<usize>,
    message_history_window_ms: Option<u64>,
    message_history_max_messages: Option<usize>,
    otlp_endpoint: Option<String>,
    otlp_sample_ratio: Option<f64>,
    cluster: Option<FileCluster>,
}

impl FileConfig {
    /// The file's limit settings (top-level keys, like every other setting).
    fn limits(&self) -> LimitArgs {
        LimitArgs {
            max_connections_per_user: self.max_connections_per_user,
            max_handshaking: self.max_handshaking,
            max_consumers_per_connection: self.max_consumers_per_connection,
            max_unsettled_publish_bytes: self.max_unsettled_publish_bytes,
            max_prefetch: self.max_prefetch,
            max_bindings_per_exchange: self.max_bindings_per_exchange,
            max_header_entries: self.max_header_entries,
            max_header_bytes: self.max_header_bytes,
        }
    }
}

/// Everything the server needs, resolved.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Listening address of the plain port; `None`: off (TLS only).
    pub listen: Option<SocketAddr>,
    /// The HTTP admin API's address, or off.
    pub http_listen: HttpListen,
    /// TLS: its port and files; `None`: off.
    pub tls: Option<TlsSettings>,
    /// Segment size of new queue logs.
    pub segment_bytes: usize,
    /// Largest frame a client may send or receive.
    pub max_frame_len: u32,
    /// Largest message (meta + body).
    pub max_message_len: u32,
    /// Heartbeat interval offered; 0 = off.
    pub heartbeat_ms: u32,
    /// Allowed heartbeat range for client proposals.
    pub heartbeat_range_ms: (u32, u32),
    /// The users file; `None`: `users.toml` in the data directory.
    pub users_file: Option<PathBuf>,
    /// Users who may log in from loopback addresses only.
    pub loopback_users: BTreeSet<String>,
    /// Publishers are blocked below this much free disk space.
    pub min_free_disk_bytes: u64,
    /// A connection whose outbox stays full this long is closed (a slow consumer).
    pub slow_consumer_timeout: Duration,
    /// Publishers are blocked while the resident heap memory is above this; `None` = no limit.
    pub max_memory_bytes: Option<u64>,
    /// Time a client has to complete the handshake.
    pub handshake_timeout: Duration,
    /// Most connections at once (in handshake or not); `None`: derived from the descriptor
    /// limit when the server starts ([`crate::limits::default_max_connections`]).
    pub max_connections: Option<usize>,
    /// Lease of deliveries when neither queue nor consumer sets one.
    pub default_ack_timeout: Duration,
    /// Limits per user, connection, consumer and exchange.
    pub limits: Limits,
    /// The cluster; `None`: a single node, no cluster code runs.
    pub cluster: Option<ClusterSettings>,
    /// How much each queue remembers of its messages' lives (`sluice trace`).
    pub message_history: HistorySettings,
    /// Where the broker's spans go; `None`: nowhere (no span is made).
    pub otlp: Option<OtlpSettings>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT))),
            http_listen: HttpListen::On(SocketAddr::from(([127, 0, 0, 1], DEFAULT_HTTP_PORT))),
            tls: None,
            segment_bytes: 8 << 20,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            heartbeat_range_ms: (1_000, 600_000),
            users_file: None,
            loopback_users: BTreeSet::from(["guest".to_owned()]),
            min_free_disk_bytes: 64 << 20,
            slow_consumer_timeout: Duration::from_secs(30),
            max_memory_bytes: crate::flow::default_memory_limit(),
            handshake_timeout: Duration::from_secs(10),
            max_connections: None,
            default_ack_timeout: Duration::from_secs(30 * 60),
            limits: Limits::default(),
            cluster: None,
            message_history: HistorySettings::DEFAULT,
            otlp: None,
        }
    }
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML file does not parse or has unknown keys.
    #[error("config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid setting {name}: {reason}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

impl ServerConfig {
    /// Resolves flags (and their environment variables) over the TOML file over defaults.
    pub fn resolve(args: &ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let mut c = ServerConfig {
            limits: args.limits.or(&file.limits()).resolve()?,
            tls: resolve_tls(args, &file)?,
            ..ServerConfig::default()
        };
        if let Some(v) = args.data_dir.clone().or(file.data_dir) {
            c.data_dir = v;
        }
        if let Some(v) = args.listen.as_deref().or(file.listen.as_deref()) {
            c.listen = if v.eq_ignore_ascii_case("off") {
                None
            } else {
                Some(resolve_listen("listen", v)?)
            };
        }
        if let Some(v) = args.http_listen.or(file.http_listen) {
            c.http_listen = v;
        }
        if c.listen.is_none() && c.tls.is_none() {
            return Err(invalid(
                "listen",
                "`off` needs TLS on (--tls-cert and --tls-key): clients must have a port",
            ));
        }
        if let Some(v) = args.segment_bytes.or(file.segment_bytes) {
            if !(64 << 10..=1 << 30).contains(&v) {
                return Err(invalid("segment_bytes", "must be between 64 KiB and 1 GiB"));
            }
            c.segment_bytes = v;
        }
        if let Some(v) = args.max_message_bytes.or(file.max_message_bytes) {
            let limit = u32::MAX - FRAME_OVERHEAD_RESERVE - 4;
            if v == 0 || v > limit {
                return Err(invalid("max_message_bytes", "must be between 1 and 4 GiB"));
            }
            c.max_message_len = v;
            c.max_frame_len = v
                .saturating_add(FRAME_OVERHEAD_RESERVE)
                .max(MIN_MAX_FRAME_LEN);
        }
        if let Some(v) = args.heartbeat_ms.or(file.heartbeat_ms) {
            c.heartbeat_ms = v;
        }
        if let Some(v) = args.min_free_disk_bytes.or(file.min_free_disk_bytes) {
            c.min_free_disk_bytes = v;
        }
        if let Some(v) = args
            .slow_consumer_timeout_ms
            .or(file.slow_consumer_timeout_ms)
        {
            if v == 0 {
                return Err(invalid("slow_consumer_timeout_ms", "must be at least 1"));
            }
            c.slow_consumer_timeout = Duration::from_millis(v);
        }
        if let Some(v) = args.max_memory_bytes.or(file.max_memory_bytes) {
            c.max_memory_bytes = (v > 0).then_some(v);
        }
        if let Some(v) = args.max_connections.or(file.max_connections) {
            if v == 0 {
                return Err(invalid("max_connections", "must be at least 1"));
            }
            c.max_connections = Some(v);
        }
        if let Some(v) = args.handshake_timeout_ms.or(file.handshake_timeout_ms) {
            if v == 0 {
                return Err(invalid("handshake_timeout_ms", "must be at least 1"));
            }
            c.handshake_timeout = Duration::from_millis(v);
        }
        if let Some(v) = args
            .message_history_window_ms
            .or(file.message_history_window_ms)
        {
            c.message_history.window = Duration::from_millis(v);
        }
        if let Some(v) = args
            .message_history_max_messages
            .or(file.message_history_max_messages)
        {
            c.message_history.max_messages = v;
        }
        c.otlp = resolve_otlp(args, file.otlp_endpoint.clone(), file.otlp_sample_ratio)?;
        c.users_file = args.users_file.clone().or(file.users_file);
        if let Some(users) = args.loopback_users.clone().or(file.loopback_users) {
            c.loopback_users = users
                .into_iter()
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect();
        }
        c.cluster = resolve_cluster(args, file.cluster.unwrap_or_default())?;
        Ok(c)
    }

    /// The users file: the configured one, or `users.toml` in the data directory.
    pub fn users_file_path(&self) -> PathBuf {
        self.users_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(crate::auth::DEFAULT_FILE_NAME))
    }
}

/// The OTLP exporter from `otlp_endpoint` and `otlp_sample_ratio`.
fn resolve_otlp(
    args: &ServeArgs,
    file_endpoint: Option<String>,
    file_ratio: Option<f64>,
) -> Result<Option<OtlpSettings>, ConfigError> {
    let ratio = args.otlp_sample_ratio.or(file_ratio);
    if ratio.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
        return Err(invalid("otlp_sample_ratio", "must be between 0.0 and 1.0"));
    }
    let Some(endpoint) = args.otlp_endpoint.clone().or(file_endpoint) else {
        if ratio.is_some() {
            return Err(invalid("otlp_sample_ratio", "needs otlp_endpoint"));
        }
        return Ok(None);
    };
    let settings = OtlpSettings::new(&endpoint, ratio.unwrap_or(0.0))
        .map_err(|why| invalid("otlp_endpoint", why))?;
    Ok(Some(settings))
}

/// The cluster from `node_id`, `cluster_listen`, `cluster_advertise` and `join`: on with a
/// node id and a listener; the others without a node id are a mistake, not something to ignore.
fn resolve_cluster(
    args: &ServeArgs,
    file: FileCluster,
) -> Result<Option<ClusterSettings>, ConfigError> {
    let node_id = args.node_id.or(file.node_id);
    let listen = args.cluster_listen.clone().or(file.listen);
    let advertise = args.cluster_advertise.clone().or(file.advertise);
    let election_ms = args
        .cluster_election_timeout_ms
        .or(file.election_timeout_ms);
    let join: Vec<String> = args
        .join
        .clone()
        .or(file.join)
        .unwrap_or_default()
        .into_iter()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect();
    let Some(node_id) = node_id else {
        if listen.is_some() || advertise.is_some() || !join.is_empty() || election_ms.is_some() {
            return Err(invalid("node_id", "the cluster settings need --node-id"));
        }
        return Ok(None);
    };
    if node_id == 0 {
        return Err(invalid("node_id", "must be at least 1"));
    }
    let Some(listen) = listen else {
        return Err(invalid(
            "cluster_listen",
            "--node-id needs --cluster-listen",
        ));
    };
    let listen = resolve_listen("cluster_listen", &listen)?;
    if advertise.is_none() && listen.ip().is_unspecified() {
        return Err(invalid(
            "cluster_advertise",
            "a cluster listener on all interfaces needs --cluster-advertise: peers cannot dial 0.0.0.0",
        ));
    }
    let election_timeout = match election_ms {
        None => DEFAULT_ELECTION_TIMEOUT,
        Some(ms) if ELECTION_TIMEOUT_RANGE_MS.contains(&ms) => Duration::from_millis(ms),
        Some(_) => {
            return Err(invalid(
                "cluster_election_timeout_ms",
                "must be from 300 to 60000 (ms)",
            ))
        }
    };
    Ok(Some(ClusterSettings {
        node_id,
        listen,
        advertise,
        join,
        election_timeout,
    }))
}

/// TLS from `tls_cert`, `tls_key`, `tls_client_ca` and `tls_listen`: on with a certificate
/// and its key; the other two without them are a mistake, not something to ignore.
fn resolve_tls(args: &ServeArgs, file: &FileConfig) -> Result<Option<TlsSettings>, ConfigError> {
    let cert = args.tls_cert.clone().or_else(|| file.tls_cert.clone());
    let key = args.tls_key.clone().or_else(|| file.tls_key.clone());
    let client_ca = args
        .tls_client_ca
        .clone()
        .or_else(|| file.tls_client_ca.clone());
    let listen = args.tls_listen.as_deref().or(file.tls_listen.as_deref());
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => return Err(invalid("tls_key", "--tls-cert needs --tls-key")),
        (None, Some(_)) => return Err(invalid("tls_cert", "--tls-key needs --tls-cert")),
        (None, None) => {
            let needs_cert = if client_ca.is_some() {
                Some("tls_client_ca")
            } else if listen.is_some() {
                Some("tls_listen")
            } else {
                None
            };
            return match needs_cert {
                Some(name) => Err(invalid(name, "needs --tls-cert and --tls-key")),
                None => Ok(None),
            };
        }
    };
    let listen = match listen {
        Some(spec) => resolve_listen("tls_listen", spec)?,
        None => SocketAddr::from(([127, 0, 0, 1], DEFAULT_TLS_PORT)),
    };
    Ok(Some(TlsSettings {
        listen,
        files: TlsFiles {
            cert,
            key,
            client_ca,
        },
    }))
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

fn invalid(name: &'static str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        name,
        reason: reason.into(),
    }
}

/// `HOST:PORT` to one address. A host name may resolve to several (`localhost` to `::1` and
/// `127.0.0.1`): IPv4 loopback first, since that is what `127.0.0.1` in a client URL reaches,
/// then any IPv4, then the first one.
fn resolve_listen(name: &'static str, spec: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = spec.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad = |reason: String| ConfigError::Invalid { name, reason };
    let has_port = spec
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !has_port {
        return Err(bad(format!(
            "'{spec}' is not HOST:PORT; give one such as 127.0.0.1:5680 or localhost:5680"
        )));
    }
    let addrs: Vec<SocketAddr> = spec
        .to_socket_addrs()
        .map_err(|e| bad(format!("the host of '{spec}' does not resolve ({e})")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4() && a.ip().is_loopback())
        .or_else(|| addrs.iter().find(|a| a.is_ipv4()))
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| bad(format!("the host of '{spec}' resolves to no address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_node_id_there_is_no_cluster_and_stray_cluster_settings_are_refused() {
        assert_eq!(
            ServerConfig::resolve(&ServeArgs::default())
                .unwrap()
                .cluster,
            None
        );
        let args = ServeArgs {
            join: Some(vec!["127.0.0.1:7000".into()]),
            ..ServeArgs::default()
        };
        assert!(matches!(
            ServerConfig::resolve(&args),
            Err(ConfigError::Invalid {
                name: "node_id",
                ..
            })
        ));
        let args = ServeArgs {
            node_id: Some(1),
            ..ServeArgs::default()
        };
        assert!(matches!(
            ServerConfig::resolve(&args),
            Err(ConfigError::Invalid {
                name: "cluster_listen",
                ..
            })
        ));
    }

    #[test]
    fn the_cluster_comes_from_the_file_table_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(
            &path,
            "[cluster]\nnode_id = 2\nlisten = \"127.0.0.12:7000\"\nadvertise = \"node2:7000\"\njoin = [\"127.0.0.11:7000\"]\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        };
        assert_eq!(
            ServerConfig::resolve(&args).unwrap().cluster,
            Some(ClusterSettings {
                node_id: 2,
                listen: "127.0.0.12:7000".parse().unwrap(),
                advertise: Some("node2:7000".into()),
                join: vec!["127.0.0.11:7000".into()],
                election_timeout: DEFAULT_ELECTION_TIMEOUT,
            })
        );
        let args = ServeArgs {
            config: Some(path),
            node_id: Some(3),
            join: Some(vec!["a:1".into(), " b:2".into()]),
            ..ServeArgs::default()
        };
        let c = ServerConfig::resolve(&args).unwrap().cluster.unwrap();
        assert_eq!(
            (c.node_id, c.join),
            (3, vec!["a:1".to_owned(), "b:2".to_owned()])
        );
    }

    #[test]
    fn defaults_need_no_setup() {
        let c = ServerConfig::resolve(&ServeArgs::default()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("sluice-data"));
        assert_eq!(c.listen, Some("127.0.0.1:5680".parse().unwrap()));
        assert_eq!(c.tls, None);
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:15680");
        assert_eq!(c.users_file_path(), PathBuf::from("sluice-data/users.toml"));
        assert_eq!(c.loopback_users, BTreeSet::from(["guest".to_owned()]));
    }

    #[test]
    fn the_http_api_listens_where_told_or_is_off() {
        assert_eq!("off".parse(), Ok(HttpListen::Off));
        assert_eq!("OFF".parse(), Ok(HttpListen::Off));
        assert_eq!(
            "127.0.0.1:0".parse(),
            Ok(HttpListen::On("127.0.0.1:0".parse().unwrap()))
        );
        assert!("nowhere".parse::<HttpListen>().is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, "http_listen = \"off\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        };
        assert_eq!(
            ServerConfig::resolve(&args).unwrap().http_listen,
            HttpListen::Off
        );
        let args = ServeArgs {
            config: Some(path),
            http_listen: Some(HttpListen::On("127.0.0.1:9999".parse().unwrap())),
            ..ServeArgs::default()
        };
        let c = ServerConfig::resolve(&args).unwrap();
        assert_eq!(
            c.http_listen.addr(),
            Some("127.0.0.1:9999".parse().unwrap())
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv/q\"\nlisten = \"127.0.0.1:7000\"\nloopback_users = []\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            listen: Some("127.0.0.1:7001".into()),
            ..ServeArgs::default()
        };
        let c = ServerConfig::resolve(&args).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/q"));
        assert_eq!(c.listen.map(|a| a.port()), Some(7001));
        assert!(c.loopback_users.is_empty());
        assert_eq!(c.users_file_path(), PathBuf::from("/srv/q/users.toml"));
    }

    #[test]
    fn the_connection_limit_is_derived_unless_set_and_never_zero() {
        let c = ServerConfig::resolve(&ServeArgs::default()).unwrap();
        assert_eq!(c.max_connections, None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(
            &path,
            "max_connections = 200\nhandshake_timeout_ms = 2500\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        };
        let c = ServerConfig::resolve(&args).unwrap();
        assert_eq!(c.max_connections, Some(200));
        assert_eq!(c.handshake_timeout, Duration::from_millis(2500));
        let args = ServeArgs {
            config: Some(path),
            max_connections: Some(0),
            ..ServeArgs::default()
        };
        assert!(matches!(
            ServerConfig::resolve(&args),
            Err(ConfigError::Invalid {
                name: "max_connections",
                ..
            })
        ));
    }

    #[test]
    fn limits_come_from_the_file_under_their_own_names_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(
            &path,
            "max_connections_per_user = 5\nmax_consumers_per_connection = 9\nmax_header_bytes = 4096\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            limits: LimitArgs {
                max_consumers_per_connection: Some(3),
                ..LimitArgs::default()
            },
            ..ServeArgs::default()
        };
        let c = ServerConfig::resolve(&args).unwrap();
        assert_eq!(c.limits.max_connections_per_user, Some(5));
        assert_eq!(c.limits.max_consumers_per_connection, 3);
        assert_eq!(c.limits.headers.max_bytes, 4096);
        assert_eq!(c.limits.max_prefetch, Limits::default().max_prefetch);
    }

    #[test]
    fn listen_takes_a_host_name_and_prefers_ipv4_loopback() {
        assert_eq!(
            resolve_listen("listen", "localhost:5680").unwrap(),
            SocketAddr::from(([127, 0, 0, 1], 5680))
        );
        assert_eq!(
            resolve_listen("listen", "[::1]:0").unwrap().to_string(),
            "[::1]:0"
        );
        for bad in [
            "localhost",
            "5680",
            ":5680",
            "localhost:http",
            "no-such-host.invalid:1",
        ] {
            let e = resolve_listen("listen", bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid setting listen: "), "{e}");
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn unknown_file_keys_and_plain_passwords_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, "data_dirr = \"x\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        assert!(matches!(
            ServerConfig::resolve(&args),
            Err(ConfigError::Parse { .. })
        ));
        // Users and passwords live in the users file, hashed; never in the config.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, "[[users]]\nname = \"app\"\npassword = \"pw\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        assert!(matches!(
            ServerConfig::resolve(&args),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn tls_is_on_with_a_certificate_and_its_key_on_port_5681_by_default() {
        let args = ServeArgs {
            tls_cert: Some("/etc/sluice/cert.pem".into()),
            tls_key: Some("/etc/sluice/key.pem".into()),
            ..ServeArgs::default()
        };
        let c = ServerConfig::resolve(&args).unwrap();
        let tls = c.tls.expect("TLS on");
        assert_eq!(tls.listen.to_string(), "127.0.0.1:5681");
        assert_eq!(tls.files.cert, PathBuf::from("/etc/sluice/cert.pem"));
        assert_eq!(tls.files.client_ca, None);
        // The plain port stays.
        assert_eq!(c.listen, Some("127.0.0.1:5680".parse().unwrap()));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(
            &path,
            "listen = \"off\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n\
             tls_client_ca = \"ca.pem\"\ntls_listen = \"127.0.0.1:7443\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        let c = ServerConfig::resolve(&args).unwrap();
        assert_eq!(c.listen, None);
        let tls = c.tls.expect("TLS on");
        assert_eq!(tls.listen.port(), 7443);
        assert_eq!(tls.files.client_ca, Some(PathBuf::from("ca.pem")));
    }

    #[test]
    fn half_a_tls_setup_or_no_port_at_all_is_an_error() {
        let cases = [
            (
                ServeArgs {
                    tls_cert: Some("c.pem".into()),
                    ..ServeArgs::default()
                },
                "tls_key",
            ),
            (
                ServeArgs {
                    tls_key: Some("k.pem".into()),
                    ..ServeArgs::default()
                },
                "tls_cert",
            ),
            (
                ServeArgs {
                    tls_client_ca: Some("ca.pem".into()),
                    ..ServeArgs::default()
                },
                "tls_client_ca",
            ),
            (
                ServeArgs {
                    tls_listen: Some("127.0.0.1:5681".into()),
                    ..ServeArgs::default()
                },
                "tls_listen",
            ),
            (
                ServeArgs {
                    listen: Some("off".into()),
                    ..ServeArgs::default()
                },
                "listen",
            ),
        ];
        for (args, setting) in cases {
            match ServerConfig::resolve(&args) {
                Err(ConfigError::Invalid { name, .. }) => assert_eq!(name, setting),
                other => panic!("{setting}: {other:?}"),
            }
        }
    }
}
