//! `/api/queues/NAME/move` and `/api/moves`: moving ready messages from one queue to another
//! (a dead-letter queue back to its source), and following the moves (see [`crate::moves`]).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sluice_client::wire::MoveId;

use super::error::{ApiError, JsonBody};
use super::Api;
use crate::cli::messages::MoveJson;
use crate::moves;

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
    Path(name): Path<String>,
    JsonBody(body): JsonBody<MoveRequest>,
) -> Result<Response, ApiError> {
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
    let id = moves::start(&api.broker, conn, &name, &body.destination, max)?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": id.0 }))).into_response())
}

/// `GET /api/moves`: running moves and the last finished ones, oldest first.
pub async fn list(State(api): State<Api>) -> Response {
    let all = api.broker.moves().list();
    Json(all.iter().map(MoveJson::from).collect::<Vec<_>>()).into_response()
}

/// `GET /api/moves/ID`: one move's state and progress.
pub async fn show(State(api): State<Api>, Path(id): Path<String>) -> Result<Response, ApiError> {
    // Parsed here, so a bad id is answered in the API's error shape.
    let id = id.parse().map(MoveId).map_err(|_| {
        crate::error::RequestError::invalid(format!("'{id}' is not a move id (a number)"))
    })?;
    let info = api
        .broker
        .moves()
        .get(id)
        .ok_or_else(|| moves::unknown(id))?;
    Ok(Json(MoveJson::from(&info)).into_response())
}
