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

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

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
    fn raising_the_limit_never_lowers_it() {
        let before = descriptor_limit();
        let limit = raise_descriptor_limit().unwrap();
        assert_eq!(limit.before, before);
        assert!(limit.now >= before || limit.now.is_none());
        assert_eq!(limit.now, descriptor_limit());
    }
}
