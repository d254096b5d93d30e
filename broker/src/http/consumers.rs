//! `GET /api/consumers`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_client::wire::ListConsumers;

use super::access::{Visible, WithVhost};
use super::Api;
use crate::admin;
use crate::cli::format::ConsumerJson;

/// `GET /api/consumers`: every consumer, as `sluice consumers --json` prints them.
pub async fn list(State(api): State<Api>, visible: Visible) -> Response {
    let request = ListConsumers {
        circuit: true,
        ..ListConsumers::default()
    };
    let mut all = admin::list_consumers(&api.broker, None, &request, u32::MAX);
    let mut vhosts = Vec::new();
    all.consumers.retain_mut(|c| match visible.show(&c.queue) {
        Some(name) => {
            vhosts.push(name.vhost.to_owned());
            c.queue = name.local.to_owned();
            true
        }
        None => false,
    });
    let json: Vec<WithVhost<'_, ConsumerJson<'_>>> = all
        .consumers
        .iter()
        .zip(&vhosts)
        .map(|(c, vhost)| WithVhost {
            vhost,
            item: ConsumerJson::from(c),
        })
        .collect();
    Json(json).into_response()
}
