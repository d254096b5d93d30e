//! Consumes a queue, acking every message, and prints the rate every second until Ctrl-C.
//!
//! ```text
//! cargo run --release -p sluice-client --example worker -- QUEUE [URL]
//! ```
//!
//! The URL comes from the second argument, else `SLUICE_URL`, else `sluice://`. On Ctrl-C the
//! worker cancels its consumer, settles what it already received, and closes cleanly.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sluice_client::{Client, ConsumeOptions, QueueOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(queue) = args.next() else {
        eprintln!("usage: worker QUEUE [URL]   (URL defaults to $SLUICE_URL)");
        std::process::exit(2);
    };
    let url = args
        .next()
        .or_else(|| std::env::var("SLUICE_URL").ok())
        .unwrap_or_else(|| "sluice://".to_owned());

    let client = Client::builder()
        .name("example-worker")
        .connect(&url)
        .await?;
    client.declare_queue(&queue, QueueOptions::new()).await?;
    let mut consumer = client
        .consume(&queue, ConsumeOptions::new().prefetch(1000))
        .await?;
    println!("consuming {queue:?} as {}", consumer.tag());

    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut window_start = Instant::now();
    let (mut in_window, mut total) = (0u64, 0u64);
    let mut cancelled = false;
    loop {
        tokio::select! {
            message = consumer.next() => {
                let Some(message) = message else { break };
                let message = message?;
                // The work would go here; a failure would be `message.nack(true)`.
                message.ack().await?;
                in_window += 1;
                total += 1;
            }
            _ = ticker.tick() => {
                if in_window > 0 {
                    let rate = in_window as f64 / window_start.elapsed().as_secs_f64();
                    println!("{rate:.0} msg/s ({total} in total)");
                }
                window_start = Instant::now();
                in_window = 0;
            }
            _ = tokio::signal::ctrl_c(), if !cancelled => {
                // Stop deliveries; the loop then acks what was already received and ends.
                consumer.cancel().await?;
                cancelled = true;
            }
        }
    }
    println!("processed {total} messages");
    client.close().await?;
    Ok(())
}
