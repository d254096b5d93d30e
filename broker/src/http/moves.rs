//! `/api/queues/NAME/move` and `/api/moves`: moving ready messages from one queue to another
//! (a dead-letter queue back to its source), and following the moves (see [`crate::moves`]).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sluice_client::wire::{MoveId, MoveState};

use super::access::{Scope, Visible, WithVhost};
use super::error::{ApiError, JsonBody};
use super::Api;
use crate::auth::{Permission, ResourceKind};
use crate::cli::messages::MoveJson;
use crate::moves::{self, MoveInfo};
use crate::routing::Namespace;

/// The body of `POST /api/queues/NAME/move`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    destination: String,
    /// Most messages to move; absent or `null` = every message ready now.
    #[serde(default)]
    max: Option<u64>,
}

/// `POST /api/queues/NAME/move`: starts the move and answers `202 {"id": N}` at once.
pub async fn start(
    State(api): State<Api>,
    scope: Scope,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<MoveRequest>,
) -> Result<Response, ApiError> {
    // Moving reads the source and writes the destination.
    let source = scope.grant(Permission::Read, ResourceKind::Queue, &name)?;
    let destination = scope.grant(Permission::Write, ResourceKind::Queue, &body.destination)?;
    let conn = api.broker.next_conn_id();
    // `max: 0` would read as "all" on the wire; here it is what it says: nothing to move.
    let max = match body.max {
        Some(0) => {
            return Err(crate::error::RequestError::invalid(
                "max must be at least 1, or null to move every ready message",
            )
            .into())
        }
        Some(n) => n,
        None => 0,
    };
    let id = moves::start(&api.broker, conn, &source, &destination, max)
        .map_err(|e| scope.localize(e))?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": id.0 }))).into_response())
}

/// `GET /api/moves`: running moves and the last finished ones, oldest first.
pub async fn list(State(api): State<Api>, visible: Visible) -> Response {
    let all: Vec<(String, MoveInfo)> = api
        .broker
        .moves()
        .list()
        .into_iter()
        .filter_map(|info| localized(&visible, info))
        .collect();
    let json: Vec<WithVhost<'_, MoveJson<'_>>> = all
        .iter()
        .map(|(vhost, info)| WithVhost {
            vhost,
            item: MoveJson::from(info),
        })
        .collect();
    Json(json).into_response()
}

/// The move with its queues named in their vhost's terms, and the vhost, if the user sees it.
fn localized(visible: &Visible, mut info: MoveInfo) -> Option<(String, MoveInfo)> {
    let source = visible.show(&info.source)?;
    let vhost = source.vhost.to_owned();
    let ns = Namespace::of_vhost(&vhost);
    info.source = source.local.to_owned();
    info.destination = ns
        .local(&info.destination)
        .unwrap_or(&info.destination)
        .to_owned();
    if let MoveState::Failed { message, .. } = &mut info.state {
        *message = ns.localize(std::mem::take(message));
    }
    Some((vhost, info))
}

/// `GET /api/moves/ID`: one move's state and progress.
pub async fn show(
    State(api): State<Api>,
    visible: Visible,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    // Parsed here, so a bad id is answered in the API's error shape.
    let id = id.parse().map(MoveId).map_err(|_| {
        crate::error::RequestError::invalid(format!("'{id}' is not a move id (a number)"))
    })?;
    let (vhost, info) = api
        .broker
        .moves()
        .get(id)
        .and_then(|info| localized(&visible, info))
        .ok_or_else(|| moves::unknown(id))?;
    Ok(Json(WithVhost {
        vhost: &vhost,
        item: MoveJson::from(&info),
    })
    .into_response())
}
