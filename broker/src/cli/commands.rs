//! What each admin command does: one connection per command, closed gracefully at the end
//! (`Close` is a barrier: every ack and publish before it is settled when it returns).

use std::io::{self, Read, Write};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;
use sluice_client::{
    Client, ConnectUrl, ConsumeOptions, DeleteExchangeOptions, DeleteQueueOptions, ErrorCode,
    ExchangeKind, ExchangeOptions, Headers, Message, PublishOptions, QueueArguments, QueueOptions,
};

use super::definitions;
use super::format::{
    bindings_table, connections_table, consumers_table, exchange_name, exchanges_table,
    headers_text, inspect_text, kind_name, queues_table, BindingJson, ConnectionJson, ConsumerJson,
    ExchangeJson, HeadersJson, InspectJson, MessageJson,
};
use super::{
    AdminCommand, BindArgs, CliError, ConsumeArgs, DeclareExchangeArgs, DeclareQueueArgs,
    DefinitionsAction, DefinitionsArgs, DeleteExchangeArgs, DeleteQueueArgs, GetArgs, HeaderArg,
    Outcome, PublishArgs, Target,
};

/// The connection name the broker shows for the CLI's connections (unless the URL names one).
const CONNECTION_NAME: &str = "sluice-cli";

/// Connects, runs `command`, and closes the connection.
pub(super) async fn execute(command: AdminCommand, target: Target) -> Result<Outcome, CliError> {
    // A body from stdin is read before connecting: no connection idles while someone types.
    let stdin_body = match &command {
        AdminCommand::Publish(a) if a.body.is_none() => Some(read_stdin()?),
        _ => None,
    };
    // A file to import is read and checked before connecting: a bad one needs no broker.
    let import = match &command {
        AdminCommand::Definitions(DefinitionsArgs {
            action: DefinitionsAction::Import { file },
        }) => {
            let bytes = std::fs::read(file).map_err(|e| {
                CliError::from(e).context(format_args!("cannot read {}", file.display()))
            })?;
            Some(definitions::parse(file, &bytes)?)
        }
        _ => None,
    };
    let (url, credentials) = target_url(&target.url)?;
    // A command ends with its connection: an operator closing it (or a broker stopping)
    // stops `sluice consume` rather than having it come back unasked.
    let mut builder = Client::builder()
        .name(CONNECTION_NAME)
        .reconnect_timeout(std::time::Duration::ZERO);
    if let Some((user, password)) = credentials {
        builder = builder.credentials(user, password);
    }
    let client = builder
        .connect_url(&url)
        .await
        .map_err(|e| connect_error(&url, e))?;
    let result = match (import, command) {
        (Some(defs), _) => {
            let vhost = url
                .vhost()
                .unwrap_or(crate::routing::namespace::DEFAULT_VHOST);
            definitions::import(&client, vhost, &defs, target.json).await
        }
        (None, command) => dispatch(&client, command, stdin_body, target.json).await,
    };
    let closed = client.close().await;
    let outcome = result?;
    closed.map_err(|e| CliError::from(e).context("closing the connection"))?;
    Ok(outcome)
}

/// The URL to connect to and, when `SLUICE_PASSWORD` is set, the user and password to log in
/// with: the URL's user (guest without one) with that password.
fn target_url(raw: &str) -> Result<(ConnectUrl, Option<(String, String)>), CliError> {
    let url = ConnectUrl::parse(raw).map_err(sluice_client::Error::from)?;
    let Ok(password) = std::env::var(super::PASSWORD_VAR) else {
        return Ok((url, None));
    };
    let user = url
        .username()
        .unwrap_or("guest") // the client's default user
        .to_owned();
    // Credentials in the URL win over the builder's: take them out of it.
    let bare = ConnectUrl::parse(&without_user_info(raw)).map_err(sluice_client::Error::from)?;
    Ok((bare, Some((user, password))))
}

/// `raw` without its `user[:password]@` part.
fn without_user_info(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return raw.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((_, host_port)) => format!("{scheme}://{host_port}{tail}"),
        None => raw.to_owned(),
    }
}

/// Why the command could not connect, with what to do when the cause is a common one.
fn connect_error(url: &ConnectUrl, e: sluice_client::Error) -> CliError {
    match &e {
        sluice_client::Error::Io(io) if io.kind() == io::ErrorKind::ConnectionRefused => {
            CliError::new(format!(
                "cannot connect to {url}: nothing is listening there; start the broker with `sluice serve`, or give its address with --url"
            ))
        }
        sluice_client::Error::Io(io) => CliError::new(format!("cannot connect to {url}: {io}")),
        _ => CliError::from(e).context(format_args!("cannot connect to {url}")),
    }
}

async fn dispatch(
    client: &Client,
    command: AdminCommand,
    stdin_body: Option<Vec<u8>>,
    json: bool,
) -> Result<Outcome, CliError> {
    match command {
        AdminCommand::Queues => {
            let mut queues = client.list_queues().await?;
            // Queues with a chaos injection are marked (a broker without chaos: none are).
            let chaos = client
                .list_chaos()
                .await
                .map(|l| l.entries)
                .unwrap_or_default();
            if json {
                let shown = super::chaos::mark_queues_json(&queues, &chaos);
                print_json(&shown)?;
            } else {
                super::chaos::mark_queue_names(&mut queues, &chaos);
                print(&queues_table(&queues).to_string())?;
            }
        }
        AdminCommand::Exchanges => {
            let exchanges = client.list_exchanges().await?;
            if json {
                print_json(&exchanges.iter().map(ExchangeJson::from).collect::<Vec<_>>())?;
            } else {
                print(&exchanges_table(&exchanges).to_string())?;
            }
        }
        AdminCommand::Bindings => {
            let bindings = client.list_bindings().await?;
            if json {
                print_json(&bindings.iter().map(BindingJson::from).collect::<Vec<_>>())?;
            } else {
                print(&bindings_table(&bindings).to_string())?;
            }
        }
        AdminCommand::Consumers => {
            let consumers = client.list_consumers().await?;
            if json {
                print_json(&consumers.iter().map(ConsumerJson::from).collect::<Vec<_>>())?;
            } else {
                print(&consumers_table(&consumers).to_string())?;
            }
        }
        AdminCommand::Connections => {
            let connections = client.list_connections().await?;
            if json {
                print_json(
                    &connections
                        .iter()
                        .map(ConnectionJson::from)
                        .collect::<Vec<_>>(),
                )?;
            } else {
                print(&connections_table(&connections).to_string())?;
            }
        }
        AdminCommand::CloseConnection(a) => {
            client.close_connection(a.id, &a.reason).await?;
            if json {
                print_json(&json!({ "connection_id": a.id, "closed": true }))?;
            } else {
                print(&format!("connection {} closed\n", a.id))?;
            }
        }
        AdminCommand::CancelConsumer(a) => {
            client.cancel_consumer(a.connection_id, &a.tag).await?;
            if json {
                print_json(&json!({
                    "connection_id": a.connection_id,
                    "consumer_tag": a.tag,
                    "cancelled": true,
                }))?;
            } else {
                print(&format!(
                    "consumer '{}' of connection {} cancelled\n",
                    a.tag, a.connection_id
                ))?;
            }
        }
        AdminCommand::Definitions(a) => match a.action {
            DefinitionsAction::Export { file } => {
                definitions::export(client, file.as_deref()).await?;
            }
            DefinitionsAction::Import { .. } => {
                return Err(CliError::new("the definitions file was not read"));
            }
        },
        AdminCommand::DeclareQueue(a) => declare_queue(client, a, json).await?,
        AdminCommand::DeleteQueue(a) => delete_queue(client, &a, json).await?,
        AdminCommand::Purge(a) => {
            let messages = client.purge_queue(&a.queue).await?;
            if json {
                print_json(&json!({ "queue": a.queue, "messages": messages }))?;
            } else {
                print(&format!(
                    "queue '{}' purged ({messages} messages)\n",
                    a.queue
                ))?;
            }
        }
        AdminCommand::Inspect(a) => {
            let queue = client.inspect_queue(&a.queue).await?;
            if json {
                print_json(&InspectJson::from(&queue))?;
            } else {
                print(&inspect_text(&queue))?;
            }
        }
        AdminCommand::DeclareExchange(a) => declare_exchange(client, a, json).await?,
        AdminCommand::DeleteExchange(a) => delete_exchange(client, &a, json).await?,
        AdminCommand::Bind(a) => bind(client, a, true, json).await?,
        AdminCommand::Unbind(a) => bind(client, a, false, json).await?,
        AdminCommand::Publish(a) => publish(client, a, stdin_body, json).await?,
        AdminCommand::Get(a) => return get(client, &a, json).await,
        AdminCommand::Consume(a) => consume(client, &a, json).await?,
        AdminCommand::Browse(a) => super::messages::browse(client, &a, json).await?,
        AdminCommand::MoveMessages(a) => super::messages::move_messages(client, &a, json).await?,
        AdminCommand::Scheduled(c) => super::scheduled::run(client, &c, json).await?,
        AdminCommand::Trace(a) => super::trace::run(client, &a, json).await?,
        AdminCommand::Cluster(c) => super::cluster::run(client, &c, json).await?,
        AdminCommand::Chaos(c) => super::chaos::run(client, &c, json).await?,
        AdminCommand::User(_) | AdminCommand::Vhost(_) | AdminCommand::Permissions(_) => {
            return Err(CliError::new(
                "this command edits the users file; it needs no broker",
            ))
        }
    }
    Ok(Outcome::Done)
}

async fn declare_queue(client: &Client, a: DeclareQueueArgs, json: bool) -> Result<(), CliError> {
    let options = QueueOptions {
        durable: !a.transient,
        exclusive: a.exclusive,
        auto_delete: a.auto_delete,
        passive: a.passive,
        arguments: QueueArguments {
            max_length: a.max_length,
            max_length_bytes: a.max_length_bytes,
            overflow: a.overflow.map(Into::into),
            message_ttl_ms: a.message_ttl_ms,
            dead_letter_exchange: a.dead_letter_exchange,
            dead_letter_routing_key: a.dead_letter_routing_key,
            ack_timeout_ms: a.ack_timeout_ms,
            delivery_limit: a.delivery_limit,
            expires_ms: a.expires_ms,
            max_message_bytes: a.max_message_bytes,
            max_priority: a.max_priority,
            retry_backoff: a.retry_backoff,
            dedup_window_ms: a.dedup_window_ms,
            dedup_window_count: a.dedup_window_count,
            replicas: a.replicas,
            single_active_consumer: a.single_active_consumer.then_some(1),
        },
    };
    let ok = client.declare_queue(&a.name, options).await?;
    if json {
        print_json(&json!({ "name": ok.name, "ready": ok.ready, "consumers": ok.consumers }))
    } else {
        let verb = if a.passive { "exists" } else { "declared" };
        print(&format!(
            "queue '{}' {verb} ({} ready, {} consumers)\n",
            ok.name, ok.ready, ok.consumers
        ))
    }
}

async fn delete_queue(client: &Client, a: &DeleteQueueArgs, json: bool) -> Result<(), CliError> {
    let options = DeleteQueueOptions {
        if_unused: a.if_unused,
        if_empty: a.if_empty,
    };
    let messages = client.delete_queue(&a.queue, options).await?;
    if json {
        print_json(&json!({ "queue": a.queue, "messages": messages }))
    } else {
        print(&format!(
            "queue '{}' deleted ({messages} messages)\n",
            a.queue
        ))
    }
}

async fn declare_exchange(
    client: &Client,
    a: DeclareExchangeArgs,
    json: bool,
) -> Result<(), CliError> {
    let kind = ExchangeKind::from(a.kind);
    let options = ExchangeOptions {
        durable: !a.transient,
        auto_delete: a.auto_delete,
        passive: a.passive,
        alternate_exchange: a.alternate_exchange,
        hash_header: a.hash_header,
    };
    client.declare_exchange(&a.name, kind, options).await?;
    if json {
        print_json(&json!({ "exchange": a.name, "kind": kind_name(kind) }))
    } else {
        let verb = if a.passive { "exists" } else { "declared" };
        print(&format!(
            "exchange '{}' ({}) {verb}\n",
            a.name,
            kind_name(kind)
        ))
    }
}

async fn delete_exchange(
    client: &Client,
    a: &DeleteExchangeArgs,
    json: bool,
) -> Result<(), CliError> {
    let options = DeleteExchangeOptions {
        if_unused: a.if_unused,
    };
    client.delete_exchange(&a.name, options).await?;
    if json {
        print_json(&json!({ "exchange": a.name, "deleted": true }))
    } else {
        print(&format!("exchange '{}' deleted\n", a.name))
    }
}

fn headers(args: Vec<HeaderArg>) -> Headers {
    args.into_iter().map(|h| (h.key, h.value)).collect()
}

async fn bind(client: &Client, a: BindArgs, bind: bool, json: bool) -> Result<(), CliError> {
    let mut arguments = headers(a.headers);
    if let Some(weight) = a.weight {
        sluice_client::set_weight(&mut arguments, weight);
    }
    if bind {
        client
            .bind(&a.queue, &a.exchange, &a.routing_key, arguments.clone())
            .await?;
    } else {
        client
            .unbind(&a.queue, &a.exchange, &a.routing_key, arguments.clone())
            .await?;
    }
    if json {
        return print_json(&BindingJson {
            exchange: &a.exchange,
            queue: &a.queue,
            routing_key: &a.routing_key,
            arguments: HeadersJson(&arguments),
        });
    }
    let mut text = format!(
        "queue '{}' {} exchange '{}' with routing key '{}'",
        a.queue,
        if bind { "bound to" } else { "unbound from" },
        exchange_name(&a.exchange),
        a.routing_key
    );
    if !arguments.is_empty() {
        text.push_str(&format!(" and headers {}", headers_text(&arguments)));
    }
    text.push('\n');
    print(&text)
}

async fn publish(
    client: &Client,
    a: PublishArgs,
    stdin_body: Option<Vec<u8>>,
    json: bool,
) -> Result<(), CliError> {
    let body = match (a.body, stdin_body) {
        (Some(body), _) => Bytes::from(body),
        (None, Some(body)) => Bytes::from(body),
        (None, None) => Bytes::new(),
    };
    let mut options = PublishOptions::new();
    // Mandatory unless told otherwise: without it the broker confirms a message that reached
    // no queue just like one that did, and the command could not tell the user.
    let mandatory = !a.no_mandatory;
    options.mandatory = mandatory;
    options.properties.persistent = !a.transient;
    options.properties.content_type = a.content_type;
    options.properties.message_id = a.message_id;
    options.properties.correlation_id = a.correlation_id;
    options.properties.reply_to = a.reply_to;
    options.properties.expiration_ms = a.expiration_ms;
    options.properties.priority = a.priority;
    options.properties.delay_ms = a
        .delay
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    options.properties.deliver_at_ms = a.deliver_at_ms;
    for h in a.headers {
        options = options.header(h.key, h.value);
    }
    let len = body.len();
    let confirmed = client
        .publish(&a.exchange, &a.routing_key, body, &options)
        .await
        .map_err(|e| match e {
            sluice_client::Error::PublishRejected {
                code: ErrorCode::Unroutable,
                ..
            } => CliError::with_code(
                format!(
                    "no queue is bound to exchange '{}' with routing key '{}', so the message was dropped; bind a queue first",
                    exchange_name(&a.exchange),
                    a.routing_key
                ),
                ErrorCode::Unroutable,
            ),
            other => CliError::from(other),
        })?;
    if json {
        print_json(&json!({
            "exchange": a.exchange,
            "routing_key": a.routing_key,
            "bytes": len,
            "confirmed": true,
            // Unknown (null) without mandatory: the broker does not say.
            "routed": mandatory.then_some(true),
            "duplicate": confirmed.is_duplicate(),
        }))
    } else {
        let how = if confirmed.is_duplicate() {
            "confirmed as a duplicate: a queue's dedup window already had its message id, so it was not stored there again"
        } else if mandatory {
            "confirmed"
        } else {
            "confirmed; with --no-mandatory the broker does not say whether any queue took it"
        };
        print(&format!(
            "published {len} bytes to exchange '{}' with routing key '{}' ({how})\n",
            exchange_name(&a.exchange),
            a.routing_key
        ))
    }
}

async fn get(client: &Client, a: &GetArgs, json: bool) -> Result<Outcome, CliError> {
    if a.count != 1 || a.wait.is_some() {
        return get_many(client, a, json).await;
    }
    let Some(message) = client.get(&a.queue).await? else {
        eprintln!("sluice: queue '{}' has no ready message", a.queue);
        return Ok(Outcome::Empty);
    };
    if let Err(e) = write_message(&message, json) {
        // Nobody got it: put it back.
        message.nack(true).await?;
        return Err(CliError::new(format!(
            "cannot write the message (it was requeued): {e}"
        )));
    }
    if a.requeue {
        message.nack(true).await?;
    } else {
        message.ack().await?;
    }
    Ok(Outcome::Done)
}

/// `sluice get --count N --wait D`: one `GetMany`, each message written then acked (or
/// requeued with `--requeue`).
async fn get_many(client: &Client, a: &GetArgs, json: bool) -> Result<Outcome, CliError> {
    let wait = a.wait.unwrap_or_default();
    let messages = client.get_many(&a.queue, a.count, wait).await?;
    if messages.is_empty() {
        eprintln!("sluice: queue '{}' has no ready message", a.queue);
        return Ok(Outcome::Empty);
    }
    let mut messages = messages.into_iter();
    while let Some(message) = messages.next() {
        if let Err(e) = write_message(&message, json) {
            // Nobody got these: put them back.
            for m in std::iter::once(message).chain(messages) {
                m.nack(true).await?;
            }
            return Err(CliError::new(format!(
                "cannot write a message (it and the rest were requeued): {e}"
            )));
        }
        if a.requeue {
            message.nack(true).await?;
        } else {
            message.ack().await?;
        }
    }
    Ok(Outcome::Done)
}

async fn consume(client: &Client, a: &ConsumeArgs, json: bool) -> Result<(), CliError> {
    if a.count == Some(0) {
        return Ok(());
    }
    // The window never exceeds what --count still needs, so the broker delivers no message
    // this command would only hand back (counted as a delivery, marked redelivered).
    let window = |remaining: Option<u64>| match remaining {
        None => a.prefetch,
        Some(r) => {
            let r = u32::try_from(r).unwrap_or(u32::MAX);
            if a.prefetch == 0 {
                r
            } else {
                a.prefetch.min(r)
            }
        }
    };
    let mut prefetch = window(a.count);
    let options = ConsumeOptions {
        priority: a.priority,
        circuit_breaker: a.circuit_breaker,
        ..ConsumeOptions::new().prefetch(prefetch)
    };
    let mut consumer = client.consume(&a.queue, options).await?;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut printed = 0u64;
    loop {
        let next = tokio::select! {
            next = consumer.next() => next,
            _ = &mut interrupted => break,
        };
        let Some(message) = next else { break };
        let message = message?;
        if let Err(e) = write_message(&message, json) {
            // Not acked: it returns to the queue with the rest when the connection closes.
            return if e.kind() == io::ErrorKind::BrokenPipe {
                Ok(()) // the reader is gone (`sluice consume q | head -n 3`)
            } else {
                Err(CliError::new(format!("cannot write a message: {e}")))
            };
        }
        printed += 1;
        let remaining = a.count.map(|n| n - printed);
        if remaining == Some(0) {
            // Stop deliveries before the last ack frees a place in the window.
            consumer.cancel().await?;
            settle(message, a.requeue).await?;
            break;
        }
        let narrower = window(remaining);
        if narrower < prefetch {
            consumer.set_prefetch(narrower).await?;
            prefetch = narrower;
        }
        settle(message, a.requeue).await?;
    }
    Ok(())
}

/// Acks a consumed message, or puts it back (`--requeue`).
async fn settle(message: Message, requeue: bool) -> Result<(), CliError> {
    if requeue {
        message.nack(true).await?;
    } else {
        message.ack().await?;
    }
    Ok(())
}

/// Writes a message to stdout: its body and a newline, or its JSON view on one line.
fn write_message(message: &Message, json: bool) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if json {
        let headers = message.headers();
        let line = serde_json::to_string(&MessageJson::new(message, &headers))?;
        out.write_all(line.as_bytes())?;
    } else {
        out.write_all(&message.body)?;
    }
    out.write_all(b"\n")?;
    out.flush()
}

fn read_stdin() -> Result<Vec<u8>, CliError> {
    let mut body = Vec::new();
    io::stdin()
        .lock()
        .read_to_end(&mut body)
        .map_err(|e| CliError::from(e).context("reading the body from stdin"))?;
    Ok(body)
}

/// Prints to stdout. A closed stdout (`sluice queues | head -n 1`) is not an error.
pub(super) fn print(text: &str) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(CliError::from(e).context("writing to stdout"))
        }
        _ => Ok(()),
    }
}

/// Prints one JSON document, indented, and a newline.
pub(super) fn print_json(value: &impl Serialize) -> Result<(), CliError> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::new(format!("cannot encode JSON: {e}")))?;
    text.push('\n');
    print(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_taken_out_of_a_url_and_the_rest_kept() {
        assert_eq!(
            without_user_info("sluice://app@h:1/v?name=x"),
            "sluice://h:1/v?name=x"
        );
        assert_eq!(without_user_info("sluice://app:p@w@h"), "sluice://h");
        assert_eq!(without_user_info("sluice://h:1/%2F"), "sluice://h:1/%2F");
        assert_eq!(without_user_info("sluice://"), "sluice://");
    }

    #[test]
    fn a_password_in_the_url_flag_is_refused_and_a_user_alone_is_not() {
        let refusal = super::super::refuse_password_in_url_flag("sluice://app:pw@h").unwrap();
        assert!(
            refusal.contains("SLUICE_PASSWORD") && !refusal.contains("pw@"),
            "{refusal}"
        );
        assert_eq!(
            super::super::refuse_password_in_url_flag("sluice://app@h"),
            None
        );
        assert_eq!(
            super::super::refuse_password_in_url_flag("sluice://h/staging"),
            None
        );
    }
}
