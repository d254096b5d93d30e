//! The process's file-descriptor limit, and the share of it that connections may take.
//!
//! Every connection holds a socket, and every queue holds files (its manifest, the active
//! segment and its ack log, each sealed segment not yet deleted). When clients may open sockets
//! until `EMFILE`, queues can no longer create their files. So connections get a bounded share
//! of the descriptors, and the rest is kept for storage:
//!
//! ```text
//! max_connections = (RLIMIT_NOFILE soft limit - FIXED_RESERVE) / 2
//! ```
//!
//! e.g. 480 connections under the usual limit of 1 024 (and 480 descriptors for queue files),
//! 524 256 under 1 048 576. `max_connections` in the configuration overrides it.
//!
//! [`Limits`] holds the other limits on what one client or user may hold (issue #12): each is
//! a setting (flag, `SLUICE_*` variable, TOML key), has a typed error for the client and a log
//! line for the operator, and is listed with its current use by `GET /api/limits`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::config::ConfigError;
use crate::routing::HeaderLimits;

/// Sockets in their handshake at once by default: a reconnecting fleet passes through in
/// milliseconds each, while silent sockets that never send `Hello` cannot hold more.
pub const DEFAULT_MAX_HANDSHAKING: usize = 1024;
/// Consumers one connection may have at once by default.
pub const DEFAULT_MAX_CONSUMERS_PER_CONNECTION: usize = 1024;
/// Bytes of published messages one connection may have unsettled (not yet confirmed or
/// rejected) before its session stops reading it, by default. Benchmarks keep 1 000 messages
/// of a few hundred bytes in flight per publisher, far below.
pub const DEFAULT_MAX_UNSETTLED_PUBLISH_BYTES: usize = 64 << 20;
/// Most unacked deliveries a consumer holds by default, whatever its prefetch (0 = no limit
/// is this too).
pub const DEFAULT_MAX_PREFETCH: u32 = 65_536;
/// Bindings one exchange may have by default.
pub const DEFAULT_MAX_BINDINGS_PER_EXCHANGE: usize = 10_000;

/// The limits on what one client, user or exchange may hold, resolved from the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections one user may have open at once; `None` = no limit.
    pub max_connections_per_user: Option<usize>,
    /// Sockets still in their handshake at once; more are refused with `CONNECTION_LIMIT`.
    pub max_handshaking: usize,
    /// Consumers per connection; more are refused with `LIMIT_EXCEEDED`.
    pub max_consumers_per_connection: usize,
    /// Bytes of unsettled publishes per connection before the server stops reading it.
    pub max_unsettled_publish_bytes: usize,
    /// Most unacked deliveries per consumer: a prefetch of 0 or above it gets this.
    pub max_prefetch: u32,
    /// Bindings per exchange; more are refused with `LIMIT_EXCEEDED`.
    pub max_bindings_per_exchange: usize,
    /// Entries and bytes of message headers and binding arguments.
    pub headers: HeaderLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections_per_user: None,
            max_handshaking: DEFAULT_MAX_HANDSHAKING,
            max_consumers_per_connection: DEFAULT_MAX_CONSUMERS_PER_CONNECTION,
            max_unsettled_publish_bytes: DEFAULT_MAX_UNSETTLED_PUBLISH_BYTES,
            max_prefetch: DEFAULT_MAX_PREFETCH,
            max_bindings_per_exchange: DEFAULT_MAX_BINDINGS_PER_EXCHANGE,
            headers: HeaderLimits::default(),
        }
    }
}

/// The limit settings as given (flags and their variables, or the TOML file); unset ones keep
/// their defaults.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LimitArgs {
    /// Connections one user may have open at once; more are closed with CONNECTION_LIMIT after
    /// login [default: no limit].
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS_PER_USER")]
    pub max_connections_per_user: Option<usize>,
    /// Sockets still in their handshake at once; more are refused with CONNECTION_LIMIT before
    /// Hello [default: 1024].
    #[arg(long, env = "SLUICE_MAX_HANDSHAKING")]
    pub max_handshaking: Option<usize>,
    /// Consumers one connection may have; more are refused with LIMIT_EXCEEDED [default: 1024].
    #[arg(long, env = "SLUICE_MAX_CONSUMERS_PER_CONNECTION")]
    pub max_consumers_per_connection: Option<usize>,
    /// Bytes of published messages one connection may have unconfirmed before the server stops
    /// reading it (TCP back-pressure) [default: 64 MiB].
    #[arg(long, env = "SLUICE_MAX_UNSETTLED_PUBLISH_BYTES")]
    pub max_unsettled_publish_bytes: Option<usize>,
    /// Most unacked deliveries one consumer holds; a prefetch of 0 (no limit) or above gets
    /// this [default: 65536].
    #[arg(long, env = "SLUICE_MAX_PREFETCH")]
    pub max_prefetch: Option<u32>,
    /// Bindings one exchange may have; more are refused with LIMIT_EXCEEDED [default: 10000].
    #[arg(long, env = "SLUICE_MAX_BINDINGS_PER_EXCHANGE")]
    pub max_bindings_per_exchange: Option<usize>,
    /// Entries of message headers and binding arguments [default: 1024].
    #[arg(long, env = "SLUICE_MAX_HEADER_ENTRIES")]
    pub max_header_entries: Option<usize>,
    /// Encoded bytes of message headers and binding arguments [default: 65536].
    #[arg(long, env = "SLUICE_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
}

impl LimitArgs {
    /// Each setting given here, else in `file`.
    pub fn or(&self, file: &LimitArgs) -> LimitArgs {
        LimitArgs {
            max_connections_per_user: self
                .max_connections_per_user
                .or(file.max_connections_per_user),
            max_handshaking: self.max_handshaking.or(file.max_handshaking),
            max_consumers_per_connection: self
                .max_consumers_per_connection
                .or(file.max_consumers_per_connection),
            max_unsettled_publish_bytes: self
                .max_unsettled_publish_bytes
                .or(file.max_unsettled_publish_bytes),
            max_prefetch: self.max_prefetch.or(file.max_prefetch),
            max_bindings_per_exchange: self
                .max_bindings_per_exchange
                .or(file.max_bindings_per_exchange),
            max_header_entries: self.max_header_entries.or(file.max_header_entries),
            max_header_bytes: self.max_header_bytes.or(file.max_header_bytes),
        }
    }

    /// The limits, over the defaults; every limit is at least 1.
    pub fn resolve(&self) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let headers = HeaderLimits {
            max_entries: at_least_1("max_header_entries", self.max_header_entries)?
                .unwrap_or(d.headers.max_entries),
            max_bytes: at_least_1("max_header_bytes", self.max_header_bytes)?
                .unwrap_or(d.headers.max_bytes),
        };
        Ok(Limits {
            max_connections_per_user: at_least_1(
                "max_connections_per_user",
                self.max_connections_per_user,
            )?,
            max_handshaking: at_least_1("max_handshaking", self.max_handshaking)?
                .unwrap_or(d.max_handshaking)
                // More would make the semaphore that counts them panic.
                .min(tokio::sync::Semaphore::MAX_PERMITS),
            max_consumers_per_connection: at_least_1(
                "max_consumers_per_connection",
                self.max_consumers_per_connection,
            )?
            .unwrap_or(d.max_consumers_per_connection),
            max_unsettled_publish_bytes: at_least_1(
                "max_unsettled_publish_bytes",
                self.max_unsettled_publish_bytes,
            )?
            .unwrap_or(d.max_unsettled_publish_bytes),
            max_prefetch: at_least_1("max_prefetch", self.max_prefetch)?.unwrap_or(d.max_prefetch),
            max_bindings_per_exchange: at_least_1(
                "max_bindings_per_exchange",
                self.max_bindings_per_exchange,
            )?
            .unwrap_or(d.max_bindings_per_exchange),
            headers,
        })
    }
}

/// A limit of 0 would refuse everything: refused as a setting instead.
fn at_least_1<T: PartialEq + From<u8>>(
    name: &'static str,
    value: Option<T>,
) -> Result<Option<T>, ConfigError> {
    if value == Some(T::from(0)) {
        return Err(ConfigError::Invalid {
            name,
            reason: "must be at least 1".into(),
        });
    }
    Ok(value)
}

impl Limits {
    /// The prefetch a consumer asking for `prefetch` gets: 0 (no limit) and anything above
    /// [`max_prefetch`](Self::max_prefetch) become that, so no consumer holds unacked
    /// deliveries without bound.
    pub fn effective_prefetch(&self, prefetch: u32) -> u32 {
        if prefetch == 0 {
            self.max_prefetch
        } else {
            prefetch.min(self.max_prefetch)
        }
    }
}

/// Descriptors kept aside whatever the limit: standard streams, the listener, the runtime's
/// epoll and wake-up descriptors, the data directory and its lock, the sync thread's handle,
/// the topology file while it is rewritten, directories opened for a sync, the refused
/// connections that linger for a moment ([`crate::server`]), and the HTTP API's listener and
/// connections ([`crate::http::MAX_HTTP_CONNECTIONS`]).
pub const FIXED_RESERVE: u64 = 64;

/// The descriptor limit before and after [`raise_descriptor_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorLimit {
    /// The soft limit found at start (`None`: unlimited).
    pub before: Option<u64>,
    /// The soft limit now in force (`None`: unlimited).
    pub now: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as servers do: the default soft limit
/// (1 024) is kept low for old `select()` users, which this process is not.
pub fn raise_descriptor_limit() -> std::io::Result<DescriptorLimit> {
    let limit = getrlimit(Resource::Nofile);
    let target = match limit.maximum {
        Some(hard) => Some(hard),
        // Linux refuses an unlimited descriptor limit; its ceiling is `fs.nr_open`.
        None => std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok()),
    };
    let raise = match (limit.current, target) {
        (Some(soft), Some(target)) => target > soft,
        _ => false,
    };
    if raise {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: target,
                maximum: limit.maximum,
            },
        )?;
    }
    Ok(DescriptorLimit {
        before: limit.current,
        now: getrlimit(Resource::Nofile).current,
    })
}

/// The soft descriptor limit now in force (`None`: unlimited).
pub fn descriptor_limit() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// Connections allowed under a soft descriptor limit of `limit` when `max_connections` is not
/// configured: half of what [`FIXED_RESERVE`] leaves, the other half being kept for queue
/// files. At least 1.
pub fn default_max_connections(limit: Option<u64>) -> usize {
    let Some(limit) = limit else {
        return tokio::sync::Semaphore::MAX_PERMITS;
    };
    let share = limit.saturating_sub(FIXED_RESERVE) / 2;
    usize::try_from(share)
        .unwrap_or(usize::MAX)
        .clamp(1, tokio::sync::Semaphore::MAX_PERMITS)
}

/// Lets one log line through per second for a limit a client can hit as often as it likes
/// (one `static` per call site), counting the ones held back: a flood of refused requests must
/// not become a flood of log lines.
#[derive(Debug)]
pub struct LogGate {
    /// Milliseconds since [`epoch`] of the last line let through, plus 1 (0 = never).
    last_ms: AtomicU64,
    held_back: AtomicU64,
}

/// Least time between two lines of one [`LogGate`].
const LOG_GATE_INTERVAL_MS: u64 = 1_000;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LogGate {
    /// A gate that lets the first line through.
    pub const fn new() -> Self {
        Self {
            last_ms: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be logged now.
    pub fn open(&self) -> Option<u64> {
        self.open_at(epoch().elapsed().as_millis() as u64 + 1)
    }

    fn open_at(&self, now_ms: u64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= LOG_GATE_INTERVAL_MS;
        if !due
            || self
                .last_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.held_back.swap(0, Ordering::Relaxed))
    }
}

impl Default for LogGate {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_get_half_of_what_the_fixed_reserve_leaves() {
        assert_eq!(default_max_connections(Some(1024)), 480);
        assert_eq!(default_max_connections(Some(256)), 96);
        assert_eq!(default_max_connections(Some(1 << 20)), 524_256);
    }

    #[test]
    fn a_tiny_limit_still_allows_one_connection_and_no_limit_allows_many() {
        assert_eq!(default_max_connections(Some(10)), 1);
        assert_eq!(default_max_connections(Some(0)), 1);
        assert!(default_max_connections(None) > 1 << 20);
    }

    #[test]
    fn limits_default_when_unset_and_refuse_zero() {
        assert_eq!(LimitArgs::default().resolve().unwrap(), Limits::default());
        let flags = LimitArgs {
            max_consumers_per_connection: Some(3),
            ..LimitArgs::default()
        };
        let file = LimitArgs {
            max_consumers_per_connection: Some(9),
            max_header_entries: Some(4),
            ..LimitArgs::default()
        };
        let limits = flags.or(&file).resolve().unwrap();
        assert_eq!(limits.max_consumers_per_connection, 3);
        assert_eq!(limits.headers.max_entries, 4);
        assert_eq!(limits.max_connections_per_user, None);
        let zero = LimitArgs {
            max_prefetch: Some(0),
            ..LimitArgs::default()
        };
        assert!(matches!(
            zero.resolve(),
            Err(ConfigError::Invalid {
                name: "max_prefetch",
                ..
            })
        ));
    }

    #[test]
    fn a_log_gate_lets_one_line_a_second_through_and_counts_the_rest() {
        let gate = LogGate::new();
        assert_eq!(gate.open_at(5), Some(0));
        let held = (6..1_000).filter(|t| gate.open_at(*t).is_some()).count();
        assert_eq!(held, 0);
        assert_eq!(gate.open_at(1_005), Some(994));
        assert_eq!(gate.open_at(1_006), None);
    }

    #[test]
    fn no_consumer_has_an_unbounded_prefetch() {
        let limits = Limits {
            max_prefetch: 100,
            ..Limits::default()
        };
        assert_eq!(limits.effective_prefetch(0), 100);
        assert_eq!(limits.effective_prefetch(7), 7);
        assert_eq!(limits.effective_prefetch(100), 100);
        assert_eq!(limits.effective_prefetch(101), 100);
    }

    #[test]
    fn raising_the_limit_never_lowers_it() {
        let before = descriptor_limit();
        let limit = raise_descriptor_limit().unwrap();
        assert_eq!(limit.before, before);
        assert!(limit.now >= before || limit.now.is_none());
        assert_eq!(limit.now, descriptor_limit());
    }
}
