//! Crash for real: a writer process appends (and acknowledges) with group commit and reports
//! what is durable; the test SIGKILLs it at a random moment, reopens the directory and checks
//! every confirmed message, byte for byte. Many rounds run on the same directory, so recovery
//! runs over the leftovers of earlier crashes (and sometimes is itself killed half-way).
//!
//! `SLUICE_KILL_ROUNDS` sets the number of rounds (default 40); `SLUICE_TEST_SEED` replays the
//! test's random choices of a failing run (printed at the start; where exactly a kill lands
//! depends on timing and is not replayed).

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use sluice_tests::child::ChildProcess;
use sluice_tests::ledger::{Ledger, Verified};
use sluice_tests::writer::{self, DEFAULT_SEGMENT_BYTES};

const WRITER: &str = env!("CARGO_BIN_EXE_log_writer");
/// Longest wait for one line of the writer's output (a debug build, one group commit).
const LINE_TIMEOUT: Duration = Duration::from_secs(20);
const SIGKILL: i32 = 9;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `rounds` of start, wait for a random amount of confirmed work, SIGKILL, verify.
fn kill_rounds(acks: bool) -> Result<()> {
    let rounds: usize = env_or("SLUICE_KILL_ROUNDS", 40);
    let seed: u64 = env_or("SLUICE_TEST_SEED", fastrand::u64(..));
    eprintln!("kill rounds: {rounds}, acks: {acks}, SLUICE_TEST_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir()?;
    let mut ledger = Ledger::new(acks);
    let started = Instant::now();
    let mut tally = Tally::default();
    for round in 0..rounds {
        // Two rounds in three reopen and verify in the test process; the others leave the
        // crashed directory to the next writer. The last round always verifies.
        let verify = round + 1 == rounds || rng.u8(..3) != 0;
        one_round(dir.path(), &mut rng, acks, verify, &mut ledger, &mut tally)
            .with_context(|| format!("round {round} (SLUICE_TEST_SEED={seed})"))?;
    }
    eprintln!(
        "{rounds} rounds in {:.1?}: {} writer runs, {} messages confirmed, {} torn tails cut \
         (writer {}, test {}), {} verified rounds, last: {:?}",
        started.elapsed(),
        ledger.runs(),
        ledger.confirmed(),
        ledger.torn_tails() + tally.torn_tails,
        ledger.torn_tails(),
        tally.torn_tails,
        tally.verified,
        tally.last
    );
    ensure!(ledger.confirmed() > 0, "no round confirmed anything");
    Ok(())
}

/// What the test saw over the rounds.
#[derive(Debug, Default)]
struct Tally {
    /// Rounds whose reopen in the test process cut a torn tail.
    torn_tails: usize,
    /// Rounds verified in the test process (the others leave the crashed directory to the
    /// next writer, whose recovery then runs on it).
    verified: usize,
    last: Verified,
}

fn one_round(
    dir: &Path,
    rng: &mut fastrand::Rng,
    acks: bool,
    verify: bool,
    ledger: &mut Ledger,
    tally: &mut Tally,
) -> Result<()> {
    let mut cmd = writer::command(Path::new(WRITER), dir, rng.u64(..));
    cmd.arg("run");
    if acks {
        cmd.arg("--acks");
    }
    let mut child = ChildProcess::spawn(cmd)?;
    // One round in eight kills the writer at once, possibly in the middle of recovery;
    // otherwise after 1 to 40 lines of output (so between any two steps of a group).
    let target = if rng.u8(..8) == 0 {
        0
    } else {
        rng.usize(1..=40)
    };
    let mut lines = Vec::new();
    while lines.len() < target {
        let line = child
            .next_line(LINE_TIMEOUT)?
            .ok_or_else(|| anyhow!("the writer exited unasked\n{}", child.diagnostics()))?;
        lines.push(line);
    }
    let (status, rest) = child.kill()?;
    ensure!(
        status.signal() == Some(SIGKILL),
        "the writer ended by itself ({status}) before the kill\n{}",
        child.diagnostics()
    );
    lines.extend(rest);
    ledger
        .observe_lines(&lines)
        .with_context(|| child.diagnostics())?;
    if !verify {
        return Ok(());
    }
    let reopened = writer::reopen(dir, DEFAULT_SEGMENT_BYTES)?;
    match &reopened.log {
        Some(log) => {
            tally.torn_tails += usize::from(log.recovery_report().torn_tail.is_some());
            tally.last = ledger.verify_context(log)?;
        }
        None => ensure!(ledger.runs() == 0, "the queue vanished"),
    }
    tally.verified += 1;
    Ok(())
}

#[test]
fn kill_9_during_appends_never_loses_a_confirmed_message_or_reuses_a_seq() -> Result<()> {
    kill_rounds(false)
}

#[test]
fn kill_9_during_appends_acks_and_compaction_keeps_confirmed_and_drops_durably_acked() -> Result<()>
{
    kill_rounds(true)
}
