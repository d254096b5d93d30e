//! The NATS JetStream back end, through `async-nats`: file storage, explicit acks, pull
//! consumers.
//!
//! How the workload maps onto JetStream:
//! - default or direct routing, N queues: N streams with work-queue retention, each bound to
//!   one subject (the queue's name) with one durable pull consumer that the queue's
//!   consumers share (competing consumers);
//! - topic or fanout routing: one stream on `PREFIX.>` with interest retention and N durable
//!   pull consumers, one per "queue" (a work-queue stream cannot have overlapping
//!   consumers); a message is removed once every consumer acked it.
//!
//! Publishes are JetStream publishes whose `PubAck`s are the confirms, bounded by the window.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use async_nats::jetstream::{self, consumer, stream, Context};
use futures_util::StreamExt;
use tokio::sync::{mpsc, Semaphore};

use super::{body, latency_histogram, ConsumerCtx, ConsumerStats, ProducerCtx, Workload};

async fn connect(url: &str, window: u32) -> Result<Context> {
    let client = async_nats::ConnectOptions::new()
        .connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(120))
        .max_ack_inflight(window.max(1) as usize + 16)
        .build(client))
}

/// Stream holding queue `q`'s messages.
fn stream_name(w: &Workload, q: usize) -> String {
    if w.routing.fans_out() {
        format!("{}-fan", w.prefix)
    } else {
        w.queue_name(q)
    }
}

/// Streams of the workload.
fn stream_names(w: &Workload) -> Vec<String> {
    if w.routing.fans_out() {
        vec![stream_name(w, 0)]
    } else {
        (0..w.queues).map(|q| stream_name(w, q)).collect()
    }
}

/// Subject of message `seq` of producer `producer`.
fn subject(w: &Workload, producer: usize, seq: u64) -> String {
    if w.routing.fans_out() {
        format!("{}.msg.p{producer}", w.prefix)
    } else {
        w.routing_key(producer, seq)
    }
}

pub async fn setup(url: &str, w: &Workload) -> Result<()> {
    let js = connect(url, 1).await?;
    teardown_with(&js, w).await;
    let consumer_config = |q: usize| consumer::pull::Config {
        durable_name: Some(w.queue_name(q)),
        ack_policy: consumer::AckPolicy::Explicit,
        max_ack_pending: i64::from(w.prefetch.max(1)) * w.consumers as i64,
        ..Default::default()
    };
    if w.routing.fans_out() {
        let stream = js
            .create_stream(stream::Config {
                name: stream_name(w, 0),
                subjects: vec![format!("{}.>", w.prefix)],
                retention: stream::RetentionPolicy::Interest,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("creating stream: {e}"))?;
        for q in 0..w.queues {
            stream
                .create_consumer(consumer_config(q))
                .await
                .map_err(|e| anyhow!("creating consumer: {e}"))?;
        }
    } else {
        for q in 0..w.queues {
            let stream = js
                .create_stream(stream::Config {
                    name: stream_name(w, q),
                    subjects: vec![w.queue_name(q)],
                    retention: stream::RetentionPolicy::WorkQueue,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow!("creating stream: {e}"))?;
            stream
                .create_consumer(consumer_config(q))
                .await
                .map_err(|e| anyhow!("creating consumer: {e}"))?;
        }
    }
    Ok(())
}

async fn teardown_with(js: &Context, w: &Workload) {
    for name in stream_names(w) {
        // Absent streams are fine.
        let _ = js.delete_stream(&name).await;
    }
}

pub async fn teardown(url: &str, w: &Workload) -> Result<()> {
    let js = connect(url, 1).await?;
    teardown_with(&js, w).await;
    Ok(())
}

pub async fn produce(ctx: ProducerCtx) -> Result<()> {
    let w = &ctx.workload;
    let js = connect(&ctx.url, w.confirm_window).await?;
    let template = body::template(w.size);
    let window = Arc::new(Semaphore::new(w.confirm_window.max(1) as usize));
    let (tx, mut rx) = mpsc::unbounded_channel::<(jetstream::context::PublishAckFuture, u64, _)>();
    let shared = ctx.shared.clone();
    let confirms = tokio::spawn(async move {
        let mut latency = latency_histogram();
        while let Some((ack, sent_ns, permit)) = rx.recv().await {
            let ok = ack.await.is_ok();
            shared.confirmed(ok, sent_ns, &mut latency);
            drop(permit);
        }
        shared.merge_confirm_latency(&latency);
    });
    let subjects: Vec<String> = (0..w.queues as u64)
        .map(|seq| subject(w, ctx.id, seq))
        .collect();
    let start = Instant::now();
    let mut seq = 0u64;
    while ctx.next_slot(seq, start).await {
        let subject = subjects[(seq % subjects.len() as u64) as usize].clone();
        let (body, sent_ns) = ctx.body(&template, seq);
        let permit = window.clone().acquire_owned().await?;
        let ack = js
            .publish(subject, body)
            .await
            .map_err(|e| anyhow!("publishing: {e}"))?;
        ctx.shared.sent.fetch_add(1, Ordering::Relaxed);
        let _ = tx.send((ack, sent_ns, permit));
        seq += 1;
    }
    drop(tx);
    confirms.await?;
    Ok(())
}

pub async fn consume(mut ctx: ConsumerCtx) -> Result<ConsumerStats> {
    let w = &ctx.workload;
    let js = connect(&ctx.url, 1).await?;
    let consumer: consumer::PullConsumer = js
        .get_consumer_from_stream(w.queue_name(ctx.queue), stream_name(w, ctx.queue))
        .await
        .map_err(|e| anyhow!("looking up consumer: {e}"))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(w.prefetch.max(1) as usize)
        .messages()
        .await
        .map_err(|e| anyhow!("pulling: {e}"))?;
    let mut stats = ConsumerStats::new();
    loop {
        tokio::select! {
            biased;
            _ = ctx.stop.changed() => break,
            message = messages.next() => {
                let Some(message) = message else { break };
                let message = message.map_err(|e| anyhow!("pulling: {e}"))?;
                stats.record(&ctx.shared, ctx.queue, &message.payload);
                message.ack().await.map_err(|e| anyhow!("acking: {e}"))?;
            }
        }
    }
    Ok(stats)
}
