//! `sluice cluster status|add-node|remove-node|transfer-leadership` (protocol.md §20),
//! administrators only.

use serde_json::json;
use sluice_client::wire::ClusterStatusOk;
use sluice_client::Client;

use super::commands::{print, print_json};
use super::format::{Align, Table};
use super::{CliError, ClusterCommand};

/// Runs `sluice cluster ...`.
pub(super) async fn run(client: &Client, c: &ClusterCommand, json: bool) -> Result<(), CliError> {
    match c {
        ClusterCommand::Status => {
            let status = client.cluster_status().await?;
            if json {
                print_json(&status_json(&status))
            } else {
                print(&status_text(&status))
            }
        }
        ClusterCommand::AddNode { id, addr } => {
            client.add_node(*id, addr).await?;
            done(
                json,
                json!({ "node": id, "added": true }),
                &format!("node {id} added\n"),
            )
        }
        ClusterCommand::RemoveNode { id } => {
            client.remove_node(*id).await?;
            done(
                json,
                json!({ "node": id, "removed": true }),
                &format!("node {id} removed\n"),
            )
        }
        ClusterCommand::TransferLeadership { queue, to } => {
            client.transfer_leadership(queue.as_deref(), *to).await?;
            let what = queue
                .as_deref()
                .map_or("the metadata group".to_owned(), |q| format!("queue '{q}'"));
            done(
                json,
                json!({ "queue": queue, "leader": to }),
                &format!("node {to} now leads {what}\n"),
            )
        }
    }
}

fn done(json: bool, value: serde_json::Value, text: &str) -> Result<(), CliError> {
    if json {
        print_json(&value)
    } else {
        print(text)
    }
}

fn opt(n: Option<u64>) -> String {
    n.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

/// The status as the JSON `GET /api/cluster` also uses for the same fields.
fn status_json(s: &ClusterStatusOk) -> serde_json::Value {
    json!({
        "node_id": s.node_id,
        "member": s.member,
        "metadata_leader": s.metadata_leader,
        "metadata_term": s.metadata_term,
        "members": s.members.iter().map(|m| json!({
            "id": m.id,
            "voter": m.voter,
            "cluster_addr": m.cluster_addr,
            "client_addr": m.client_addr,
            "http_addr": m.http_addr,
        })).collect::<Vec<_>>(),
        "groups": s.groups.iter().map(|g| json!({
            "id": g.group_id,
            "queue": (!g.name.is_empty()).then_some(&g.name),
            "leader": g.leader,
            "term": g.term,
            "last_log_index": g.last_index,
            "replicas": g.replicas.iter().map(|r| json!({
                "node": r.node, "voter": r.voter, "lag": r.lag,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn status_text(s: &ClusterStatusOk) -> String {
    let mut out = format!(
        "node {} ({}), metadata leader: {} (term {})\n\n",
        s.node_id,
        if s.member {
            "member"
        } else {
            "not a member yet"
        },
        opt(s.metadata_leader),
        s.metadata_term
    );
    let mut members = Table::new(&[
        ("NODE", Align::Right),
        ("ROLE", Align::Left),
        ("CLUSTER", Align::Left),
        ("CLIENTS", Align::Left),
        ("HTTP", Align::Left),
    ]);
    for m in &s.members {
        let role = match (Some(m.id) == s.metadata_leader, m.voter) {
            (true, _) => "leader",
            (false, true) => "voter",
            (false, false) => "learner",
        };
        members.row(vec![
            m.id.to_string(),
            role.to_owned(),
            m.cluster_addr.clone(),
            m.client_addr.clone(),
            m.http_addr.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    out.push_str(&members.to_string());
    let mut groups = Table::new(&[
        ("GROUP", Align::Right),
        ("QUEUE", Align::Left),
        ("LEADER", Align::Right),
        ("TERM", Align::Right),
        ("LAST", Align::Right),
        ("REPLICAS (LAG)", Align::Left),
    ]);
    for g in &s.groups {
        let replicas: Vec<String> = g
            .replicas
            .iter()
            .map(|r| match r.lag {
                Some(lag) => format!("{}({lag})", r.node),
                None => r.node.to_string(),
            })
            .collect();
        groups.row(vec![
            format!("{:x}", g.group_id),
            if g.name.is_empty() {
                "(metadata)".to_owned()
            } else {
                g.name.clone()
            },
            opt(g.leader),
            g.term.to_string(),
            g.last_index.to_string(),
            replicas.join(" "),
        ]);
    }
    out.push('\n');
    out.push_str(&groups.to_string());
    out
}
