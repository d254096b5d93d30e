//! A canary rollout: worker v2 gets 5 % of the work, then 50 %, then all of it.
//!
//! ```text
//! cargo run -p sluice-client --example canary -- [PER_STAGE] [URL]
//! ```
//!
//! Producers publish to one exchange of kind `weighted`; v1 workers consume `work-v1` and v2
//! workers `work-v2`, each queue bound with a weight (`sluice_client::weight`). Each stage binds
//! the queues again with new weights: the broker changes a bound queue's weight in place, from
//! the next message on, without losing or duplicating any. Watch the split on the dashboard's
//! Exchanges page while it runs; roll back by giving v2 weight 0. One v1 and one v2 worker run
//! as tasks here and count what they take, so the example prints each stage's split.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use sluice_client::{
    weight, Client, ConsumeOptions, ExchangeKind, ExchangeOptions, OutgoingMessage, QueueOptions,
};

const EXCHANGE: &str = "work";
/// Each stage's name and the weights of v1 and v2.
const STAGES: [(&str, u32, u32); 3] = [("5%", 95, 5), ("50%", 50, 50), ("100%", 0, 100)];

/// Tasks taken, by stage and version.
type Taken = Arc<Mutex<HashMap<(String, &'static str), u64>>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let per_stage: u64 = match args.next() {
        Some(n) => n.parse()?,
        None => 1000,
    };
    let url = args
        .next()
        .or_else(|| std::env::var("SLUICE_URL").ok())
        .unwrap_or_else(|| "sluice://".to_owned());

    let client = Client::builder().name("rollout").connect(&url).await?;
    client
        .declare_exchange(EXCHANGE, ExchangeKind::Weighted, ExchangeOptions::new())
        .await?;
    let taken = Taken::default();
    for version in ["v1", "v2"] {
        let queue = format!("work-{version}");
        client.declare_queue(&queue, QueueOptions::new()).await?;
        let mut consumer = client
            .consume(&queue, ConsumeOptions::new().prefetch(100))
            .await?;
        let taken = Arc::clone(&taken);
        tokio::spawn(async move {
            while let Some(Ok(message)) = consumer.next().await {
                let body = String::from_utf8_lossy(&message.body).into_owned();
                let stage = body.split('/').next().unwrap_or_default().to_owned();
                *taken.lock().unwrap().entry((stage, version)).or_default() += 1;
                if message.ack().await.is_err() {
                    break;
                }
            }
        });
    }
    for (stage, v1, v2) in STAGES {
        // Binding a bound queue again changes its weight, atomically.
        client.bind("work-v1", EXCHANGE, "", weight(v1)).await?;
        client.bind("work-v2", EXCHANGE, "", weight(v2)).await?;
        let tasks =
            (0..per_stage).map(|i| OutgoingMessage::new(EXCHANGE, "", format!("{stage}/{i}")));
        for confirm in client.publish_batch(tasks).await {
            confirm?;
        }
    }
    // Every task published is taken once, by one of the two workers.
    let total = per_stage * STAGES.len() as u64;
    while taken.lock().unwrap().values().sum::<u64>() < total {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let taken = taken.lock().unwrap().clone();
    for (stage, _, _) in STAGES {
        let of = |v| taken.get(&(stage.to_owned(), v)).copied().unwrap_or(0);
        println!("stage {stage}: v1 took {}, v2 took {}", of("v1"), of("v2"));
    }
    client.close().await?;
    Ok(())
}
