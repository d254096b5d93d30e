//! HTTP basic auth against the broker's users (the access store: argon2id hashes, the login
//! throttle shared with the wire protocol, `loopback_users`), for every `/api/...` route, and
//! the user tags that open the API.
//!
//! A user needs one of the tags `administrator`, `monitoring` or `management` to use the API
//! at all; [`Administrator`] guards what only administrators may do (users, vhosts,
//! permissions, closing other users' connections). The authenticated user, with its tags and
//! its permissions in every vhost, rides in the request's extensions as an
//! [`AuthenticatedUser`] ([`ApiUser`] extracts it), for handlers that check per-vhost
//! permissions.

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sluice_client::wire::ErrorCode;

use super::error::ApiError;
use super::listener::Peer;
use super::Api;
use crate::auth::{AuthenticatedUser, Tag};
use crate::error::RequestError;

/// The protection space named in `WWW-Authenticate`.
const CHALLENGE: &str = "Basic realm=\"sluice\"";

/// Sent by the dashboard's script: it shows its own login form, so a refusal must not carry
/// the challenge, which would make the browser pop up its own password dialog.
const SCRIPTED: &str = "x-requested-with";

/// Tags that open the HTTP API; a user with none of them is refused (403).
const API_TAGS: [Tag; 3] = [Tag::Administrator, Tag::Monitoring, Tag::Management];

/// Lets the request through when it carries the name and password of a broker user with a
/// tag that opens the API, with the user in its extensions; otherwise answers 401 with the
/// challenge that makes a browser or curl ask for them (none for a request that says it comes
/// from a script), or 403 for a user without such a tag.
pub async fn require_user(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    mut request: Request,
    next: Next,
) -> Response {
    let scripted = request.headers().contains_key(SCRIPTED);
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| credentials(v.as_bytes()));
    let refused = match given {
        None => "HTTP basic auth with a broker user is required".to_owned(),
        Some(c) => match api
            .broker
            .access
            .authenticate(&c.user, &c.password, peer.addr.ip())
            .await
        {
            Ok(user) if API_TAGS.iter().any(|t| user.tags.contains(t)) => {
                request.extensions_mut().insert(user);
                return next.run(request).await;
            }
            Ok(user) => {
                return ApiError(RequestError::new(
                    ErrorCode::NotAllowed,
                    format!(
                        "user '{}' lacks the tag management (or monitoring, administrator) that the HTTP API requires",
                        user.name
                    ),
                ))
                .into_response()
            }
            Err(refused) => format!("{refused} (HTTP basic auth)"),
        },
    };
    let mut response =
        ApiError(RequestError::new(ErrorCode::AccessRefused, refused)).into_response();
    // ACCESS_REFUSED is 403 for a missing permission (error.rs); here nobody is logged in.
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    if !scripted {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
    }
    response
}

/// The user a request authenticated as (behind [`require_user`]).
#[derive(Debug, Clone)]
pub struct ApiUser(pub AuthenticatedUser);

impl<S: Send + Sync> FromRequestParts<S> for ApiUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<AuthenticatedUser>()
            .cloned()
            .map(ApiUser)
            .ok_or_else(|| {
                ApiError(RequestError::internal(
                    "the route has no authenticated user (it is not behind require_user)",
                ))
            })
    }
}

/// A request by a user tagged `administrator`; anyone else gets 403 naming the tag.
#[derive(Debug, Clone)]
pub struct Administrator(pub AuthenticatedUser);

impl<S: Send + Sync> FromRequestParts<S> for Administrator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ApiUser(user) = ApiUser::from_request_parts(parts, state).await?;
        if user.tags.contains(&Tag::Administrator) {
            return Ok(Administrator(user));
        }
        Err(ApiError(RequestError::new(
            ErrorCode::NotAllowed,
            format!(
                "user '{}' lacks the tag administrator that this request requires",
                user.name
            ),
        )))
    }
}

/// A request by a user tagged `monitoring` (or `administrator`): for what sums over every
/// vhost (the overview, its history, the limits' usage), which a `management` user, limited to
/// its own vhosts, may not see.
#[derive(Debug)]
pub struct Monitoring;

impl<S: Send + Sync> FromRequestParts<S> for Monitoring {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ApiUser(user) = ApiUser::from_request_parts(parts, state).await?;
        if user.has_tag(Tag::Monitoring) {
            return Ok(Monitoring);
        }
        Err(ApiError(RequestError::new(
            ErrorCode::NotAllowed,
            format!(
                "user '{}' lacks the tag monitoring that this request requires (it sums over every vhost)",
                user.name
            ),
        )))
    }
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
