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

/// Declares what `definitions` holds in the connection's vhost `vhost`; exits with status 1
/// when any item failed (an item of another vhost among them: connect to that vhost to
/// import it), after importing all the others.
pub(super) async fn import(
    client: &Client,
    vhost: &str,
    definitions: &Definitions,
    json: bool,
) -> Result<Outcome, CliError> {
    let target = ClientTarget { client, vhost };
    let report = topology::import(&target, definitions)
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

/// Imports with the client's declares, into the vhost it is connected to.
struct ClientTarget<'a> {
    client: &'a Client,
    vhost: &'a str,
}

impl ClientTarget<'_> {
    /// An item of another vhost than the connection's is not declared here; one without a
    /// vhost is (as the HTTP API declares it in the vhost its import names).
    fn check_vhost(&self, vhost: &Option<String>) -> Result<(), RequestError> {
        let Some(wanted) = vhost.as_deref() else {
            return Ok(());
        };
        if wanted == self.vhost {
            return Ok(());
        }
        Err(RequestError::invalid(format!(
            "it belongs to vhost '{wanted}', not to '{}' this connection works in",
            self.vhost
        )))
    }
}

impl ImportTarget for ClientTarget<'_> {
    async fn declare_exchange(&self, x: &ExchangeDefinition) -> Result<(), RequestError> {
        self.check_vhost(&x.vhost)?;
        let options = ExchangeOptions {
            durable: true,
            auto_delete: x.auto_delete,
            passive: false,
            alternate_exchange: x.alternate_exchange.clone(),
            hash_header: x.hash_header.clone(),
        };
        self.client
            .declare_exchange(&x.name, x.kind.into(), options)
            .await
            .map_err(client_error)
    }

    async fn declare_queue(&self, q: &QueueDefinition) -> Result<(), RequestError> {
        self.check_vhost(&q.vhost)?;
        let options = QueueOptions {
            durable: true,
            exclusive: false,
            auto_delete: q.auto_delete,
            passive: false,
            arguments: (&q.arguments).into(),
        };
        self.client
            .declare_queue(&q.name, options)
            .await
            .map(drop)
            .map_err(client_error)
    }

    async fn bind(&self, b: &BindingDefinition) -> Result<(), RequestError> {
        self.check_vhost(&b.vhost)?;
        let arguments = b.header_arguments()?;
        self.client
            .bind(&b.queue, &b.exchange, &b.routing_key, arguments)
            .await
            .map_err(client_error)
    }
}
