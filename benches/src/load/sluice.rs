//! The Sluice back end, through `sluice-client`: durable queues, persistent messages,
//! confirms through a `Publisher` window, consumers with a prefetch that ack every message.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use sluice_client::{
    Client, ConsumeOptions, DeleteExchangeOptions, DeleteQueueOptions, ExchangeKind,
    ExchangeOptions, Headers, PublishOptions, QueueOptions,
};
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

use super::{body, latency_histogram, ConsumerCtx, ConsumerStats, ProducerCtx, Routing, Workload};

async fn connect(url: &str, name: &str, window: u32, prefetch: u32) -> Result<Client> {
    Client::builder()
        .name(name)
        .confirm_window(window)
        .prefetch(prefetch)
        .request_timeout(Duration::from_secs(120))
        .connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))
}

pub async fn setup(url: &str, w: &Workload) -> Result<()> {
    let client = connect(url, "bench-setup", 1, 1).await?;
    teardown_with(&client, w).await?;
    let exchange = w.exchange_name();
    let kind = match w.routing {
        Routing::Default => None,
        Routing::Direct => Some(ExchangeKind::Direct),
        Routing::Topic => Some(ExchangeKind::Topic),
        Routing::Fanout => Some(ExchangeKind::Fanout),
    };
    if let Some(kind) = kind {
        client
            .declare_exchange(&exchange, kind, ExchangeOptions::new())
            .await?;
    }
    for q in 0..w.queues {
        let name = w.queue_name(q);
        client.declare_queue(&name, QueueOptions::new()).await?;
        if kind.is_some() {
            client
                .bind(&name, &exchange, &w.binding_key(q), Headers::default())
                .await?;
        }
    }
    client.close().await?;
    Ok(())
}

async fn teardown_with(client: &Client, w: &Workload) -> Result<()> {
    for q in 0..w.queues {
        client
            .delete_queue(&w.queue_name(q), DeleteQueueOptions::default())
            .await?;
    }
    if w.routing != Routing::Default {
        client
            .delete_exchange(&w.exchange_name(), DeleteExchangeOptions::default())
            .await?;
    }
    Ok(())
}

pub async fn teardown(url: &str, w: &Workload) -> Result<()> {
    let client = connect(url, "bench-teardown", 1, 1).await?;
    teardown_with(&client, w).await?;
    client.close().await?;
    Ok(())
}

pub async fn produce(ctx: ProducerCtx) -> Result<()> {
    let w = &ctx.workload;
    let client = connect(
        &ctx.url,
        &format!("bench-producer-{}", ctx.id),
        w.confirm_window,
        1,
    )
    .await?;
    let publisher = client.publisher_with_window(w.confirm_window);
    let options = PublishOptions::new();
    let exchange = w.exchange_name();
    let template = body::template(w.size);
    // Confirms are awaited in order by a second task; the window bounds how many wait.
    let (tx, mut rx) = mpsc::unbounded_channel::<(sluice_client::PublishConfirm, u64)>();
    let shared = ctx.shared.clone();
    let confirms = tokio::spawn(async move {
        let mut latency = latency_histogram();
        while let Some((confirm, sent_ns)) = rx.recv().await {
            let ok = confirm.await.is_ok();
            shared.confirmed(ok, sent_ns, &mut latency);
        }
        shared.merge_confirm_latency(&latency);
    });
    // Routing keys cycle over the queues; build them once.
    let keys: Vec<String> = (0..w.queues as u64)
        .map(|seq| w.routing_key(ctx.id, seq))
        .collect();
    let start = Instant::now();
    let mut seq = 0u64;
    while ctx.next_slot(seq, start).await {
        let key = &keys[(seq % keys.len() as u64) as usize];
        let (body, sent_ns) = ctx.body(&template, seq);
        let confirm = publisher.publish(&exchange, key, body, &options).await?;
        ctx.shared.sent.fetch_add(1, Ordering::Relaxed);
        let _ = tx.send((confirm, sent_ns));
        seq += 1;
    }
    drop(tx);
    confirms.await?;
    client.close().await?;
    Ok(())
}

pub async fn consume(mut ctx: ConsumerCtx) -> Result<ConsumerStats> {
    let w = &ctx.workload;
    let client = connect(
        &ctx.url,
        &format!("bench-consumer-{}-{}", ctx.queue, ctx.index),
        1,
        w.prefetch,
    )
    .await?;
    let mut consumer = client
        .consume(
            &w.queue_name(ctx.queue),
            ConsumeOptions::new().prefetch(w.prefetch),
        )
        .await?;
    let mut stats = ConsumerStats::new();
    loop {
        tokio::select! {
            biased;
            _ = ctx.stop.changed() => break,
            message = consumer.next() => {
                let Some(message) = message else { break };
                let message = message?;
                stats.record(&ctx.shared, ctx.queue, &message.body);
                message.ack().await?;
            }
        }
    }
    consumer.cancel().await.ok();
    drop(consumer);
    client.close().await.ok();
    Ok(stats)
}
