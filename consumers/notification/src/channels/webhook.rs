//! Webhooks, signed as the Standard Webhooks specification says:
//! `webhook-id` (the delivery id: the same on every attempt, so a receiver
//! recognises a repeat), `webhook-timestamp`, and `webhook-signature`
//! (`v1,` + HMAC-SHA256 of `id.timestamp.body` with the user's secret).

use super::net::{self, Policy};
use super::{Attempt, Channel, ChannelKind, Failure};
use std::time::Duration;
use todo_platform::preferences::{webhook_signature, WebhookChannel, WebhookKey};

pub struct Webhook {
    client: reqwest::Client,
    policy: Policy,
    /// `WEBHOOK_SECRET_KEY`; without it, webhook deliveries fail.
    key: Option<WebhookKey>,
    app_url: String,
}

impl Webhook {
    pub fn new(
        policy: Policy,
        key: Option<WebhookKey>,
        timeout: Duration,
        app_url: String,
    ) -> reqwest::Result<Self> {
        Ok(Self {
            client: policy.client(timeout)?,
            policy,
            key,
            app_url,
        })
    }
}

#[async_trait::async_trait]
impl Channel for Webhook {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Webhook
    }

    async fn send(&self, attempt: &Attempt<'_>) -> Result<(), Failure> {
        let hook: WebhookChannel = attempt.settings("webhook settings")?;
        let Some(key) = &self.key else {
            return Err(Failure::Permanent(
                "webhooks are not configured (WEBHOOK_SECRET_KEY)".into(),
            ));
        };
        let url = hook.url.parse().map_err(Failure::Permanent)?;
        self.policy.check(&url).map_err(Failure::Permanent)?;
        let m = attempt.message;
        let now = chrono::Utc::now();
        let body = serde_json::to_vec(&serde_json::json!({
            "type": "reminder.due",
            "timestamp": now,
            "data": {
                "delivery_id": attempt.delivery_id,
                "reminder_id": m.reminder_id,
                "task_id": m.task_id,
                "title": m.title,
                "due_at": m.due_at,
                "due_local": m.due_local(),
                "time_zone": m.time_zone,
                "remind_at": m.remind_at,
                "link": m.link(&self.app_url),
                "attempt": attempt.attempt,
            }
        }))
        .map_err(|e| Failure::Permanent(e.to_string()))?;
        let id = attempt.delivery_id.to_string();
        let signature = webhook_signature(
            &key.signing_key(attempt.user_id, hook.secret_id),
            &id,
            now.timestamp(),
            &body,
        );
        let result = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", now.timestamp().to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        net::outcome(result)
    }
}
