//! `todo-api migrate` computes `next_occurrence` for recurring tasks that
//! were stored before the column existed, and leaves every other task and
//! any task changed in the meantime alone.

use todo_contract::domain::{TaskSpec, UserId};
use todo_contract::envelope::Origin;
use todo_store::tasks;
use todo_store::writes::{self, Actor};
use todo_testing::{self as testing, TestDatabase};

/// A task's writable fields: a bare task with `due_at` and `recurrence`
/// from `body`.
fn spec(body: serde_json::Value) -> TaskSpec {
    let mut task: todo_contract::domain::Task = serde_json::from_value(serde_json::json!({
        "id": uuid::Uuid::nil(), "title": "t", "description": null, "priority": "medium",
        "tags": [], "completed": false, "completed_at": null, "due_at": null,
        "recurrence": null, "reminders": [], "series_id": null, "version": 1,
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
    }))
    .expect("task");
    if let Some(due) = body.get("due_at") {
        task.due_at = serde_json::from_value(due.clone()).expect("due");
    }
    if let Some(rec) = body.get("recurrence") {
        task.recurrence = serde_json::from_value(rec.clone()).expect("recurrence");
    }
    writes::spec_of(&task).expect("spec")
}

#[tokio::test]
async fn recurring_tasks_stored_without_a_next_occurrence_get_theirs() {
    testing::init_logging();
    let db = TestDatabase::create().await;
    let user = UserId::try_from("ann".to_owned()).expect("user");
    let actor = Actor {
        user: &user,
        correlation_id: "c",
        causation_id: None,
        source: "test",
        origin: Origin::none(),
    };
    let mut conn = db.pool.acquire().await.expect("connection");
    let weekly = serde_json::json!({"due_at": "2030-01-07T08:00:00Z",
        "recurrence": {"rule": "FREQ=WEEKLY", "timezone": "Europe/Berlin", "mode": "on_completion"}});
    let (recurring, _) = writes::create(&mut conn, &actor, spec(weekly), None)
        .await
        .expect("create");
    let (plain, _) = writes::create(&mut conn, &actor, spec(serde_json::json!({})), None)
        .await
        .expect("create");
    let ended = serde_json::json!({"due_at": "2030-01-07T08:00:00Z",
        "recurrence": {"rule": "FREQ=WEEKLY;COUNT=1", "timezone": "Europe/Berlin", "mode": "on_completion"}});
    let (single, _) = writes::create(&mut conn, &actor, spec(ended), None)
        .await
        .expect("create");
    let expected = recurring.next_occurrence.expect("computed on create");
    assert_eq!(expected.to_rfc3339(), "2030-01-14T08:00:00+00:00");
    assert_eq!(plain.next_occurrence, None);
    assert_eq!(single.next_occurrence, None, "COUNT=1: nothing follows");
    // As a database from before the column holds them.
    sqlx::query("UPDATE tasks SET next_occurrence = NULL")
        .execute(&db.pool)
        .await
        .expect("clear");

    assert_eq!(
        tasks::fill_next_occurrences(&db.pool).await.expect("fill"),
        1
    );
    let found = tasks::find(&db.pool, &user, recurring.id)
        .await
        .expect("find")
        .expect("task");
    assert_eq!(found.next_occurrence, Some(expected));
    assert_eq!(
        found.version, recurring.version,
        "no change, no new version"
    );
    assert_eq!(
        tasks::fill_next_occurrences(&db.pool).await.expect("fill"),
        0,
        "a second run finds nothing to do"
    );
}
