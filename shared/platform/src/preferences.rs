//! A user's reminder channels: where a fired reminder is delivered besides
//! the log and the user's open pages. Set through todo-api
//! (`PUT /me/notifications`), carried to todo-notifier by a
//! `user.notifications.updated` event on the user's task-events stream (so
//! it is applied in order with their tasks), and kept by the notifier.
//!
//! The webhook's signing secret never travels: todo-api makes it from a
//! server key and a random id (`secret_id`), shows it once, and the notifier,
//! which holds the same key (`WEBHOOK_SECRET_KEY`), makes it again from the
//! id in the event.

use crate::config::{ConfigError, Env};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use schemars::JsonSchema;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Push subscriptions one user may register (devices).
pub const MAX_PUSH_SUBSCRIPTIONS: usize = 10;
const MAX_URL_CHARS: usize = 2048;

/// An e-mail address, checked as RFC 5321 mailbox syntax (by lettre's
/// parser, the one that will send to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(description = "An e-mail address such as ann@example.com")]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EmailAddress {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.len() > 254 || s.chars().any(char::is_control) {
            return Err("not an e-mail address".into());
        }
        s.parse::<lettre::Address>()
            .map(|_| EmailAddress(s.clone()))
            .map_err(|e| format!("not an e-mail address: {e}"))
    }
}

impl From<EmailAddress> for String {
    fn from(e: EmailAddress) -> String {
        e.0
    }
}

/// An absolute http(s) URL without credentials. Whether plain http and
/// private addresses are allowed is the notifier's decision, made when it
/// delivers (after DNS resolution).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(description = "An https URL (at most 2048 characters, no user or password in it)")]
pub struct HttpsUrl(String);

impl HttpsUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn parse(&self) -> Result<url::Url, String> {
        url::Url::parse(&self.0).map_err(|e| e.to_string())
    }
}

impl TryFrom<String> for HttpsUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.len() > MAX_URL_CHARS || s.chars().any(char::is_control) {
            return Err(format!(
                "must be a URL of at most {MAX_URL_CHARS} characters"
            ));
        }
        let url = url::Url::parse(&s).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
            return Err("must be an https URL".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry a user name or password".into());
        }
        Ok(HttpsUrl(s))
    }
}

impl From<HttpsUrl> for String {
    fn from(u: HttpsUrl) -> String {
        u.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailChannel {
    pub address: EmailAddress,
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// The keys of a browser's `PushSubscription` (base64url, as
/// `PushSubscription.toJSON()` gives them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PushKeys {
    /// The user agent's P-256 public key (65 bytes).
    pub p256dh: String,
    /// The authentication secret (16 bytes).
    pub auth: String,
}

/// A browser's `PushSubscription` JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PushSubscription {
    pub endpoint: HttpsUrl,
    pub keys: PushKeys,
    /// Set by some browsers; ignored.
    #[serde(default, rename = "expirationTime", skip_serializing)]
    pub expiration_time: Option<serde_json::Value>,
}

impl PushSubscription {
    /// The decoded keys, or why they are unusable.
    pub fn decoded_keys(&self) -> Result<(Vec<u8>, [u8; 16]), String> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let p256dh = b64
            .decode(self.keys.p256dh.trim_end_matches('='))
            .map_err(|_| "keys.p256dh is not base64url".to_owned())?;
        if p256dh.len() != 65 || p256dh[0] != 4 {
            return Err("keys.p256dh must be an uncompressed P-256 point (65 bytes)".into());
        }
        let auth = b64
            .decode(self.keys.auth.trim_end_matches('='))
            .map_err(|_| "keys.auth is not base64url".to_owned())?;
        let auth: [u8; 16] = auth
            .try_into()
            .map_err(|_| "keys.auth must be 16 bytes".to_owned())?;
        Ok((p256dh, auth))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PushChannel {
    #[serde(default)]
    pub subscriptions: Vec<PushSubscription>,
}

/// The user's channels as they set them (`PUT /me/notifications`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreferencesInput {
    #[serde(default)]
    pub email: Option<EmailChannel>,
    #[serde(default)]
    pub webhook: Option<WebhookInput>,
    #[serde(default)]
    pub webpush: Option<PushChannel>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    pub url: HttpsUrl,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A new signing secret even though the URL stays the same.
    #[serde(default)]
    pub rotate_secret: bool,
    /// As `GET` answers it; ignored (the server chooses secrets), so that
    /// what `GET` answers can be sent back.
    #[serde(default)]
    pub secret_id: Option<Uuid>,
}

fn yes() -> bool {
    true
}

/// The channels as stored, answered (without the secret) and carried in
/// `user.notifications.updated`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct Preferences {
    pub email: Option<EmailChannel>,
    pub webhook: Option<WebhookChannel>,
    pub webpush: PushChannel,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WebhookChannel {
    pub url: HttpsUrl,
    pub enabled: bool,
    /// Names the signing secret (made from it and the server's key); a new
    /// id is a new secret.
    pub secret_id: Uuid,
}

impl PreferencesInput {
    /// Cross-field checks; the field of each problem.
    pub fn check(&self) -> Result<(), (String, String)> {
        if let Some(push) = &self.webpush {
            if push.subscriptions.len() > MAX_PUSH_SUBSCRIPTIONS {
                return Err((
                    "webpush.subscriptions".into(),
                    format!("at most {MAX_PUSH_SUBSCRIPTIONS} subscriptions are allowed"),
                ));
            }
            for (i, s) in push.subscriptions.iter().enumerate() {
                if let Err(e) = s.decoded_keys() {
                    return Err((format!("webpush.subscriptions[{i}].keys"), e));
                }
            }
        }
        Ok(())
    }

    /// The channels to store: the webhook keeps its secret id unless its
    /// URL changed or a rotation is asked for. Returns whether a new secret
    /// was made (and must be shown).
    pub fn resolve(self, before: &Preferences) -> (Preferences, bool) {
        let mut fresh_secret = false;
        let webhook = self.webhook.map(|w| {
            let kept = before
                .webhook
                .as_ref()
                .filter(|b| b.url == w.url && !w.rotate_secret)
                .map(|b| b.secret_id);
            let secret_id = kept.unwrap_or_else(|| {
                fresh_secret = true;
                Uuid::new_v4()
            });
            WebhookChannel {
                url: w.url,
                enabled: w.enabled,
                secret_id,
            }
        });
        (
            Preferences {
                email: self.email,
                webhook,
                webpush: self.webpush.unwrap_or_default(),
            },
            fresh_secret,
        )
    }
}

/// `WEBHOOK_SECRET_KEY`: what webhook signing secrets are made from, held
/// by todo-api (which shows a secret once) and todo-notifier (which signs).
#[derive(Clone)]
pub struct WebhookKey(SecretString);

impl std::fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookKey([redacted])")
    }
}

impl WebhookKey {
    /// `None` when unset: webhooks are then refused (todo-api) or not
    /// delivered (todo-notifier).
    pub fn from_lookup<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
    ) -> Result<Option<Self>, ConfigError> {
        match env.get("WEBHOOK_SECRET_KEY") {
            None => Ok(None),
            Some(k) if k.len() < 32 => Err(ConfigError::Invalid {
                var: "WEBHOOK_SECRET_KEY",
                reason: "must be at least 32 bytes long".into(),
            }),
            Some(k) => Ok(Some(WebhookKey(SecretString::from(k)))),
        }
    }

    pub fn new(key: &str) -> Self {
        WebhookKey(SecretString::from(key.to_owned()))
    }

    /// The signing key of `user`'s webhook `secret_id` (32 bytes).
    pub fn signing_key(&self, user: &str, secret_id: Uuid) -> Vec<u8> {
        // HMAC accepts keys of any length: this cannot fail.
        let mut mac =
            <Hmac<sha2::Sha256> as Mac>::new_from_slice(self.0.expose_secret().as_bytes())
                .unwrap_or_else(|e| unreachable!("HMAC key: {e}"));
        mac.update(b"webhook-secret\0");
        mac.update(user.as_bytes());
        mac.update(b"\0");
        mac.update(secret_id.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The secret as Standard Webhooks writes it: `whsec_` + base64.
    pub fn secret(&self, user: &str, secret_id: Uuid) -> String {
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(self.signing_key(user, secret_id))
        )
    }
}

/// The Standard Webhooks signature of one delivery: `v1,<base64 of
/// HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`.
pub fn webhook_signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|e| unreachable!("HMAC key: {e}"));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_urls_are_checked() {
        assert!(EmailAddress::try_from("ann@example.com".to_string()).is_ok());
        assert!(EmailAddress::try_from("not an address".to_string()).is_err());
        assert!(EmailAddress::try_from("a\u{0}@example.com".to_string()).is_err());
        assert!(HttpsUrl::try_from("https://hooks.example/x".to_string()).is_ok());
        assert!(HttpsUrl::try_from("ftp://hooks.example/x".to_string()).is_err());
        assert!(HttpsUrl::try_from("https://u:p@hooks.example/x".to_string()).is_err());
    }

    #[test]
    fn a_webhook_keeps_its_secret_until_its_url_changes_or_it_rotates() {
        let first = PreferencesInput {
            webhook: Some(WebhookInput {
                url: HttpsUrl::try_from("https://a.example/h".to_string()).unwrap(),
                enabled: true,
                rotate_secret: false,
                secret_id: None,
            }),
            ..Default::default()
        };
        let (stored, fresh) = first.clone().resolve(&Preferences::default());
        assert!(fresh);
        let (again, fresh) = first.clone().resolve(&stored);
        assert!(!fresh);
        assert_eq!(again.webhook, stored.webhook);
        let mut rotate = first;
        if let Some(w) = rotate.webhook.as_mut() {
            w.rotate_secret = true;
        }
        let (rotated, fresh) = rotate.resolve(&stored);
        assert!(fresh);
        assert_ne!(
            rotated.webhook.unwrap().secret_id,
            stored.webhook.unwrap().secret_id
        );
    }

    /// The example of the Standard Webhooks specification.
    #[test]
    fn signatures_follow_standard_webhooks() {
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let sig = webhook_signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn the_same_key_makes_the_same_secret_and_another_id_another() {
        let key = WebhookKey::new(&"k".repeat(32));
        let id = Uuid::new_v4();
        assert_eq!(key.secret("ann", id), key.secret("ann", id));
        assert_ne!(key.secret("ann", id), key.secret("bob", id));
        assert_ne!(key.secret("ann", id), key.secret("ann", Uuid::new_v4()));
        assert!(key.secret("ann", id).starts_with("whsec_"));
        assert!(!format!("{key:?}").contains("kkkk"));
    }
}
