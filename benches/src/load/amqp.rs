//! The AMQP 0-9-1 back end (RabbitMQ), through `lapin` on tokio: durable classic queues,
//! persistent messages (delivery mode 2), publisher confirms bounded by the window, manual
//! acks of every delivery with `basic.qos` as the prefetch.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{mpsc, Semaphore};

use super::{body, latency_histogram, ConsumerCtx, ConsumerStats, ProducerCtx, Routing, Workload};

async fn connect(url: &str) -> Result<Connection> {
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    Connection::connect(url, properties)
        .await
        .with_context(|| format!("connecting to {url}"))
}

pub async fn setup(url: &str, w: &Workload) -> Result<()> {
    let connection = connect(url).await?;
    let channel = connection.create_channel().await?;
    teardown_with(&channel, w).await?;
    let exchange = w.exchange_name();
    let kind = match w.routing {
        Routing::Default => None,
        Routing::Direct => Some(ExchangeKind::Direct),
        Routing::Topic => Some(ExchangeKind::Topic),
        Routing::Fanout => Some(ExchangeKind::Fanout),
    };
    if let Some(kind) = kind.clone() {
        channel
            .exchange_declare(
                &exchange,
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    for q in 0..w.queues {
        let name = w.queue_name(q);
        channel
            .queue_declare(
                &name,
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        if kind.is_some() {
            channel
                .queue_bind(
                    &name,
                    &exchange,
                    &w.binding_key(q),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    connection.close(200, "setup done").await?;
    Ok(())
}

async fn teardown_with(channel: &lapin::Channel, w: &Workload) -> Result<()> {
    for q in 0..w.queues {
        channel
            .queue_delete(&w.queue_name(q), QueueDeleteOptions::default())
            .await?;
    }
    if w.routing != Routing::Default {
        channel
            .exchange_delete(&w.exchange_name(), ExchangeDeleteOptions::default())
            .await?;
    }
    Ok(())
}

pub async fn teardown(url: &str, w: &Workload) -> Result<()> {
    let connection = connect(url).await?;
    let channel = connection.create_channel().await?;
    teardown_with(&channel, w).await?;
    connection.close(200, "teardown done").await?;
    Ok(())
}

pub async fn produce(ctx: ProducerCtx) -> Result<()> {
    let w = &ctx.workload;
    let connection = connect(&ctx.url).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let exchange = w.exchange_name();
    let template = body::template(w.size);
    let window = Arc::new(Semaphore::new(w.confirm_window.max(1) as usize));
    let (tx, mut rx) =
        mpsc::unbounded_channel::<(lapin::publisher_confirm::PublisherConfirm, u64, _)>();
    let shared = ctx.shared.clone();
    let confirms = tokio::spawn(async move {
        let mut latency = latency_histogram();
        while let Some((confirm, sent_ns, permit)) = rx.recv().await {
            let ok = matches!(confirm.await, Ok(Confirmation::Ack(_)));
            shared.confirmed(ok, sent_ns, &mut latency);
            drop(permit);
        }
        shared.merge_confirm_latency(&latency);
    });
    let keys: Vec<String> = (0..w.queues as u64)
        .map(|seq| w.routing_key(ctx.id, seq))
        .collect();
    let properties = BasicProperties::default().with_delivery_mode(2);
    let start = Instant::now();
    let mut seq = 0u64;
    while ctx.next_slot(seq, start).await {
        let key = &keys[(seq % keys.len() as u64) as usize];
        let (body, sent_ns) = ctx.body(&template, seq);
        let permit = window.clone().acquire_owned().await?;
        let confirm = channel
            .basic_publish(
                &exchange,
                key,
                BasicPublishOptions::default(),
                &body,
                properties.clone(),
            )
            .await?;
        ctx.shared.sent.fetch_add(1, Ordering::Relaxed);
        let _ = tx.send((confirm, sent_ns, permit));
        seq += 1;
    }
    drop(tx);
    confirms.await?;
    connection.close(200, "producer done").await?;
    Ok(())
}

pub async fn consume(mut ctx: ConsumerCtx) -> Result<ConsumerStats> {
    let w = &ctx.workload;
    let connection = connect(&ctx.url).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(
            u16::try_from(w.prefetch).unwrap_or(u16::MAX),
            BasicQosOptions::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            &w.queue_name(ctx.queue),
            &format!("bench-consumer-{}-{}", ctx.queue, ctx.index),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut stats = ConsumerStats::new();
    loop {
        tokio::select! {
            biased;
            _ = ctx.stop.changed() => break,
            delivery = consumer.next() => {
                let Some(delivery) = delivery else { break };
                let delivery = delivery?;
                stats.record(&ctx.shared, ctx.queue, &delivery.data);
                delivery.ack(BasicAckOptions::default()).await?;
            }
        }
    }
    connection.close(200, "consumer done").await.ok();
    Ok(stats)
}
