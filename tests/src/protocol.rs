//! The line protocol of the `log_writer` binary: one event per stdout line, flushed as soon as
//! it is true, so a parent that kills the writer knows exactly what had been confirmed.

use std::fmt;
use std::str::FromStr;

use anyhow::{anyhow, bail, Result};

/// One line of the writer's stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The queue is open: its identity and the seq the next append gets.
    Ready {
        /// The queue's storage identity.
        uid: u64,
        /// `QueueLog::next_seq` right after opening.
        next_seq: u64,
    },
    /// What opening found: whether a torn tail was cut, and how many damage reports.
    Recovered {
        /// A torn tail was cut.
        torn: bool,
        /// Number of `Damage` entries in the recovery report.
        damage: usize,
    },
    /// Every message of this run up to this seq has been appended (not yet durable).
    Appended(u64),
    /// Every message of this run up to this seq is durable.
    Durable(u64),
    /// Every message up to this seq that the ack policy acknowledges is durably acknowledged
    /// (or was never written).
    Acked(u64),
    /// An operation failed with this `StorageError` variant.
    Error(String),
    /// A second append after the error failed with this variant and consumed no seq.
    Retry(String),
    /// The writer reread this many durable messages after the error; all were intact.
    Verified(u64),
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready { uid, next_seq } => write!(f, "ready {uid} {next_seq}"),
            Self::Recovered { torn, damage } => write!(f, "recovered {torn} {damage}"),
            Self::Appended(s) => write!(f, "appended {s}"),
            Self::Durable(s) => write!(f, "durable {s}"),
            Self::Acked(s) => write!(f, "acked {s}"),
            Self::Error(kind) => write!(f, "error {kind}"),
            Self::Retry(kind) => write!(f, "retry {kind}"),
            Self::Verified(n) => write!(f, "verified {n}"),
        }
    }
}

impl FromStr for Event {
    type Err = anyhow::Error;

    fn from_str(line: &str) -> Result<Self> {
        let mut words = line.split_whitespace();
        let tag = words.next().ok_or_else(|| anyhow!("empty line"))?;
        let mut word = || {
            words
                .next()
                .ok_or_else(|| anyhow!("line {line:?} is too short"))
        };
        let ev = match tag {
            "ready" => Self::Ready {
                uid: word()?.parse()?,
                next_seq: word()?.parse()?,
            },
            "recovered" => Self::Recovered {
                torn: word()?.parse()?,
                damage: word()?.parse()?,
            },
            "appended" => Self::Appended(word()?.parse()?),
            "durable" => Self::Durable(word()?.parse()?),
            "acked" => Self::Acked(word()?.parse()?),
            "error" => Self::Error(word()?.to_string()),
            "retry" => Self::Retry(word()?.to_string()),
            "verified" => Self::Verified(word()?.parse()?),
            _ => bail!("unknown line {line:?}"),
        };
        Ok(ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_round_trips() {
        for ev in [
            Event::Ready {
                uid: 9,
                next_seq: 1,
            },
            Event::Recovered {
                torn: true,
                damage: 0,
            },
            Event::Appended(5),
            Event::Durable(5),
            Event::Acked(4),
            Event::Error("StorageFull".into()),
            Event::Retry("StorageFull".into()),
            Event::Verified(12),
        ] {
            assert_eq!(ev.to_string().parse::<Event>().unwrap(), ev);
        }
        assert!("durable".parse::<Event>().is_err());
        assert!("bogus 1".parse::<Event>().is_err());
    }
}
