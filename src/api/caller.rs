//! Who is calling a job endpoint. With no client keys configured the job API is open (the
//! embedded default on loopback); with keys, every call needs a key or the admin token, and a
//! key acts only for the user it is bound to.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};

use super::ApiError;
use crate::runtime::RuntimeHandle;

pub enum Caller {
    /// No client keys are configured.
    Anyone,
    Admin,
    User(String),
}

impl Caller {
    /// Refuse (403) when the caller may not act for `user`.
    pub fn may_act_for(&self, user: &str) -> Result<(), ApiError> {
        match self {
            Caller::Anyone | Caller::Admin => Ok(()),
            Caller::User(u) if u == user => Ok(()),
            Caller::User(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this client key may not act for user {user:?}"),
            )),
        }
    }

    /// Whether the caller may see `user`'s things (for lookups that answer 404 otherwise, so
    /// that ids of other users' jobs are not confirmed).
    pub fn sees(&self, user: &str) -> bool {
        self.may_act_for(user).is_ok()
    }
}

pub(super) fn bearer(parts_headers: &axum::http::HeaderMap) -> &str {
    parts_headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

impl FromRequestParts<RuntimeHandle> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, rt: &RuntimeHandle) -> Result<Self, ApiError> {
        let given = bearer(&parts.headers);
        let settings = rt.settings();
        if let Some(token) = &settings.admin_token
            && super::constant_time_eq(given.as_bytes(), token.as_bytes())
        {
            return Ok(Caller::Admin);
        }
        if settings.client_keys.is_empty() {
            return Ok(Caller::Anyone);
        }
        // Compare against every key, so the time taken does not depend on which one matched.
        let mut found = None;
        for (key, user) in &settings.client_keys {
            if super::constant_time_eq(given.as_bytes(), key.as_bytes()) {
                found = Some(user.clone());
            }
        }
        found.map(Caller::User).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a client key is required (Authorization: Bearer <key>)",
            )
        })
    }
}
