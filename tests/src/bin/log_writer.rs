//! `log_writer`: appends the deterministic workload to a store and says on stdout, one line at
//! a time (see `sluice_tests::protocol`), what has become durable. The process-level tests kill
//! it or starve it of file size and then check the directory against what it said.
//!
//! ```text
//! log_writer DIR run  [--acks] [--group-max N] [--max-groups N] [--segment-bytes B] [--seed S]
//! log_writer DIR fill [--group-max N] [--segment-bytes B] [--seed S]
//! ```
//! - `run` opens (or creates) the directory's one queue and appends groups of messages, each
//!   made durable before the next starts (flush, then wait for the epoch). With `--acks` it
//!   also acknowledges the messages the ack policy picks once they are durable, so segments
//!   are compacted and deleted while it runs. It stops after `--max-groups` groups.
//! - `fill` appends until an append fails, prints the error's kind, rereads every message it
//!   confirmed, checks that a second append fails the same way without using up a seq, and
//!   exits 0.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use sluice_broker::storage::{Epoch, QueueLog, StorageError, Store};
use sluice_tests::protocol::Event;
use sluice_tests::workload::{self, acked_by_policy, check_message, error_kind};

#[derive(Debug, Parser)]
#[command(about = "Append a deterministic workload to a Sluice store and report durability")]
struct Args {
    /// Data directory.
    dir: PathBuf,
    #[command(subcommand)]
    mode: Mode,
    /// Largest number of messages in one group commit (group sizes are random from 1).
    #[arg(long, global = true, default_value_t = 32)]
    group_max: usize,
    /// Segment size of the store.
    #[arg(long, global = true, default_value_t = 256 << 10)]
    segment_bytes: usize,
    /// Seed of the group sizes.
    #[arg(long, global = true, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Append (and optionally acknowledge) groups until killed or `--max-groups` is reached.
    Run {
        /// Acknowledge the messages the ack policy picks once they are durable.
        #[arg(long)]
        acks: bool,
        /// Stop after this many groups.
        #[arg(long, default_value_t = 1_000_000)]
        max_groups: u64,
    },
    /// Append until an error, report it, verify what was confirmed, exit 0.
    Fill,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("log_writer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints one event and flushes it, so it is out before anything else can happen.
fn say(ev: &Event) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{ev}").context("writing to stdout")?;
    out.flush().context("flushing stdout")
}

fn run(args: Args) -> Result<()> {
    fastrand::seed(args.seed);
    let config = workload::store_config(args.segment_bytes);
    let fill = matches!(args.mode, Mode::Fill);
    let opened = Store::open(&args.dir, config).and_then(|store| {
        let log = match store.queue_uids()?.first() {
            Some(&uid) => store.open_queue(uid)?,
            None => store.create_queue()?,
        };
        Ok((store, log))
    });
    let (store, mut log) = match opened {
        Ok(o) => o,
        Err(e) if fill => {
            // Even opening can run out of room (a new segment is started at every open).
            eprintln!("log_writer: opening: {e}");
            return say(&Event::Error(error_kind(&e)));
        }
        Err(e) => return Err(e).context("opening the store"),
    };
    let report = log.recovery_report();
    say(&Event::Recovered {
        torn: report.torn_tail.is_some(),
        damage: report.damage.len(),
    })?;
    say(&Event::Ready {
        uid: log.uid(),
        next_seq: log.next_seq(),
    })?;
    let result = match args.mode {
        Mode::Run { acks, max_groups } => append_groups(&mut log, args.group_max, acks, max_groups),
        Mode::Fill => fill_until_error(&mut log, args.group_max),
    };
    drop(log);
    drop(store);
    result
}

/// Appends one message, checking that it gets the seq its contents are derived from.
fn append_one(log: &mut QueueLog) -> Result<Epoch, StorageError> {
    let seq = log.next_seq();
    let a = log.append(
        &workload::meta(seq),
        &workload::body(seq),
        workload::timestamp_ms(seq),
    )?;
    assert_eq!(
        a.seq, seq,
        "append used another seq than next_seq() announced"
    );
    Ok(a.epoch)
}

fn append_groups(log: &mut QueueLog, group_max: usize, acks: bool, max_groups: u64) -> Result<()> {
    let durability = log.durability().clone();
    if acks {
        // Acknowledge what the policy picks among messages of earlier runs (acks that were not
        // durable at a crash come back).
        let pick: Vec<u64> = log
            .live_seqs()
            .into_iter()
            .filter(|&s| acked_by_policy(s))
            .collect();
        for s in pick {
            log.ack(s)?;
        }
        durability.wait_blocking(log.flush()?);
        say(&Event::Acked(log.next_seq() - 1))?;
    }
    let mut to_ack: Vec<u64> = Vec::new();
    let mut acked_up_to = None;
    for _ in 0..max_groups {
        let n = fastrand::usize(1..=group_max.max(1));
        let mut epoch = 0;
        for _ in 0..n {
            epoch = epoch.max(append_one(log)?);
        }
        let last = log.next_seq() - 1;
        say(&Event::Appended(last))?;
        // The previous group is durable: acknowledge its picks; the ack write rides this
        // group's commit. (Without acks, `flush` only does its maintenance.)
        for s in to_ack.drain(..) {
            log.ack(s)?;
        }
        epoch = epoch.max(log.flush()?);
        durability.wait_blocking(epoch);
        say(&Event::Durable(last))?;
        if let Some(a) = acked_up_to {
            say(&Event::Acked(a))?;
        }
        if acks {
            to_ack.extend((last + 1 - n as u64..=last).filter(|&s| acked_by_policy(s)));
            acked_up_to = Some(last);
        }
    }
    Ok(())
}

fn fill_until_error(log: &mut QueueLog, group_max: usize) -> Result<()> {
    let durability = log.durability().clone();
    let first = log.next_seq();
    let mut durable_to = None;
    let error = loop {
        let n = fastrand::usize(1..=group_max.max(1));
        let mut epoch = 0;
        let mut failed = None;
        for _ in 0..n {
            match append_one(log) {
                Ok(e) => epoch = epoch.max(e),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if failed.is_none() {
            match log.flush() {
                Ok(e) => epoch = epoch.max(e),
                Err(e) => failed = Some(e),
            }
        }
        // Whatever this group appended before an error is made durable and confirmed too.
        if log.next_seq() > first && durable_to != Some(log.next_seq() - 1) {
            durability.wait_blocking(epoch);
            durable_to = Some(log.next_seq() - 1);
            say(&Event::Durable(log.next_seq() - 1))?;
        }
        if let Some(e) = failed {
            break e;
        }
    };
    eprintln!("log_writer: append failed: {error}");
    say(&Event::Error(error_kind(&error)))?;
    // Nothing confirmed was harmed.
    let mut checked = 0;
    if let Some(last) = durable_to {
        for s in first..=last {
            check_message(log, s)?;
            checked += 1;
        }
    }
    // A second attempt fails the same way and consumes no seq.
    let next = log.next_seq();
    match append_one(log) {
        Ok(_) => bail!("an append after {error} succeeded"),
        Err(e) => {
            ensure!(log.next_seq() == next, "a refused append consumed a seq");
            say(&Event::Retry(error_kind(&e)))?;
        }
    }
    say(&Event::Verified(checked))
}
