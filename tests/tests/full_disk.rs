//! A full disk without root: the writer runs under a file-size limit (`ulimit -f`), so growing
//! a segment past it fails with `EFBIG` (the store turns the SIGXFSZ that comes with it into an
//! error). The writer must report a typed `StorageFull`, keep serving what it confirmed, exit
//! cleanly, and a reopen without the limit must find every confirmed message.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use sluice_tests::child::ChildProcess;
use sluice_tests::ledger::Ledger;
use sluice_tests::protocol::Event;
use sluice_tests::workload;
use sluice_tests::writer;

const WRITER: &str = env!("CARGO_BIN_EXE_log_writer");
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// The writer's segments are larger than any limit used here, so the limit is hit inside a
/// segment, where only `fallocate` can fail.
const SEGMENT_BYTES: usize = 8 << 20;

/// Runs `log_writer fill` under a limit of `kib` KiB per file; returns its events. `max_kib`
/// is the largest limit any run on `dir` had: no file may be larger.
fn fill_under_limit(
    dir: &Path,
    seed: u64,
    kib: u64,
    max_kib: u64,
    ledger: &mut Ledger,
) -> Result<Vec<Event>> {
    let mut cmd = writer::command_with_file_size_limit(Path::new(WRITER), dir, seed, kib);
    cmd.args(["--segment-bytes", &SEGMENT_BYTES.to_string(), "fill"]);
    let mut child = ChildProcess::spawn(cmd)?;
    let (status, lines) = child.wait_exit(RUN_TIMEOUT)?;
    ensure!(
        status.signal().is_none(),
        "the writer was killed by signal {:?} (SIGXFSZ is 25)\n{}",
        status.signal(),
        child.diagnostics()
    );
    ensure!(
        status.success(),
        "the writer failed: {status}\n{}",
        child.diagnostics()
    );
    let events = ledger
        .observe_lines(&lines)
        .with_context(|| child.diagnostics())?;
    ensure!(
        events.contains(&Event::Error("StorageFull".into())),
        "no typed StorageFull error reported\n{}",
        child.diagnostics()
    );
    // The limits really were in force: no file grew past them.
    for entry in walk(dir)? {
        let len = std::fs::metadata(&entry)?.size();
        ensure!(
            len <= max_kib << 10,
            "{} is {len} bytes, over the {max_kib} KiB limit",
            entry.display()
        );
    }
    Ok(events)
}

fn walk(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            out.extend(walk(&e.path())?);
        } else {
            out.push(e.path());
        }
    }
    Ok(out)
}

#[test]
fn a_file_size_limit_is_a_typed_storage_full_and_every_confirmed_message_survives() -> Result<()> {
    let seed = fastrand::u64(..);
    eprintln!("seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir()?;
    let mut ledger = Ledger::new(false);
    let mut max_kib = 0;
    // Two runs on the same directory, each filling a fresh segment up to its limit.
    for round in 0..2 {
        let kib = rng.u64(200..=1500);
        max_kib = max_kib.max(kib);
        let events = fill_under_limit(dir.path(), rng.u64(..), kib, max_kib, &mut ledger)
            .with_context(|| format!("round {round}, limit {kib} KiB, seed {seed}"))?;
        let durable = events
            .iter()
            .filter(|e| matches!(e, Event::Durable(_)))
            .count();
        ensure!(
            durable > 0,
            "nothing was confirmed before the limit (round {round}, {kib} KiB)"
        );
        ensure!(
            events.contains(&Event::Retry("StorageFull".into())),
            "the retry was not StorageFull: {events:?}"
        );
        ensure!(
            events
                .iter()
                .any(|e| matches!(e, Event::Verified(n) if *n > 0)),
            "the writer did not reread its messages: {events:?}"
        );
        let reopened = writer::reopen(dir.path(), SEGMENT_BYTES)?;
        let log = reopened.log.as_ref().context("no queue after the fill")?;
        let v = ledger.verify_context(log)?;
        ensure!(
            v.required_present == ledger.confirmed(),
            "{v:?} vs {} confirmed",
            ledger.confirmed()
        );
        eprintln!(
            "round {round}: limit {kib} KiB, {} confirmed in all, {v:?}",
            ledger.confirmed()
        );
    }

    // A limit below the first reservation of a segment: opening needs no new space, so the
    // queue opens; appends get just the space they need, up to the limit, then a typed error.
    let events = fill_under_limit(dir.path(), 7, 16, max_kib, &mut ledger)?;
    ensure!(
        events.iter().any(|e| matches!(e, Event::Ready { .. })),
        "the queue did not open under a 16 KiB limit: {events:?}"
    );
    ensure!(
        events.contains(&Event::Retry("StorageFull".into())),
        "the retry was not StorageFull: {events:?}"
    );

    // Without the limit, everything is there and appends resume after every seq seen.
    let mut reopened = writer::reopen(dir.path(), SEGMENT_BYTES)?;
    let log = reopened.log.as_mut().context("no queue")?;
    ledger.verify_context(log)?;
    let seq = log.next_seq();
    let a = log.append(
        &workload::meta(seq),
        &workload::body(seq),
        workload::timestamp_ms(seq),
    )?;
    ensure!(a.seq > ledger.max_seq_seen(), "seq {} reused", a.seq);
    reopened.store.durability().wait_blocking(a.epoch);
    workload::check_message(log, a.seq)
}
