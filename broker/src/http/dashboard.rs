//! The web dashboard (docs/dashboard.md): a single page of hand-written HTML, CSS and
//! JavaScript in `dashboard/`, embedded in the binary so the broker serves it with nothing
//! else installed. The page itself calls the `/api/...` routes with the credentials the user
//! types, so its files need none.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::Api;

/// One embedded file and its media type.
struct Asset {
    body: &'static str,
    media_type: &'static str,
}

const INDEX: Asset = Asset {
    body: include_str!("dashboard/index.html"),
    media_type: "text/html; charset=utf-8",
};
const STYLE: Asset = Asset {
    body: include_str!("dashboard/app.css"),
    media_type: "text/css; charset=utf-8",
};
const SCRIPT: Asset = Asset {
    body: include_str!("dashboard/app.js"),
    media_type: "text/javascript; charset=utf-8",
};
const ICON: Asset = Asset {
    body: include_str!("dashboard/icon.svg"),
    media_type: "image/svg+xml",
};

impl IntoResponse for &'static Asset {
    fn into_response(self) -> Response {
        // `no-cache` revalidates on every load, so a broker upgrade never runs old script
        // against a new API.
        (
            [(CONTENT_TYPE, self.media_type), (CACHE_CONTROL, "no-cache")],
            self.body,
        )
            .into_response()
    }
}

/// The dashboard's routes: the page at `/`, its files under `/dashboard/`.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/", get(|| async { &INDEX }))
        .route("/dashboard/app.css", get(|| async { &STYLE }))
        .route("/dashboard/app.js", get(|| async { &SCRIPT }))
        .route("/favicon.svg", get(|| async { &ICON }))
}
