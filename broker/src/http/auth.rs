//! HTTP basic auth against the broker's users, for every `/api/...` route.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sluice_client::wire::ErrorCode;

use super::access::HttpUser;
use super::error::ApiError;
use super::Api;
use crate::auth::Tag;
use crate::error::RequestError;

/// The protection space named in `WWW-Authenticate`.
const CHALLENGE: &str = "Basic realm=\"sluice\"";

/// Sent by the dashboard's script: it shows its own login form, so a refusal must not carry
/// the challenge, which would make the browser pop up its own password dialog.
const SCRIPTED: &str = "x-requested-with";

/// Lets the request through when it carries the name and password of a broker user;
/// otherwise answers 401 with the challenge that makes a browser or curl ask for them
/// (none for a request that says it comes from a script).
pub async fn require_user(State(api): State<Api>, request: Request, next: Next) -> Response {
    let scripted = request.headers().contains_key(SCRIPTED);
    let known = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| credentials(v.as_bytes()))
        .filter(|c| api.broker.config.is_known_user(&c.user, &c.password));
    if let Some(c) = known {
        // Until users carry permissions, a known user may do everything everywhere.
        let user = HttpUser {
            name: c.user,
            tags: [Tag::Administrator].into(),
            permissions: None,
        };
        let mut request = request;
        request.extensions_mut().insert(Arc::new(user));
        return next.run(request).await;
    }
    let refusal = RequestError::new(
        ErrorCode::AccessRefused,
        "unknown user or wrong password (HTTP basic auth)",
    );
    let mut response = ApiError(refusal).into_response();
    // ACCESS_REFUSED is 403 for a missing permission; here nobody is logged in.
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    if !scripted {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
    }
    response
}

/// A user name and password from an `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
struct Credentials {
    user: String,
    password: String,
}

/// Parses `Basic base64(user:password)` (RFC 7617); anything else is no credentials.
fn credentials(header: &[u8]) -> Option<Credentials> {
    let header = std::str::from_utf8(header).ok()?;
    let (scheme, token) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some(Credentials {
        user: user.to_owned(),
        password: password.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_read_and_anything_else_is_none() {
        // "guest:gu:est" — a password may hold colons, a user name may not.
        assert_eq!(
            credentials(b"Basic Z3Vlc3Q6Z3U6ZXN0"),
            Some(Credentials {
                user: "guest".into(),
                password: "gu:est".into()
            })
        );
        assert_eq!(
            credentials(b"basic Z3Vlc3Q6"),
            Some(Credentials {
                user: "guest".into(),
                password: String::new()
            })
        );
        assert_eq!(credentials(b"Bearer Z3Vlc3Q6Z3Vlc3Q="), None);
        assert_eq!(credentials(b"Basic !!!"), None);
        assert_eq!(credentials(b"Basic Z3Vlc3Q="), None); // "guest": no colon
        assert_eq!(credentials(b"Basic"), None);
        assert_eq!(credentials(b"\xff\xfe"), None);
    }
}
