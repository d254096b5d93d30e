//! Publishes numbered messages to a queue through a confirm window and reports the rate.
//!
//! ```text
//! cargo run --release -p sluice-client --example producer -- QUEUE [COUNT] [URL]
//! ```
//!
//! The URL comes from the third argument, else `SLUICE_URL`, else `sluice://` (the local
//! broker as guest). The queue is declared durable; messages are persistent.

use std::time::Instant;

use sluice_client::{Client, PublishOptions, QueueOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(queue) = args.next() else {
        eprintln!("usage: producer QUEUE [COUNT] [URL]   (URL defaults to $SLUICE_URL)");
        std::process::exit(2);
    };
    let count: u64 = match args.next() {
        Some(n) => n.parse()?,
        None => 100_000,
    };
    let url = args
        .next()
        .or_else(|| std::env::var("SLUICE_URL").ok())
        .unwrap_or_else(|| "sluice://".to_owned());

    let client = Client::builder()
        .name("example-producer")
        .connect(&url)
        .await?;
    client.declare_queue(&queue, QueueOptions::new()).await?;

    let publisher = client.publisher_with_window(4096);
    let options = PublishOptions::new().content_type("text/plain");
    let started = Instant::now();
    // Confirms are checked by a second task so the window keeps moving.
    let (confirms, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    let checker = tokio::spawn(async move {
        let mut refused = 0u64;
        while let Some(confirm) = outcomes.recv().await {
            if let Err(e) = confirm.await {
                if refused == 0 {
                    eprintln!("first refusal: {e}");
                }
                refused += 1;
            }
        }
        refused
    });
    for i in 0..count {
        let confirm = publisher
            .publish("", &queue, format!("message {i}"), &options)
            .await?;
        confirms.send(confirm)?;
    }
    drop(confirms);
    let refused = checker.await?;
    let elapsed = started.elapsed();
    println!(
        "published {count} messages to {queue:?} in {elapsed:.2?} ({:.0} msg/s), {refused} refused",
        count as f64 / elapsed.as_secs_f64()
    );
    client.close().await?;
    Ok(())
}
