//! Bearer tokens and the scopes they grant.
//!
//! Every route needs `Authorization: Bearer <token>` (or the same token as `x-goog-api-key`, as Google's SDKs send
//! it). A token grants one scope, and a job belongs to the scope
//! that submitted it (the `owner` entry of the request's metadata, so any process sharing the engine's state can
//! check it). Another scope's job answers 404, exactly as a job that does not exist, so ids cannot be probed.

use crate::config::TokenConfig;
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The scope a request's token grants, put in the request's extensions by [`require_token`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope(pub String);

/// The configured tokens, kept as SHA-256 digests so every comparison has the same length.
pub struct Tokens {
    entries: Vec<([u8; 32], String)>,
}

impl Tokens {
    pub fn new(tokens: &[TokenConfig]) -> Self {
        Self { entries: tokens.iter().map(|t| (Sha256::digest(t.token.as_bytes()).into(), t.scope.clone())).collect() }
    }

    /// The scope of a presented token. Compares against every configured token without stopping early, in
    /// constant time per comparison, so the time taken says nothing about which bytes matched.
    pub fn scope_of(&self, presented: &str) -> Option<Scope> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (expected, scope) in &self.entries {
            if bool::from(expected.ct_eq(&digest)) && found.is_none() {
                found = Some(scope.clone());
            }
        }
        found.map(Scope)
    }
}

/// Middleware: 401 with `WWW-Authenticate: Bearer` unless the request carries a configured token.
pub async fn require_token(State(tokens): State<Arc<Tokens>>, mut request: Request, next: Next) -> Response {
    let header = request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let bearer = header.and_then(|h| {
        let (scheme, token) = h.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    // Google's SDKs send their API key as `x-goog-api-key` (the Vertex door); it is a token like any other.
    let google = request.headers().get("x-goog-api-key").and_then(|v| v.to_str().ok()).map(str::trim);
    // A browser cannot set headers on a WebSocket: the page offers the token as a subprotocol, `bearer.<token>`.
    let subprotocol = request
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(|list| list.split(',').map(str::trim).find_map(|p| p.strip_prefix("bearer.")));
    let presented = bearer.or(google).or(subprotocol).map(str::to_string);
    let Some(presented) = presented else {
        return ApiError::unauthorized(false).into_response();
    };
    match tokens.scope_of(&presented) {
        Some(scope) => {
            request.extensions_mut().insert(scope);
            next.run(request).await
        }
        None => ApiError::unauthorized(true).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_their_scope_and_nothing_else() {
        let tokens = Tokens::new(&[
            TokenConfig { token: "alpha-token-0123456".into(), scope: "alpha".into() },
            TokenConfig { token: "beta-token-01234567".into(), scope: "beta".into() },
        ]);
        assert_eq!(tokens.scope_of("beta-token-01234567"), Some(Scope("beta".into())));
        assert_eq!(tokens.scope_of("beta-token-0123456"), None);
        assert_eq!(tokens.scope_of(""), None);
    }
}
