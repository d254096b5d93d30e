//! The deterministic workload: every message is a pure function of its sequence number, so a
//! test can check any recovered message without knowing anything but its seq.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use sluice_broker::storage::{DurabilityConfig, LogConfig, QueueLog, StoreConfig};

/// Largest body the workload produces.
pub const MAX_BODY: usize = 4096;

/// Length of the metadata block: the seq and the body length, little-endian.
pub const META_LEN: usize = 12;

/// One round of xorshift64.
fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn seed(seq: u64) -> u64 {
    seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

/// Body length of message `seq`: half of the messages are small (under 256 bytes), the others
/// spread up to [`MAX_BODY`]; lengths are not multiples of 8, so padding is exercised.
pub fn body_len(seq: u64) -> usize {
    let h = xorshift(xorshift(seed(seq)));
    if h & 1 == 0 {
        (h >> 8) as usize % 256
    } else {
        1 + (h >> 8) as usize % MAX_BODY
    }
}

/// The body of message `seq`.
pub fn body(seq: u64) -> Vec<u8> {
    let mut x = seed(seq) ^ 0x5eed;
    (0..body_len(seq))
        .map(|_| {
            x = xorshift(x);
            x as u8
        })
        .collect()
}

/// The metadata of message `seq`.
pub fn meta(seq: u64) -> [u8; META_LEN] {
    let mut m = [0u8; META_LEN];
    m[..8].copy_from_slice(&seq.to_le_bytes());
    m[8..].copy_from_slice(&(body_len(seq) as u32).to_le_bytes());
    m
}

/// The publish timestamp of message `seq`.
pub fn timestamp_ms(seq: u64) -> u64 {
    1_700_000_000_000 + seq
}

/// True if the writer acknowledges message `seq` (when it runs with acks): four in five are
/// acknowledged once durable, so sealed segments end up sparse and get compacted and deleted.
pub fn acked_by_policy(seq: u64) -> bool {
    seq % 5 != 0
}

/// Store settings shared by the writer and the tests that reopen its directory.
///
/// Small segments rotate often; sparse sealed segments are relocated at once (live share at
/// or below 25%: the ack policy leaves 20%); watermarks are written every 20 ms, so a kill
/// lands both below and above the durable watermark.
pub fn store_config(segment_bytes: usize) -> StoreConfig {
    StoreConfig {
        log: LogConfig {
            segment_bytes,
            relocate_live_fraction: 0.25,
            relocate_after: Duration::ZERO,
            ..LogConfig::default()
        },
        durability: DurabilityConfig {
            checkpoint_interval: Duration::from_millis(20),
            ..DurabilityConfig::default()
        },
    }
}

/// Reads message `seq` from `log` (which verifies its CRC) and checks every byte of it.
pub fn check_message(log: &QueueLog, seq: u64) -> Result<()> {
    let m = log
        .read(seq)
        .with_context(|| format!("reading message {seq}"))?;
    ensure!(m.seq == seq, "read({seq}) returned seq {}", m.seq);
    ensure!(m.meta[..] == meta(seq), "message {seq}: metadata differs");
    ensure!(
        m.body[..] == body(seq)[..],
        "message {seq}: body differs ({} bytes, expected {})",
        m.body.len(),
        body_len(seq)
    );
    ensure!(
        m.timestamp_ms == timestamp_ms(seq),
        "message {seq}: timestamp differs"
    );
    Ok(())
}

/// The name of a storage error's variant (`StorageFull`, `Io`, ...), as the writer reports it.
pub fn error_kind(e: &sluice_broker::storage::StorageError) -> String {
    let debug = format!("{e:?}");
    debug
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_deterministic_and_varied() {
        assert_eq!(body(7), body(7));
        assert_ne!(body(7), body(8));
        let lens: Vec<usize> = (1..2000).map(body_len).collect();
        assert!(lens.iter().all(|&l| l <= MAX_BODY));
        assert!(lens.iter().any(|&l| l < 64));
        assert!(lens.iter().any(|&l| l > 3000));
        assert!(lens.iter().any(|&l| l % 8 != 0));
        assert_eq!(u64::from_le_bytes(meta(99)[..8].try_into().unwrap()), 99);
    }

    #[test]
    fn error_kind_is_the_variant_name() {
        let full =
            sluice_broker::storage::StorageError::io("/x", std::io::Error::from_raw_os_error(28));
        assert_eq!(error_kind(&full), "StorageFull");
        let other = sluice_broker::storage::StorageError::NotLive(3);
        assert_eq!(error_kind(&other), "NotLive");
    }
}
