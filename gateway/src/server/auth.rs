//! Who may change the server: a bearer token compared in constant time, or, when no token is
//! configured, loopback clients only.
//!
//! The comparison is of SHA-256 digests: both sides are 32 bytes whatever was sent, so neither
//! the time taken nor an early return on a length mismatch tells a caller the token's length.

use std::net::SocketAddr;

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AdminConfig;
use crate::lifecycle::Actor;
use sluice_core::error::{ErrorKind, ServeError};

#[derive(Clone)]
pub struct AdminAuth {
    /// The SHA-256 digest of the configured token.
    token: Option<[u8; 32]>,
    /// Whose token it is, for the messages: "admin" or "outcomes".
    role: &'static str,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl AdminAuth {
    /// The token from `SLUICE_ADMIN_TOKEN`, else `admin.token`, else the first line of
    /// `admin.token_file`.
    pub fn from_config(config: &AdminConfig) -> std::io::Result<AdminAuth> {
        let token = configured_token("SLUICE_ADMIN_TOKEN", &config.token, &config.token_file)?;
        if token.is_none() {
            tracing::warn!(
                "no admin token configured: model and traffic changes are accepted from \
                 loopback clients only (set SLUICE_ADMIN_TOKEN or admin.token). Behind a \
                 reverse proxy or side-car on this host every client arrives from loopback, so \
                 anyone who can reach the proxy can change models: set a token there"
            );
        }
        Ok(AdminAuth::with_token(token))
    }

    /// The outcomes endpoint's gatekeeper: `SLUICE_OUTCOMES_TOKEN`, else `outcomes.token`,
    /// else `outcomes.token_file`; with none, loopback clients only.
    pub fn for_outcomes(config: &crate::outcomes::OutcomesConfig) -> std::io::Result<AdminAuth> {
        let token = configured_token("SLUICE_OUTCOMES_TOKEN", &config.token, &config.token_file)?;
        if token.is_none() && config.enabled {
            tracing::warn!(
                "no outcomes token configured: outcomes are accepted from loopback clients only \
                 (set SLUICE_OUTCOMES_TOKEN or outcomes.token)"
            );
        }
        Ok(AdminAuth {
            role: "outcomes",
            ..AdminAuth::with_token(token)
        })
    }

    pub fn with_token(token: Option<String>) -> AdminAuth {
        AdminAuth {
            token: token.as_deref().map(digest),
            role: "admin",
        }
    }

    /// Allows or refuses a mutating call: 401 without credentials, 403 with wrong ones (or, with
    /// no token configured, from a non-loopback peer).
    pub fn authorize(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<Actor, ServeError> {
        let Some(expected) = &self.token else {
            return if peer.ip().is_loopback() {
                Ok(Actor(format!("loopback client {peer}")))
            } else {
                Err(ServeError::new(
                    ErrorKind::Forbidden,
                    format!(
                        "no {} token is configured, so this call is accepted from loopback only",
                        self.role
                    ),
                ))
            };
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ServeError::new(
                    ErrorKind::Unauthorized,
                    format!(
                        "this call changes the server: send Authorization: Bearer <{} token>",
                        self.role
                    ),
                )
            })?;
        if bool::from(digest(presented.trim()).ct_eq(expected)) {
            Ok(Actor(format!("token holder at {peer}")))
        } else {
            Err(ServeError::new(
                ErrorKind::Forbidden,
                format!("wrong {} token", self.role),
            ))
        }
    }
}

/// A token from the environment, else the config, else the first line of the token file.
fn configured_token(
    env: &str,
    token: &Option<String>,
    token_file: &Option<std::path::PathBuf>,
) -> std::io::Result<Option<String>> {
    let from_env = std::env::var(env).ok().filter(|t| !t.is_empty());
    let from_file = match token_file {
        Some(path) => std::fs::read_to_string(path)?
            .lines()
            .next()
            .map(|l| l.trim().to_string())
            .filter(|t| !t.is_empty()),
        None => None,
    };
    Ok(from_env.or_else(|| token.clone()).or(from_file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn token_rules() {
        let remote: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let auth = AdminAuth::with_token(Some("s3cret".into()));
        assert!(
            auth.authorize(&headers(Some("Bearer s3cret")), remote)
                .is_ok()
        );
        let kind = |r: Result<Actor, ServeError>| r.unwrap_err().kind;
        assert_eq!(
            kind(auth.authorize(&headers(None), local)),
            ErrorKind::Unauthorized
        );
        assert_eq!(
            kind(auth.authorize(&headers(Some("Bearer nope")), local)),
            ErrorKind::Forbidden
        );
        assert_eq!(
            kind(auth.authorize(&headers(Some("Basic s3cret")), local)),
            ErrorKind::Unauthorized
        );
        // Longer, shorter and prefix-sharing tokens are all just wrong.
        for wrong in [
            "Bearer s3cret!",
            "Bearer s3cre",
            "Bearer ",
            "Bearer s3crets3cret",
        ] {
            assert_eq!(
                kind(auth.authorize(&headers(Some(wrong)), local)),
                ErrorKind::Forbidden,
                "{wrong}"
            );
        }

        let open = AdminAuth::with_token(None);
        assert!(open.authorize(&headers(None), local).is_ok());
        assert_eq!(
            kind(open.authorize(&headers(None), remote)),
            ErrorKind::Forbidden
        );
    }
}
