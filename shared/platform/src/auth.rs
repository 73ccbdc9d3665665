//! User tokens: HS256 JWTs whose `sub` is the user id.

use crate::config::JwtSettings;
use chrono::{DateTime, Utc};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use quick_cache::sync::Cache;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use todo_contract::domain::UserId;

/// Seconds a token's `exp` and `nbf` may be off (clock skew).
const LEEWAY_SECS: i64 = 5;

/// What a verified token tells; every other claim is checked by the
/// validation (`exp`, `nbf`, `iss`, `aud`) or ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
}

/// The claims of a minted token.
#[derive(Debug, Serialize)]
struct Minted<'a> {
    sub: &'a str,
    iat: i64,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// A token's user, and until when the token holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user: UserId,
    pub expires_at: DateTime<Utc>,
}

/// Verifies and mints tokens with one secret. Only HS256 is accepted: a token
/// claiming `alg: none` or any other algorithm is refused. `exp` and `sub`
/// are required; `nbf` is honoured when present; `iss` and `aud` are
/// required to match when `JWT_ISSUER` / `JWT_AUDIENCE` are set.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    /// Tokens verified before, by their exact text: a client sends the same
    /// token with every request until it expires, and checking its HMAC and
    /// decoding its claims each time cost ~31 k instructions per create
    /// under callgrind (benches/README.md). Only tokens that passed the
    /// whole check are kept, so a hit is the same bytes already verified;
    /// `exp` is still checked on every use.
    verified: Option<Arc<Cache<String, Verified>>>,
}

impl JwtKeys {
    pub fn new(settings: &JwtSettings) -> Self {
        let bytes = settings.secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS.unsigned_abs();
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &settings.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &settings.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            // A token meant for someone (`aud`) is fine when we ask nothing.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            verified: (settings.verified_cache > 0)
                .then(|| Arc::new(Cache::new(settings.verified_cache))),
        }
    }

    pub fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        self.verify_at(token, Utc::now().timestamp())
    }

    /// [`Self::verify`] with `now` (Unix seconds) for the expiry of a token
    /// verified before; a token seen first is checked against the clock.
    fn verify_at(&self, token: &str, now: i64) -> Result<Verified, AuthError> {
        let Some(cache) = &self.verified else {
            return self.check(token);
        };
        if let Some(known) = cache.get(token) {
            if known.expires_at.timestamp().saturating_add(LEEWAY_SECS) < now {
                cache.remove(token);
                return Err(AuthError::Expired);
            }
            return Ok(known);
        }
        let verified = self.check(token)?;
        cache.insert(token.to_owned(), verified.clone());
        Ok(verified)
    }

    /// The whole check: signature, algorithm, claims.
    fn check(&self, token: &str) -> Result<Verified, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data =
            decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    _ => AuthError::Invalid(e.to_string()),
                }
            })?;
        let user = UserId::try_from(data.claims.sub).map_err(AuthError::Invalid)?;
        let expires_at = DateTime::from_timestamp(data.claims.exp, 0)
            .ok_or_else(|| AuthError::Invalid("exp is out of range".into()))?;
        Ok(Verified { user, expires_at })
    }

    /// A token for `user`, valid for `ttl`.
    pub fn mint(&self, user: &UserId, ttl: Duration) -> String {
        let now = Utc::now().timestamp();
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        self.sign(user, now, now.saturating_add(ttl))
    }

    /// A token whose `exp` lies `ago` in the past (for tests and tools).
    pub fn mint_expired(&self, user: &UserId, ago: Duration) -> String {
        let exp = Utc::now()
            .timestamp()
            .saturating_sub(i64::try_from(ago.as_secs()).unwrap_or(i64::MAX));
        self.sign(user, exp.saturating_sub(60), exp)
    }

    fn sign(&self, user: &UserId, iat: i64, exp: i64) -> String {
        let claims = Minted {
            sub: user.as_str(),
            iat,
            exp,
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        // Encoding a small struct with an HMAC key cannot fail.
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
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn keys(secret: &str) -> JwtKeys {
        JwtKeys::new(&JwtSettings::with_secret(secret))
    }

    fn user(u: &str) -> UserId {
        UserId::try_from(u.to_string()).unwrap()
    }

    /// A token with exactly these claims, signed with `secret`.
    fn signed(secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> i64 {
        Utc::now().timestamp()
    }

    #[test]
    fn minted_tokens_verify_to_their_user() {
        let k = keys(SECRET);
        let t = k.mint(&user("alice"), Duration::from_secs(60));
        let v = k.verify(&t).unwrap();
        assert_eq!(v.user, user("alice"));
        assert!(v.expires_at > Utc::now());
    }

    #[test]
    fn forged_expired_and_unsigned_tokens_are_refused() {
        let k = keys(SECRET);
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
    fn a_token_not_valid_yet_is_refused() {
        let k = keys(SECRET);
        let later = signed(
            SECRET,
            json!({"sub": "alice", "exp": now() + 7200, "nbf": now() + 3600}),
        );
        assert_eq!(k.verify(&later), Err(AuthError::NotYetValid));
        let started = signed(
            SECRET,
            json!({"sub": "alice", "exp": now() + 7200, "nbf": now() - 10}),
        );
        assert!(k.verify(&started).is_ok());
    }

    #[test]
    fn standard_tokens_without_iat_are_accepted() {
        let k = keys(SECRET);
        let plain = signed(SECRET, json!({"sub": "alice", "exp": now() + 60}));
        assert_eq!(k.verify(&plain).unwrap().user, user("alice"));
        let meant_for_someone = signed(
            SECRET,
            json!({"sub": "alice", "exp": now() + 60, "aud": "todo"}),
        );
        assert!(k.verify(&meant_for_someone).is_ok());
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let settings = JwtSettings {
            issuer: Some("https://auth.example".into()),
            audience: Some("todo".into()),
            ..JwtSettings::with_secret(SECRET)
        };
        let k = JwtKeys::new(&settings);
        let own = k.mint(&user("alice"), Duration::from_secs(60));
        assert!(k.verify(&own).is_ok(), "minted tokens carry iss and aud");
        let exp = now() + 60;
        for claims in [
            json!({"sub": "alice", "exp": exp}),
            json!({"sub": "alice", "exp": exp, "iss": "https://auth.example"}),
            json!({"sub": "alice", "exp": exp, "iss": "https://evil.example", "aud": "todo"}),
            json!({"sub": "alice", "exp": exp, "iss": "https://auth.example", "aud": "other"}),
        ] {
            let t = signed(SECRET, claims.clone());
            assert!(
                matches!(k.verify(&t), Err(AuthError::Invalid(_))),
                "{claims}"
            );
        }
        let good = signed(
            SECRET,
            json!({"sub": "alice", "exp": exp, "iss": "https://auth.example", "aud": ["x", "todo"]}),
        );
        assert!(k.verify(&good).is_ok());
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let k = keys(SECRET);
        let t = k.mint(&user("alice"), Duration::from_secs(60));
        assert_eq!(k.verify(&t).unwrap().user, user("alice"));
        let exp = now() + 60;
        // Remembered now; its expiry is checked against the clock it is
        // asked with, not skipped.
        assert_eq!(k.verify_at(&t, exp).unwrap().user, user("alice"));
        assert_eq!(
            k.verify_at(&t, exp + LEEWAY_SECS + 2),
            Err(AuthError::Expired)
        );
        // Forgotten once expired: asked again it is checked in full (and
        // holds, by the real clock).
        assert!(k.verify(&t).is_ok());
    }

    #[test]
    fn only_the_exact_token_verified_is_remembered() {
        let k = keys(SECRET);
        let t = k.mint(&user("alice"), Duration::from_secs(60));
        assert!(k.verify(&t).is_ok());
        // The same claims with another signature, or a changed payload.
        let (body, sig) = t.rsplit_once('.').unwrap();
        let flipped = if sig.starts_with('A') { 'B' } else { 'A' };
        let resigned = format!("{body}.{flipped}{}", &sig[1..]);
        assert!(matches!(k.verify(&resigned), Err(AuthError::Invalid(_))));
        let other = keys("ffffffffffffffffffffffffffffffff");
        let forged = other.mint(&user("alice"), Duration::from_secs(60));
        assert!(matches!(k.verify(&forged), Err(AuthError::Invalid(_))));
        // A refused token is not remembered either.
        assert!(matches!(k.verify(&forged), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn without_a_cache_every_token_is_checked_in_full() {
        let k = JwtKeys::new(&JwtSettings {
            verified_cache: 0,
            ..JwtSettings::with_secret(SECRET)
        });
        let t = k.mint(&user("alice"), Duration::from_secs(60));
        assert!(k.verify(&t).is_ok());
        assert!(k.verify(&t).is_ok());
        let expired = k.mint_expired(&user("alice"), Duration::from_secs(3600));
        assert_eq!(k.verify(&expired), Err(AuthError::Expired));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("Basic abc")), Err(AuthError::Missing));
        assert_eq!(bearer_token(None), Err(AuthError::Missing));
    }
}
