//! The vhost a request works in and what its user may do there (protocol.md §5.8 applies to
//! the API as to the wire): `?vhost=NAME`, `/` when absent, so every route written before
//! vhosts means what it meant.
//!
//! - [`Scope`]: one vhost, for requests that act on a queue or an exchange; names are
//!   qualified here ([`Scope::grant`]) and errors carry the client's names again
//!   ([`Scope::localize`]).
//! - [`Visible`]: the vhosts a listing shows: the one asked for, or every vhost the user may
//!   see (administrators and monitors all of them, others those they have permissions in).

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use sluice_client::wire::ErrorCode;

use super::error::ApiError;
use super::Api;
use crate::auth::{AuthenticatedUser, Permission, Principal, ResourceKind, Tag, VhostName};
use crate::error::RequestError;
use crate::routing::{namespace, Namespace};

/// Whether listings show `user` the vhost `vhost`: every vhost to administrators and
/// monitors, to others those they have permissions in.
fn sees(user: &AuthenticatedUser, vhost: &str) -> bool {
    if user.has_tag(Tag::Monitoring) {
        return true;
    }
    VhostName::new(vhost).is_ok_and(|v| user.permissions_in(&v).is_some())
}

/// `?vhost=NAME`.
#[derive(Debug, serde::Deserialize)]
struct VhostParam {
    vhost: Option<String>,
}

fn user_of(parts: &Parts) -> Result<AuthenticatedUser, ApiError> {
    parts
        .extensions
        .get::<AuthenticatedUser>()
        .cloned()
        .ok_or_else(|| RequestError::new(ErrorCode::AccessRefused, "not logged in").into())
}

/// The `vhost` query parameter, checked; `None` when absent.
fn vhost_param(parts: &Parts) -> Result<Option<VhostName>, ApiError> {
    let Query(param) = Query::<VhostParam>::try_from_uri(&parts.uri)
        .map_err(|e| ApiError(RequestError::invalid(e.body_text())))?;
    param
        .vhost
        .map(|v| VhostName::new(&v).map_err(|e| RequestError::invalid(e.to_string()).into()))
        .transpose()
}

/// One vhost and the user in it.
#[derive(Debug)]
pub(crate) struct Scope {
    principal: Principal,
    namespace: Namespace,
}

impl FromRequestParts<Api> for Scope {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, ApiError> {
        let user = user_of(parts)?;
        let vhost = vhost_param(parts)?.unwrap_or_default();
        let Some(principal) = user.principal(&vhost) else {
            let message = format!("user '{}' has no access to vhost '{vhost}'", user.name);
            tracing::warn!(user = user.name, vhost = %vhost, "HTTP access refused: {message}");
            return Err(RequestError::new(ErrorCode::AccessRefused, message).into());
        };
        let namespace = Namespace::of_vhost(vhost.as_str());
        api.broker.open_vhost(&namespace);
        Ok(Self {
            principal,
            namespace,
        })
    }
}

impl Scope {
    /// The vhost's name.
    pub(crate) fn vhost(&self) -> &str {
        self.namespace.vhost()
    }

    /// The vhost's names.
    pub(crate) fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// Whether the user holds `permission` on the resource (nothing is logged: a filter).
    pub(crate) fn allows(&self, permission: Permission, kind: ResourceKind, name: &str) -> bool {
        self.principal.permissions.allows(permission, kind, name)
    }

    /// The internal name of `name` once the user holds `permission` on it.
    pub(crate) fn grant(
        &self,
        permission: Permission,
        kind: ResourceKind,
        name: &str,
    ) -> Result<String, ApiError> {
        let internal = self
            .namespace
            .qualify(name)
            .map_err(RequestError::from)?
            .into_owned();
        self.check(permission, kind, name)?;
        Ok(internal)
    }

    /// `Ok` when the user holds `permission` on the resource; the logged refusal if not.
    pub(crate) fn check(
        &self,
        permission: Permission,
        kind: ResourceKind,
        name: &str,
    ) -> Result<(), ApiError> {
        self.principal
            .check(permission, kind, name)
            .map_err(|refused| {
                tracing::warn!(user = refused.user, vhost = %refused.vhost, "HTTP access refused: {refused}");
                ApiError(refused.into())
            })
    }

    /// The internal name of `name` once the user holds any permission on it (looking is
    /// allowed to whoever may configure, write or read it).
    pub(crate) fn grant_any(&self, kind: ResourceKind, name: &str) -> Result<String, ApiError> {
        let allowed = [Permission::Configure, Permission::Write, Permission::Read]
            .into_iter()
            .any(|p| self.principal.permissions.allows(p, kind, name));
        if allowed {
            return Ok(self
                .namespace
                .qualify(name)
                .map_err(RequestError::from)?
                .into_owned());
        }
        self.grant(Permission::Configure, kind, name)
    }

    /// An error as this vhost's user sees it: internal names become its own.
    pub(crate) fn localize(&self, e: impl Into<ApiError>) -> ApiError {
        let ApiError(mut e) = e.into();
        e.message = self.namespace.localize(e.message);
        ApiError(e)
    }
}

/// The vhosts a listing shows.
#[derive(Debug)]
pub(crate) struct Visible {
    user: AuthenticatedUser,
    only: Option<VhostName>,
}

impl FromRequestParts<Api> for Visible {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _api: &Api) -> Result<Self, ApiError> {
        let user = user_of(parts)?;
        let only = vhost_param(parts)?;
        if let Some(vhost) = &only {
            if !sees(&user, vhost.as_str()) {
                let message = format!("user '{}' has no access to vhost '{vhost}'", user.name);
                return Err(RequestError::new(ErrorCode::AccessRefused, message).into());
            }
        }
        Ok(Self { user, only })
    }
}

impl Visible {
    /// The vhost and local name of `internal` if the listing shows it.
    pub(crate) fn show<'a>(&self, internal: &'a str) -> Option<namespace::ResourceName<'a>> {
        let name = namespace::split(internal);
        let wanted = self.only.as_ref().is_none_or(|v| v.as_str() == name.vhost);
        (wanted && sees(&self.user, name.vhost)).then_some(name)
    }

    /// The vhost `?vhost=` names, or `/`.
    pub(crate) fn vhost_or_default(&self) -> &str {
        self.only
            .as_ref()
            .map_or(namespace::DEFAULT_VHOST, VhostName::as_str)
    }

    /// The user.
    pub(crate) fn user(&self) -> &AuthenticatedUser {
        &self.user
    }
}

/// A listed item with the vhost it belongs to (its names are the vhost's own).
#[derive(Debug, serde::Serialize)]
pub(crate) struct WithVhost<'a, T> {
    /// The vhost.
    pub vhost: &'a str,
    #[serde(flatten)]
    pub item: T,
}
