//! `GET/PUT /me/notifications`: the caller's reminder channels. A change is
//! stored with its `user.notifications.updated` event in one transaction,
//! so todo-notifier's copy follows it; the webhook's signing secret is in
//! the `PUT` answer that made it, and nowhere else.

use crate::error::ApiError;
use crate::extract::{CorrelationId, JsonBody};
use crate::origin::ClientOrigin;
use crate::state::AppState;
use aide::axum::routing::get_with;
use aide::axum::ApiRouter;
use axum::extract::State;
use axum::Json;
use schemars::JsonSchema;
use serde::Serialize;
use sqlx::types::Json as Jsonb;
use todo_contract::domain::UserId;
use todo_contract::envelope::{EventDraft, EventType};
use todo_platform::http::AuthUser;
use todo_platform::preferences::{Preferences, PreferencesInput, WebhookKey};

pub const SOURCE: &str = "todo-api";

/// What reminders may use on this server, from the environment.
#[derive(Debug, Clone, Default)]
pub struct ChannelSettings {
    /// `WEBHOOK_SECRET_KEY`: without it, webhooks are refused.
    pub webhook_key: Option<WebhookKey>,
    /// `VAPID_PUBLIC_KEY`: what a page subscribes to push with.
    pub vapid_public_key: Option<String>,
}

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route(
            "/me/notifications",
            get_with(read, |op| {
                op.id("getNotificationChannels")
                    .summary("The caller's reminder channels")
                    .tag("notifications")
                    .response_with::<200, Json<Preferences>, _>(|r| {
                        r.description("E-mail, webhook and Web Push, as stored (no secret)")
                    })
            })
            .put_with(replace, |op| {
                let op = op
                    .id("setNotificationChannels")
                    .summary("Set the caller's reminder channels")
                    .description(
                        "Replaces them all; publishes user.notifications.updated when they \
                         changed. A new webhook (or rotate_secret) gets a signing secret, \
                         answered once as webhook.secret (whsec_...).",
                    )
                    .tag("notifications")
                    .response_with::<200, Json<Preferences>, _>(|r| {
                        r.description("The channels as stored, with webhook.secret when it is new")
                    });
                crate::docs::write(op)
            }),
        )
        .api_route(
            "/push/vapid-public-key",
            get_with(vapid_public_key, |op| {
                let op = op
                    .id("getVapidPublicKey")
                    .summary("The server's VAPID public key")
                    .description("What a page subscribes to Web Push with (PushManager.subscribe).")
                    .tag("notifications")
                    .response_with::<200, Json<VapidKey>, _>(|r| r.description("The key"));
                todo_platform::openapi::problem::<404>(op, "Web Push is not set up on this server")
            }),
        )
}

#[derive(Serialize, JsonSchema)]
struct VapidKey {
    /// The uncompressed P-256 public key, base64url.
    public_key: String,
}

/// The channels as answered: the stored ones (what `GET` answers can be
/// sent back with `PUT`), and on the `PUT` that made a new webhook secret,
/// that secret (`webhook.secret`).
fn answer(preferences: Preferences, secret: Option<String>) -> Json<serde_json::Value> {
    let mut value = serde_json::to_value(&preferences).unwrap_or_default();
    if let (Some(secret), Some(webhook)) = (secret, value.get_mut("webhook")) {
        if let Some(webhook) = webhook.as_object_mut() {
            webhook.insert("secret".into(), serde_json::Value::String(secret));
        }
    }
    Json(value)
}

async fn stored(
    conn: &mut sqlx::PgConnection,
    user: &UserId,
    lock: bool,
) -> Result<Preferences, ApiError> {
    let sql = if lock {
        "SELECT preferences FROM notification_preferences WHERE user_id = $1 FOR UPDATE"
    } else {
        "SELECT preferences FROM notification_preferences WHERE user_id = $1"
    };
    let row: Option<Jsonb<Preferences>> = sqlx::query_scalar(sql)
        .bind(user.as_str())
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|j| j.0).unwrap_or_default())
}

async fn read(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut conn = todo_platform::db::read(&state.pool, || state.pool.acquire()).await?;
    let preferences = stored(&mut conn, &user, false).await?;
    Ok(answer(preferences, None))
}

async fn replace(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    correlation: CorrelationId,
    ClientOrigin(origin): ClientOrigin,
    body: JsonBody<PreferencesInput>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.writes.check(&user)?;
    let input = body.value;
    input
        .check()
        .map_err(|(field, message)| ApiError::field(field, message))?;
    let key = match (&input.webhook, &state.channels.webhook_key) {
        (Some(_), None) => {
            return Err(ApiError::field(
                "webhook",
                "webhooks are not enabled on this server (WEBHOOK_SECRET_KEY is not set)",
            ))
        }
        (_, key) => key.clone(),
    };
    let mut tx = todo_platform::db::begin(&state.pool).await?;
    // The user's sequence row first, as every writer of their events takes it.
    todo_store::writes::lock_sequence(&mut tx, user.as_str()).await?;
    let before = stored(&mut tx, &user, true).await?;
    let (preferences, fresh_secret) = input.resolve(&before);
    if preferences != before {
        sqlx::query(
            "INSERT INTO notification_preferences (user_id, preferences) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET preferences = EXCLUDED.preferences,
                                                 updated_at = now()",
        )
        .bind(user.as_str())
        .bind(Jsonb(&preferences))
        .execute(&mut *tx)
        .await?;
        todo_store::writes::append(
            &mut tx,
            EventDraft {
                event_type: EventType::UserNotificationsUpdated,
                source: SOURCE,
                subject: user.as_str().to_owned(),
                userid: user.as_str().to_owned(),
                correlationid: correlation.0.clone(),
                causationid: None,
                origin,
                data: &preferences,
            },
        )
        .await
        .map_err(|e| match e {
            todo_store::writes::OutboxError::Db(db) => ApiError::from(db),
            other => ApiError::Internal(other.to_string()),
        })?;
        tx.commit().await?;
        state.signal.committed();
    } else {
        tx.rollback().await?;
    }
    let secret = match (&preferences.webhook, key) {
        (Some(w), Some(key)) if fresh_secret => Some(key.secret(user.as_str(), w.secret_id)),
        _ => None,
    };
    Ok(answer(preferences, secret))
}

async fn vapid_public_key(State(state): State<AppState>) -> Result<Json<VapidKey>, ApiError> {
    match &state.channels.vapid_public_key {
        Some(key) => Ok(Json(VapidKey {
            public_key: key.clone(),
        })),
        None => Err(ApiError::NotFound),
    }
}
