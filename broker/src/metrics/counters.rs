//! Counters labelled by a wire error code, cheap enough to keep per queue.

use std::sync::atomic::{AtomicU64, Ordering};

use sluice_client::wire::ErrorCode;

const CODES: usize = ErrorCode::ALL.len();

/// Messages refused, per wire error code (`QUEUE_FULL`, `STORAGE_FULL`, ...).
#[derive(Debug)]
pub struct RefusedCounts {
    /// One counter per code of [`ErrorCode::ALL`], in that order.
    counts: [AtomicU64; CODES],
}

impl Default for RefusedCounts {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl RefusedCounts {
    /// Counts `n` messages refused with `code`. (Refusals are not the hot path: the code is
    /// looked up in the short table of codes.)
    pub fn add(&self, code: ErrorCode, n: u64) {
        match ErrorCode::ALL.iter().position(|&c| c == code) {
            Some(i) => {
                self.counts[i].fetch_add(n, Ordering::Relaxed);
            }
            // The broker refuses only with codes it knows.
            None => debug_assert!(false, "refusal with an unknown code {code:?}"),
        }
    }

    /// The codes that refused at least one message, with their counts (a scrape lists only
    /// these: a series per queue for each of two dozen codes would be mostly zeros).
    pub fn nonzero(&self) -> impl Iterator<Item = (ErrorCode, u64)> + '_ {
        ErrorCode::ALL
            .iter()
            .zip(&self.counts)
            .map(|(&code, n)| (code, n.load(Ordering::Relaxed)))
            .filter(|&(_, n)| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_codes_that_refused_are_listed() {
        let counts = RefusedCounts::default();
        assert_eq!(counts.nonzero().count(), 0);
        counts.add(ErrorCode::QueueFull, 2);
        counts.add(ErrorCode::StorageFull, 1);
        counts.add(ErrorCode::QueueFull, 1);
        let listed: Vec<_> = counts.nonzero().collect();
        assert_eq!(
            listed,
            vec![(ErrorCode::StorageFull, 1), (ErrorCode::QueueFull, 3)]
        );
    }
}
