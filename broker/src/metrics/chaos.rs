//! The chaos injection series of a scrape (docs/chaos.md): `sluice_queue_chaos_active`, 1
//! while an injection runs on the queue, for every queue; and what chaos did, by mode, for
//! the queues chaos touched since the broker started (six zero series for each of ten
//! thousand untouched queues would bloat every scrape).

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::collector::counter_value;
use crate::queue::QueueHandle;
use crate::routing::namespace;

pub(super) fn encode_queue_chaos(
    enc: &mut DescriptorEncoder,
    queues: &[&QueueHandle],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(
        "sluice_queue_chaos_active",
        "1 while a chaos injection runs on the queue (deliberate faults for testing), else 0.",
        None,
        MetricType::Gauge,
    )?;
    for q in queues {
        let name = namespace::split(&q.meta.name);
        let labels = [("vhost", name.vhost), ("queue", name.local)];
        let active = u64::from(q.meta.stats.chaos.running().is_some());
        m.encode_family(&labels)?.encode_gauge(&active)?;
    }
    let mut m = enc.encode_descriptor(
        "sluice_queue_chaos_events",
        "What chaos injections did to the queue, by mode (delayed, dropped, duplicated, publishes_failed, leases_shortened, leases_expired_early); only queues chaos touched.",
        None,
        MetricType::Counter,
    )?;
    for q in queues {
        let chaos = &q.meta.stats.chaos;
        if !chaos.touched() {
            continue;
        }
        let s = chaos.stats();
        let name = namespace::split(&q.meta.name);
        let modes = [
            ("delayed", s.delayed),
            ("dropped", s.dropped),
            ("duplicated", s.duplicated),
            ("publishes_failed", s.publishes_failed),
            ("leases_shortened", s.leases_shortened),
            ("leases_expired_early", s.leases_expired_early),
        ];
        for (mode, n) in modes {
            let labels = [("vhost", name.vhost), ("queue", name.local), ("mode", mode)];
            counter_value(&mut m.encode_family(&labels)?, n)?;
        }
    }
    Ok(())
}
