//! User tokens: HS256 JWTs whose `sub` is the user id.

use crate::domain::UserId;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Verifies and mints tokens with one secret. Only HS256 is accepted: a token
/// claiming `alg: none` or any other algorithm is refused.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl JwtKeys {
    pub fn new(secret: &SecretString) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        let data =
            decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                    _ => AuthError::Invalid(e.to_string()),
                }
            })?;
        UserId::try_from(data.claims.sub).map_err(AuthError::Invalid)
    }

    /// A token for `user`, valid for `ttl`.
    pub fn mint(&self, user: &UserId, ttl: Duration) -> String {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let claims = Claims {
            sub: user.as_str().to_owned(),
            iat: now,
            exp: now + ttl.as_secs(),
        };
        // Encoding a small struct with an HMAC key cannot fail.
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_else(|e| unreachable!("HS256 encoding failed: {e}"))
    }

    /// A token whose `exp` lies `ago` in the past (for tests and tools).
    pub fn mint_expired(&self, user: &UserId, ago: Duration) -> String {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let claims = Claims {
            sub: user.as_str().to_owned(),
            iat: now - ago.as_secs() - 60,
            exp: now - ago.as_secs(),
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_else(|e| unreachable!("HS256 encoding failed: {e}"))
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Missing)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> JwtKeys {
        JwtKeys::new(&SecretString::from(secret.to_string()))
    }

    fn user(u: &str) -> UserId {
        UserId::try_from(u.to_string()).unwrap()
    }

    #[test]
    fn minted_tokens_verify_to_their_user() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let t = k.mint(&user("alice"), Duration::from_secs(60));
        assert_eq!(k.verify(&t).unwrap(), user("alice"));
    }

    #[test]
    fn forged_expired_and_unsigned_tokens_are_refused() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let other = keys("ffffffffffffffffffffffffffffffff");
        let forged = other.mint(&user("alice"), Duration::from_secs(60));
        assert!(matches!(k.verify(&forged), Err(AuthError::Invalid(_))));
        let expired = k.mint_expired(&user("alice"), Duration::from_secs(3600));
        assert_eq!(k.verify(&expired), Err(AuthError::Expired));
        // {"alg":"none","typ":"JWT"}.{"sub":"alice","exp":9999999999}.
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(matches!(k.verify(none), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("Basic abc")), Err(AuthError::Missing));
        assert_eq!(bearer_token(None), Err(AuthError::Missing));
    }
}
