//! Bearer tokens, compared in constant time: the SHA-256 digests of the presented token
//! and of every configured one are compared with `subtle`, all of them, so neither the
//! position of a mismatch nor which token matched shows in the timing.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::secret::Secret;

pub struct Tokens {
    digests: Vec<[u8; 32]>,
}

impl Tokens {
    pub fn new(tokens: &[Secret]) -> Self {
        Self { digests: tokens.iter().map(|t| Sha256::digest(t.expose().as_bytes()).into()).collect() }
    }

    pub fn accepts(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digests.iter().fold(subtle::Choice::from(0), |any, d| any | d.ct_eq(&digest)).into()
    }
}

pub async fn require_bearer(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match presented {
        Some(token) if state.tokens.accepts(token) => next.run(request).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the bearer token is not valid").into_response(),
        None => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "an Authorization: Bearer <token> header is required").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_tokens() {
        let t = Tokens::new(&[Secret::new("token-one-0123456789"), Secret::new("token-two-0123456789")]);
        assert!(t.accepts("token-two-0123456789"));
        assert!(!t.accepts("token-two-012345678"));
        assert!(!t.accepts(""));
    }
}
