//! Old processed-event records go in batches: every one past the retention,
//! none of the recent ones, none of another consumer's.

use std::time::Duration;
use todo_consumer::dedup;
use todo_testing::{self as testing, TestDatabase};

#[tokio::test]
async fn old_processed_event_records_are_pruned_in_batches_and_recent_ones_kept() {
    testing::init_logging();
    let db = TestDatabase::create().await;
    // 1,234 of "audit" from a month ago, 10 of its own from now, 10 of
    // another consumer's from a month ago.
    for (consumer, n, age_days) in [("audit", 1234, 30), ("audit", 10, 0), ("other", 10, 30)] {
        sqlx::query(
            "INSERT INTO processed_events (consumer, event_id, processed_at)
             SELECT $1, gen_random_uuid(), now() - make_interval(days => $3)
               FROM generate_series(1, $2)",
        )
        .bind(consumer)
        .bind(n)
        .bind(age_days)
        .execute(&db.pool)
        .await
        .expect("records");
    }
    let two_weeks = Duration::from_secs(14 * 24 * 3600);
    // Batches of 100: twelve full ones, one of 34, and the loop ends.
    let pruned = dedup::prune(&db.pool, "audit", two_weeks, 100)
        .await
        .expect("prune");
    assert_eq!(pruned, 1234);
    let left: Vec<(String, i64)> = sqlx::query_as(
        "SELECT consumer, count(*) FROM processed_events GROUP BY consumer ORDER BY consumer",
    )
    .fetch_all(&db.pool)
    .await
    .expect("left");
    assert_eq!(left, [("audit".to_owned(), 10), ("other".to_owned(), 10)]);
    // An exact multiple of the batch ends too.
    assert_eq!(
        dedup::prune(&db.pool, "other", two_weeks, 5)
            .await
            .expect("prune"),
        10
    );
    assert_eq!(
        dedup::prune(&db.pool, "audit", two_weeks, 100)
            .await
            .expect("prune"),
        0
    );
}
