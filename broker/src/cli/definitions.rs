//! `sluice definitions export|import`: the topology as JSON ([`crate::topology`]), read with
//! the wire listings and written with the client's declares, so only `--url` is needed.

use std::path::Path;

use sluice_client::{Client, ExchangeOptions, InspectQueueOk, QueueOptions};

use super::commands::{print, print_json};
use super::{CliError, Outcome};
use crate::error::RequestError;
use crate::topology::{
    self, client_error, exports_queue, BindingDefinition, Definitions, ExchangeDefinition,
    ImportTarget, QueueDefinition, QueueFacts,
};

/// Reads the broker's topology and writes it to `file`, or to stdout without one.
pub(super) async fn export(client: &Client, file: Option<&Path>) -> Result<(), CliError> {
    let definitions = read_definitions(client).await?;
    let mut text = serde_json::to_string_pretty(&definitions)
        .map_err(|e| CliError::new(format!("cannot encode JSON: {e}")))?;
    text.push('\n');
    match file {
        None => print(&text),
        Some(path) => std::fs::write(path, text).map_err(|e| {
            CliError::from(e).context(format_args!("cannot write {}", path.display()))
        }),
    }
}

async fn read_definitions(client: &Client) -> Result<Definitions, CliError> {
    let listed = client.list_queues().await?;
    let mut queues: Vec<InspectQueueOk> = Vec::new();
    for q in listed
        .iter()
        .filter(|q| exports_queue(&q.name, q.durable, q.exclusive))
    {
        match client.inspect_queue(&q.name).await {
            Ok(inspected) => queues.push(inspected),
            // Deleted since it was listed: not part of the topology any more.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    let exchanges = client.list_exchanges().await?;
    let bindings = client.list_bindings().await?;
    let facts = queues.iter().map(|q| QueueFacts {
        name: &q.name,
        durable: q.durable,
        exclusive: q.exclusive,
        auto_delete: q.auto_delete,
        arguments: &q.arguments,
    });
    Ok(Definitions::from_parts(facts, &exchanges, &bindings))
}

/// Parses definitions read from `file` (before connecting: a bad file needs no broker).
pub(super) fn parse(file: &Path, bytes: &[u8]) -> Result<Definitions, CliError> {
    serde_json::from_slice(bytes)
        .map_err(|e| CliError::new(format!("{} is not a definitions file: {e}", file.display())))
}

/// Declares what `definitions` holds; exits with status 1 when any item failed, after
/// importing all the others.
pub(super) async fn import(
    client: &Client,
    definitions: &Definitions,
    json: bool,
) -> Result<Outcome, CliError> {
    let report = topology::import(&ClientTarget(client), definitions)
        .await
        .map_err(|e| CliError::with_code(e.message, e.code))?;
    if json {
        print_json(&report)?;
    } else {
        print(&format!(
            "imported {} exchanges, {} queues, {} bindings\n",
            report.exchanges, report.queues, report.bindings
        ))?;
    }
    if report.errors.is_empty() {
        return Ok(Outcome::Done);
    }
    if !json {
        for f in &report.errors {
            eprintln!(
                "sluice: {} '{}' was not imported: {} ({})",
                f.item, f.name, f.message, f.error
            );
        }
    }
    Err(CliError::new(format!(
        "{} items were not imported; the others were",
        report.errors.len()
    )))
}

/// Imports with the client's declares.
struct ClientTarget<'a>(&'a Client);

impl ImportTarget for ClientTarget<'_> {
    async fn declare_exchange(&self, x: &ExchangeDefinition) -> Result<(), RequestError> {
        let options = ExchangeOptions {
            durable: true,
            auto_delete: x.auto_delete,
            passive: false,
            alternate_exchange: x.alternate_exchange.clone(),
        };
        self.0
            .declare_exchange(&x.name, x.kind.into(), options)
            .await
            .map_err(client_error)
    }

    async fn declare_queue(&self, q: &QueueDefinition) -> Result<(), RequestError> {
        let options = QueueOptions {
            durable: true,
            exclusive: false,
            auto_delete: q.auto_delete,
            passive: false,
            arguments: (&q.arguments).into(),
        };
        self.0
            .declare_queue(&q.name, options)
            .await
            .map(drop)
            .map_err(client_error)
    }

    async fn bind(&self, b: &BindingDefinition) -> Result<(), RequestError> {
        let arguments = b.header_arguments()?;
        self.0
            .bind(&b.queue, &b.exchange, &b.routing_key, arguments)
            .await
            .map_err(client_error)
    }
}
