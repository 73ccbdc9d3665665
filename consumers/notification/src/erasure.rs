//! What todo-notifier forgets of an erased user: their reminders, the
//! deliveries of those reminders, and their channels. On `user.erased`, and
//! when a clock or a channel worker meets the user before that event came.

use sqlx::{PgConnection, PgPool};
use todo_store::writes;

/// Deletes every row this service keeps of `user`.
pub async fn forget(conn: &mut PgConnection, user: &str) -> Result<(), sqlx::Error> {
    let (reminders, deliveries, channels): (i64, i64, i64) = sqlx::query_as(
        "WITH r AS (DELETE FROM reminders WHERE user_id = $1 RETURNING 1),
              d AS (DELETE FROM reminder_deliveries WHERE user_id = $1 RETURNING 1),
              c AS (DELETE FROM notifier_channels WHERE user_id = $1 RETURNING 1)
         SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM d), (SELECT count(*) FROM c)",
    )
    .bind(user)
    .fetch_one(conn)
    .await?;
    tracing::info!(
        reminders,
        deliveries,
        channels,
        "forgot an erased user's reminders"
    );
    Ok(())
}

/// Takes `user`'s sequence row in `tx`, as every writer of their events
/// does first. False if the user has been erased meanwhile: then `tx` is
/// spoiled, and what is kept of them is forgotten on another connection,
/// so that this work (and the rest of a round) goes no further.
pub async fn lock_user(tx: &mut PgConnection, pool: &PgPool, user: &str) -> anyhow::Result<bool> {
    if writes::lock_unless_erased(tx, user).await? {
        return Ok(true);
    }
    forget(&mut *pool.acquire().await?, user).await?;
    Ok(false)
}
