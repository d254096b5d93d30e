//! `sluice chaos set|clear|list`: chaos injection per queue (docs/chaos.md, protocol.md §22),
//! and the JSON shape of a queue's chaos state shared with the HTTP API (docs/http-api.md).

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use sluice_client::wire::{
    ChaosEntry, ChaosPlan, DelayChaos, DropChaos, FailPublishChaos, ShortLeaseChaos,
};
use sluice_client::{ChaosDelay, ChaosRate, Client, ErrorCode, QueueSummary};

use super::commands::{print, print_json};
use super::format::{human_ms, utc_time, Align, QueueJson, Table};
use super::{parse_duration, CliError};

/// `sluice chaos ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum ChaosCommand {
    /// Start (or replace) a queue's chaos injection for --duration (administrators only).
    ///
    /// Give at least one mode. Percentages are of deliveries to consumers (of publishes for
    /// --fail-publish), 0 to 100, to a hundredth. No message is ever lost: held-back and
    /// dropped deliveries come back, refused publishes are reported to their publisher.
    Set(ChaosSetArgs),
    /// End a queue's chaos injection now (administrators only); held messages are ready again.
    Clear(ChaosClearArgs),
    /// Show the queues with an injection running or with chaos counters since the start.
    List,
}

/// Arguments of `sluice chaos set`.
#[derive(Debug, Clone, Args)]
pub struct ChaosSetArgs {
    /// The queue.
    pub queue: String,
    /// How long the injection runs (e.g. 10m; at most 24h); it then ends by itself.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Duration,
    /// Hold deliveries back: fixed:MS, uniform:MIN-MAX or exponential:MEAN (milliseconds).
    #[arg(long, value_name = "DISTRIBUTION", value_parser = ChaosDelay::parse)]
    pub delay: Option<ChaosDelay>,
    /// Share of deliveries held back by --delay.
    #[arg(long, value_name = "PERCENT", default_value_t = 100.0, value_parser = parse_percent)]
    pub delay_percent: f64,
    /// Drop this share of deliveries on the way; the message comes back later, counted as
    /// delivered (delivery count + 1).
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    pub drop: Option<f64>,
    /// When a dropped delivery comes back.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub drop_redeliver_after: Duration,
    /// Deliver this share of messages twice (the second copy flagged redelivered).
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    pub duplicate: Option<f64>,
    /// Refuse this share of publishes to the queue with --fail-code (nothing is stored).
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    pub fail_publish: Option<f64>,
    /// The code of refused publishes: QUEUE_FULL, STORAGE_FULL, MEMORY_LIMIT,
    /// MESSAGE_TOO_LARGE, INTERNAL_ERROR or RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "CODE", default_value = "INTERNAL_ERROR", value_parser = parse_code)]
    pub fail_code: ErrorCode,
    /// Give this share of deliveries the short lease --lease instead of the queue's.
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    pub short_lease: Option<f64>,
    /// The short lease.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub lease: Duration,
}

/// Arguments of `sluice chaos clear`.
#[derive(Debug, Clone, Args)]
pub struct ChaosClearArgs {
    /// The queue.
    pub queue: String,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("'{s}' is not a percentage"))?;
    if ChaosRate::from_percent(p).is_none() {
        return Err(format!("{s} is not between 0 and 100"));
    }
    Ok(p)
}

/// An error code by its protocol.md name (`QUEUE_FULL`).
pub fn parse_code(s: &str) -> Result<ErrorCode, String> {
    ErrorCode::ALL
        .iter()
        .copied()
        .find(|c| c.name().eq_ignore_ascii_case(s.trim()))
        .ok_or_else(|| format!("unknown error code '{s}'"))
}

fn rate(percent: f64) -> ChaosRate {
    ChaosRate::from_percent(percent).unwrap_or(ChaosRate::ALL)
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl ChaosSetArgs {
    /// The plan the flags describe.
    fn plan(&self) -> ChaosPlan {
        ChaosPlan {
            delay: self.delay.map(|delay| DelayChaos {
                rate: rate(self.delay_percent),
                delay,
            }),
            drop: self.drop.map(|p| DropChaos {
                rate: rate(p),
                redeliver_after_ms: millis(self.drop_redeliver_after),
            }),
            duplicate: self.duplicate.map(rate),
            fail_publish: self.fail_publish.map(|p| FailPublishChaos {
                rate: rate(p),
                code: self.fail_code,
            }),
            short_lease: self.short_lease.map(|p| ShortLeaseChaos {
                rate: rate(p),
                lease_ms: millis(self.lease),
            }),
        }
    }
}

/// Runs `sluice chaos ...`.
pub(super) async fn run(client: &Client, c: &ChaosCommand, json: bool) -> Result<(), CliError> {
    match c {
        ChaosCommand::Set(a) => {
            let plan = a.plan();
            if plan.is_empty() {
                return Err(CliError::new(
                    "give at least one mode: --delay, --drop, --duplicate, --fail-publish or --short-lease",
                ));
            }
            let until_ms = client.set_chaos(&a.queue, plan, a.duration).await?;
            if json {
                print_json(&json!({ "queue": a.queue, "until_ms": until_ms }))
            } else {
                print(&format!(
                    "chaos on queue '{}' until {} UTC: {}\n",
                    a.queue,
                    utc_time(until_ms),
                    plan_text(&plan)
                ))
            }
        }
        ChaosCommand::Clear(a) => {
            let was_active = client.clear_chaos(&a.queue).await?;
            if json {
                print_json(&json!({ "queue": a.queue, "was_active": was_active }))
            } else if was_active {
                print(&format!("chaos on queue '{}' cleared\n", a.queue))
            } else {
                print(&format!(
                    "queue '{}' had no chaos injection (cleared already)\n",
                    a.queue
                ))
            }
        }
        ChaosCommand::List => {
            let list = client.list_chaos().await?;
            let now = crate::queue::unix_now_ms();
            if json {
                let shown: Vec<Value> = list.entries.iter().map(|e| chaos_json(e, now)).collect();
                print_json(&shown)
            } else if list.entries.is_empty() {
                print("no queue has had a chaos injection since the broker started\n")
            } else {
                print(&chaos_table(&list.entries, now).to_string())
            }
        }
    }
}

/// Appends `[CHAOS until HH:MM:SS]` to the names of the queues with an injection running.
pub(super) fn mark_queue_names(queues: &mut [QueueSummary], chaos: &[ChaosEntry]) {
    for q in queues {
        if let Some(e) = chaos.iter().find(|e| e.queue == q.name && e.is_active()) {
            let until = utc_time(e.until_ms);
            let time = until.split(' ').nth(1).unwrap_or(&until);
            q.name = format!("{} [CHAOS until {time} UTC]", q.name);
        }
    }
}

/// The queues as `--json` shows them, with a `chaos` object on those with an injection running.
pub(super) fn mark_queues_json(queues: &[QueueSummary], chaos: &[ChaosEntry]) -> Vec<Value> {
    let now = crate::queue::unix_now_ms();
    queues
        .iter()
        .map(|q| {
            let mut v = serde_json::to_value(QueueJson::from(q)).unwrap_or(Value::Null);
            let running = chaos.iter().find(|e| e.queue == q.name && e.is_active());
            if let (Some(obj), Some(e)) = (v.as_object_mut(), running) {
                obj.insert("chaos".into(), chaos_json(e, now));
            }
            v
        })
        .collect()
}

/// The modes of a plan in words, e.g. `delay uniform:100-500 (100%), duplicate 5%`.
pub fn plan_text(plan: &ChaosPlan) -> String {
    let mut parts = Vec::new();
    if let Some(d) = &plan.delay {
        parts.push(format!("delay {} ({}%)", d.delay.spec(), d.rate.percent()));
    }
    if let Some(d) = &plan.drop {
        parts.push(format!(
            "drop {}% (back after {})",
            d.rate.percent(),
            human_ms(u64::from(d.redeliver_after_ms))
        ));
    }
    if let Some(r) = plan.duplicate {
        parts.push(format!("duplicate {}%", r.percent()));
    }
    if let Some(f) = &plan.fail_publish {
        parts.push(format!(
            "fail publish {}% ({})",
            f.rate.percent(),
            f.code.name()
        ));
    }
    if let Some(l) = &plan.short_lease {
        parts.push(format!(
            "short lease {}% ({})",
            l.rate.percent(),
            human_ms(u64::from(l.lease_ms))
        ));
    }
    parts.join(", ")
}

/// The `sluice chaos list` table.
fn chaos_table(entries: &[ChaosEntry], now_ms: u64) -> Table {
    use Align::{Left, Right};
    let mut table = Table::new(&[
        ("QUEUE", Left),
        ("STATE", Left),
        ("UNTIL (UTC)", Left),
        ("MODES", Left),
        ("DELAYED", Right),
        ("DROPPED", Right),
        ("DUPLICATED", Right),
        ("PUB FAILED", Right),
        ("LEASES EXPIRED", Right),
    ]);
    for e in entries {
        let s = &e.stats;
        let (state, until) = match e.is_active() {
            true => (
                format!(
                    "CHAOS ({} left)",
                    human_ms(e.until_ms.saturating_sub(now_ms))
                ),
                utc_time(e.until_ms),
            ),
            false => ("off".to_owned(), "-".to_owned()),
        };
        table.row(vec![
            e.queue.clone(),
            state,
            until,
            plan_text(&e.plan),
            s.delayed.to_string(),
            s.dropped.to_string(),
            s.duplicated.to_string(),
            s.publishes_failed.to_string(),
            format!("{}/{}", s.leases_expired_early, s.leases_shortened),
        ]);
    }
    table
}

/// A queue's chaos state as JSON (the CLI and the HTTP API): `active`, `until_ms`, each
/// mode (`null` when not set) and the counters since the broker started.
pub fn chaos_json(e: &ChaosEntry, now_ms: u64) -> Value {
    let p = &e.plan;
    let s = &e.stats;
    json!({
        "queue": e.queue,
        "active": e.is_active(),
        "until_ms": e.is_active().then_some(e.until_ms),
        "remaining_ms": e.is_active().then(|| e.until_ms.saturating_sub(now_ms)),
        "delay": p.delay.map(|d| json!({
            "percent": d.rate.percent(),
            "distribution": d.delay.spec(),
        })),
        "drop": p.drop.map(|d| json!({
            "percent": d.rate.percent(),
            "redeliver_after_ms": d.redeliver_after_ms,
        })),
        "duplicate": p.duplicate.map(|r| json!({ "percent": r.percent() })),
        "fail_publish": p.fail_publish.map(|f| json!({
            "percent": f.rate.percent(),
            "code": f.code.name(),
        })),
        "short_lease": p.short_lease.map(|l| json!({
            "percent": l.rate.percent(),
            "lease_ms": l.lease_ms,
        })),
        "stats": {
            "delayed": s.delayed,
            "dropped": s.dropped,
            "duplicated": s.duplicated,
            "publishes_failed": s.publishes_failed,
            "leases_shortened": s.leases_shortened,
            "leases_expired_early": s.leases_expired_early,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_percentages_parse() {
        assert_eq!(parse_code("queue_full"), Ok(ErrorCode::QueueFull));
        assert!(parse_code("NOPE").is_err());
        assert_eq!(parse_percent("12.5%"), Ok(12.5));
        assert!(parse_percent("101").is_err());
        assert!(parse_percent("x").is_err());
    }

    #[test]
    fn a_plan_reads_as_its_modes() {
        let plan = ChaosPlan {
            delay: Some(DelayChaos {
                rate: ChaosRate::ALL,
                delay: ChaosDelay::Fixed { ms: 5 },
            }),
            duplicate: Some(ChaosRate(500)),
            ..ChaosPlan::default()
        };
        assert_eq!(plan_text(&plan), "delay fixed:5 (100%), duplicate 5%");
    }
}
