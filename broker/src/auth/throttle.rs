//! Login throttling per source address: someone guessing passwords gets a few guesses a second,
//! however many connections they open, and nobody else notices.
//!
//! Each source (an IPv4 address, or an IPv6 /64, which one host usually owns whole) has a
//! token bucket: [`ThrottleConfig::burst`] tokens, refilled at [`ThrottleConfig::per_second`].
//! A failed login takes a token; a good one takes none. An attempt waits (asynchronously, on
//! its own connection) until its source has a token not already promised to an attempt in
//! progress, so parallel connections cannot spend the same token twice. An attempt that would
//! wait longer than [`ThrottleConfig::max_wait`] is refused at once without checking the
//! password. The table is bounded: past [`ThrottleConfig::capacity`] sources, idle ones go
//! first, then the least recently seen.
//!
//! Failures are logged as a summary per source, at most one line per [`LOG_INTERVAL`]: ten
//! thousand guesses make a handful of lines.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// At most one "login failed" line per source per this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How hard logins are throttled.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleConfig {
    /// Failures a source may have in a row before it is slowed.
    pub burst: u32,
    /// Failures per second a source is allowed after that.
    pub per_second: f64,
    /// Longest wait for a token; past it the attempt is refused without being tried.
    pub max_wait: Duration,
    /// Most sources remembered.
    pub capacity: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            burst: 5,
            per_second: 2.0,
            max_wait: Duration::from_secs(5),
            capacity: 4096,
        }
    }
}

/// Where logins come from, as throttled: an IPv4 address (IPv4-mapped IPv6 included) or the
/// /64 prefix of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// The source of a peer address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Source(IpAddr::V6(prefix.into()))
                }
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => v4.fmt(f),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// An attempt refused without being tried: its source failed too often lately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// The source.
    pub source: Source,
}

/// A line to log about a source's failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureSummary {
    /// The source.
    pub source: Source,
    /// Failed or refused attempts since the last line about it (this one included).
    pub failures: u64,
}

#[derive(Debug)]
struct SourceState {
    tokens: f64,
    refilled: Instant,
    in_flight: u32,
    last_seen: Instant,
    wake: Arc<Notify>,
    unlogged: u64,
    last_logged: Option<Instant>,
}

/// The throttle: one token bucket per source.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    config: ThrottleConfig,
    sources: Mutex<HashMap<Source, SourceState>>,
}

/// A login attempt in progress, holding one of its source's tokens until it ends. Dropped
/// without [`Attempt::succeeded`], it counts as a failure.
#[derive(Debug)]
pub struct Attempt<'a> {
    throttle: &'a LoginThrottle,
    source: Source,
    settled: bool,
}

impl LoginThrottle {
    /// A throttle with `config`.
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            sources: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Source, SourceState>> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `ip`'s source may try a password, at most `max_wait`.
    pub async fn admit(&self, ip: IpAddr) -> Result<Attempt<'_>, Throttled> {
        let source = Source::of(ip);
        let deadline = Instant::now() + self.config.max_wait;
        loop {
            let wake = Arc::clone(&self.state(&mut self.lock(), source, Instant::now()).wake);
            let notified = wake.notified();
            tokio::pin!(notified);
            let next_token = {
                let mut sources = self.lock();
                let now = Instant::now();
                let state = self.state(&mut sources, source, now);
                // Tokens promised to attempts in progress are not free.
                let free = state.tokens - f64::from(state.in_flight);
                if free >= 1.0 {
                    state.in_flight += 1;
                    return Ok(Attempt {
                        throttle: self,
                        source,
                        settled: false,
                    });
                }
                let next_token =
                    now + Duration::from_secs_f64((1.0 - free) / self.config.per_second);
                // Without attempts in progress only the refill can help: refuse now rather
                // than hold a connection that will not get in.
                if now >= deadline || (next_token > deadline && state.in_flight == 0) {
                    state.unlogged += 1;
                    return Err(Throttled { source });
                }
                // Enabled under the lock that settling takes: no wake-up is lost.
                notified.as_mut().enable();
                next_token
            };
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(next_token.min(deadline)) => {}
            }
        }
    }

    /// The state of `source`, refilled up to `now`; made (evicting if full) when new.
    fn state<'m>(
        &self,
        sources: &'m mut HashMap<Source, SourceState>,
        source: Source,
        now: Instant,
    ) -> &'m mut SourceState {
        if !sources.contains_key(&source) && sources.len() >= self.config.capacity {
            self.evict(sources, now);
        }
        let burst = f64::from(self.config.burst);
        let state = sources.entry(source).or_insert_with(|| SourceState {
            tokens: burst,
            refilled: now,
            in_flight: 0,
            last_seen: now,
            wake: Arc::default(),
            unlogged: 0,
            last_logged: None,
        });
        let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
        state.tokens = (state.tokens + elapsed * self.config.per_second).min(burst);
        state.refilled = now;
        state.last_seen = now;
        state
    }

    /// Makes room for one source: forgets sources whose bucket is full again and idle, else
    /// the least recently seen one without an attempt in progress, else the least recent.
    fn evict(&self, sources: &mut HashMap<Source, SourceState>, now: Instant) {
        let burst = f64::from(self.config.burst);
        let per_second = self.config.per_second;
        sources.retain(|_, s| {
            let tokens =
                s.tokens + now.saturating_duration_since(s.refilled).as_secs_f64() * per_second;
            s.in_flight > 0 || tokens < burst || s.unlogged > 0
        });
        if sources.len() < self.config.capacity {
            return;
        }
        let victim = sources
            .iter()
            .min_by_key(|(_, s)| (s.in_flight > 0, s.last_seen))
            .map(|(k, _)| *k);
        if let Some(victim) = victim {
            sources.remove(&victim);
        }
    }

    /// How many sources are remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no source is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn settle(&self, source: Source, failed: bool) -> Option<FailureSummary> {
        let mut sources = self.lock();
        let now = Instant::now();
        let state = self.state(&mut sources, source, now);
        state.in_flight = state.in_flight.saturating_sub(1);
        state.wake.notify_waiters();
        if !failed {
            return None;
        }
        state.tokens -= 1.0;
        state.unlogged += 1;
        let due = state
            .last_logged
            .is_none_or(|t| now.saturating_duration_since(t) >= LOG_INTERVAL);
        if !due {
            return None;
        }
        let summary = FailureSummary {
            source,
            failures: state.unlogged,
        };
        state.unlogged = 0;
        state.last_logged = Some(now);
        Some(summary)
    }
}

impl Attempt<'_> {
    /// The password was right: the token goes back.
    pub fn succeeded(mut self) {
        self.settled = true;
        self.throttle.settle(self.source, false);
    }

    /// The password was wrong: the token is spent. Returns a line to log, when one is due.
    pub fn failed(mut self) -> Option<FailureSummary> {
        self.settled = true;
        self.throttle.settle(self.source, true)
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.throttle.settle(self.source, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_prefixes() {
        assert_eq!(
            Source::of(ip("::ffff:10.0.0.1")),
            Source::of(ip("10.0.0.1"))
        );
        assert_eq!(
            Source::of(ip("2001:db8::1")),
            Source::of(ip("2001:db8::ffff:1"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:0:1::1")),
            Source::of(ip("2001:db8::1"))
        );
        assert_eq!(Source::of(ip("2001:db8::1")).to_string(), "2001:db8::/64");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_past_the_burst_come_at_the_refill_rate() {
        let throttle = LoginThrottle::new(ThrottleConfig {
            max_wait: Duration::from_secs(60),
            ..ThrottleConfig::default()
        });
        let start = Instant::now();
        for _ in 0..15 {
            let _ = throttle.admit(ip("127.0.0.1")).await.unwrap().failed();
        }
        // 5 free, then 10 at 2 a second.
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(5), "{took:?}");
        assert!(took < Duration::from_secs(6), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn successes_cost_nothing_and_other_sources_are_not_slowed() {
        let throttle = LoginThrottle::new(ThrottleConfig::default());
        for _ in 0..5 {
            let _ = throttle.admit(ip("127.0.0.1")).await.unwrap().failed();
        }
        let start = Instant::now();
        for _ in 0..100 {
            throttle.admit(ip("127.0.0.2")).await.unwrap().succeeded();
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn parallel_attempts_cannot_share_a_token() {
        let throttle = Arc::new(LoginThrottle::new(ThrottleConfig {
            burst: 2,
            per_second: 1.0,
            max_wait: Duration::from_secs(100),
            capacity: 16,
        }));
        let a = throttle.admit(ip("10.0.0.1")).await.unwrap();
        let b = throttle.admit(ip("10.0.0.1")).await.unwrap();
        // Both tokens are promised: a third waits even though none is spent yet.
        let third = {
            let throttle = Arc::clone(&throttle);
            tokio::spawn(async move {
                let start = Instant::now();
                throttle.admit(ip("10.0.0.1")).await.unwrap().succeeded();
                start.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = a.failed();
        b.succeeded();
        // b's token came back: the third goes in as soon as b ended.
        assert_eq!(third.await.unwrap(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_longer_than_the_limit_is_refused_at_once() {
        let throttle = LoginThrottle::new(ThrottleConfig {
            burst: 1,
            per_second: 0.01,
            max_wait: Duration::from_secs(1),
            capacity: 16,
        });
        let _ = throttle.admit(ip("10.0.0.1")).await.unwrap().failed();
        let start = Instant::now();
        assert!(throttle.admit(ip("10.0.0.1")).await.is_err());
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_summarised_once_per_interval() {
        let throttle = LoginThrottle::new(ThrottleConfig {
            burst: 100,
            ..ThrottleConfig::default()
        });
        let lines: Vec<FailureSummary> = {
            let mut lines = Vec::new();
            for _ in 0..50 {
                if let Some(line) = throttle.admit(ip("10.0.0.9")).await.unwrap().failed() {
                    lines.push(line);
                }
            }
            lines
        };
        assert_eq!(lines.len(), 1);
        tokio::time::sleep(LOG_INTERVAL).await;
        let line = throttle
            .admit(ip("10.0.0.9"))
            .await
            .unwrap()
            .failed()
            .unwrap();
        assert_eq!(line.failures, 50);
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_is_bounded() {
        let throttle = LoginThrottle::new(ThrottleConfig {
            capacity: 8,
            ..ThrottleConfig::default()
        });
        for i in 0..100u32 {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = throttle.admit(addr).await.unwrap().failed();
        }
        assert!(throttle.len() <= 8);
    }
}
