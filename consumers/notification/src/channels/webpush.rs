//! Web Push (RFC 8030), the payload encrypted for the browser (RFC 8291,
//! aes128gcm) and the request signed with the server's VAPID key (RFC 8292)
//! by `web-push-native`, sent with the same SSRF-checked client as webhooks.

use super::net::{self, Policy};
use super::{Attempt, Channel, ChannelKind, Failure};
use base64::Engine as _;
use std::time::Duration;
use todo_platform::preferences::PushSubscription;
use web_push_native::jwt_simple::algorithms::{ECDSAP256PublicKeyLike, ES256KeyPair};
use web_push_native::{p256, Auth, WebPushBuilder};

/// `VAPID_PRIVATE_KEY` (base64url of the 32-byte P-256 scalar) and
/// `VAPID_SUBJECT` (`mailto:` or `https:` contact for push services).
pub struct Vapid {
    pub key: ES256KeyPair,
    pub subject: String,
}

impl Vapid {
    pub fn from_base64url(private: &str, subject: String) -> Result<Self, String> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(private.trim().trim_end_matches('='))
            .map_err(|_| "not base64url".to_owned())?;
        let key = ES256KeyPair::from_bytes(&bytes).map_err(|e| format!("not a P-256 key: {e}"))?;
        Ok(Self { key, subject })
    }

    pub fn generate() -> Self {
        Self {
            key: ES256KeyPair::generate(),
            subject: String::new(),
        }
    }

    pub fn private_key(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.key.to_bytes())
    }

    /// The public key a page subscribes with (`applicationServerKey`).
    pub fn public_key(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(self.key.public_key().public_key().to_bytes_uncompressed())
    }
}

pub struct WebPush {
    client: reqwest::Client,
    policy: Policy,
    vapid: Option<Vapid>,
    app_url: String,
}

impl WebPush {
    pub fn new(
        policy: Policy,
        vapid: Option<Vapid>,
        timeout: Duration,
        app_url: String,
    ) -> reqwest::Result<Self> {
        Ok(Self {
            client: policy.client(timeout)?,
            policy,
            vapid,
            app_url,
        })
    }
}

#[async_trait::async_trait]
impl Channel for WebPush {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Webpush
    }

    async fn send(&self, attempt: &Attempt<'_>) -> Result<(), Failure> {
        let Some(vapid) = &self.vapid else {
            return Err(Failure::Permanent(
                "Web Push is not configured (VAPID_PRIVATE_KEY)".into(),
            ));
        };
        let sub: PushSubscription = attempt.settings("push subscription")?;
        let (p256dh, auth) = sub.decoded_keys().map_err(Failure::Permanent)?;
        let ua_public = p256::PublicKey::from_sec1_bytes(&p256dh)
            .map_err(|_| Failure::Permanent("keys.p256dh is not a P-256 point".into()))?;
        let url = sub.endpoint.parse().map_err(Failure::Permanent)?;
        self.policy.check(&url).map_err(Failure::Permanent)?;
        let endpoint: axum::http::Uri = sub
            .endpoint
            .as_str()
            .parse()
            .map_err(|e| Failure::Permanent(format!("push endpoint: {e}")))?;
        let m = attempt.message;
        let payload = serde_json::to_vec(&serde_json::json!({
            "type": "reminder",
            "delivery_id": attempt.delivery_id,
            "reminder_id": m.reminder_id,
            "task_id": m.task_id,
            "title": m.title,
            "due_at": m.due_at,
            "due_local": m.due_local(),
            "remind_at": m.remind_at,
            "link": m.link(&self.app_url),
        }))
        .map_err(|e| Failure::Permanent(e.to_string()))?;
        let request = WebPushBuilder::new(endpoint, ua_public, Auth::from(auth))
            .with_valid_duration(Duration::from_secs(12 * 3600))
            .with_vapid(&vapid.key, &vapid.subject)
            .build(payload)
            .map_err(|e| Failure::Permanent(format!("could not encrypt the push message: {e}")))?;
        let mut outgoing = self.client.post(url);
        for (name, value) in request.headers() {
            outgoing = outgoing.header(name.as_str(), value.as_bytes());
        }
        // The delivery id as the message's topic: a push service replaces
        // an undelivered message of the same topic instead of showing two.
        let topic =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(attempt.delivery_id.as_bytes());
        let result = outgoing
            .header("Topic", topic)
            .header("Urgency", "high")
            .body(request.into_body())
            .send()
            .await;
        match result {
            // The subscription is gone (unsubscribed, expired).
            Ok(r) if matches!(r.status().as_u16(), 404 | 410) => Err(Failure::Permanent(format!(
                "the push service answered {}: the subscription has ended",
                r.status()
            ))),
            other => net::outcome(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_pair_reads_back_as_the_same_key() {
        let pair = Vapid::generate();
        let again = Vapid::from_base64url(&pair.private_key(), String::new()).unwrap();
        assert_eq!(again.public_key(), pair.public_key());
        assert_eq!(pair.public_key().len(), 87, "65 bytes, base64url");
        assert!(Vapid::from_base64url("not a key", String::new()).is_err());
    }
}
