-- GET /stats: how many of the user's live tasks are overdue, and how many
-- were created and completed in the range. Each task's newest task.* event
-- is its state now (a deleted task's is task.deleted).
-- $1 the user, $2 and $3 the range of creation times counted.
WITH latest AS (
   SELECT DISTINCT ON (task_id) event_type, envelope->'data'->'task' AS task
     FROM audit_events
    WHERE user_id = $1 AND task_id IS NOT NULL AND event_type LIKE 'task.%'
    ORDER BY task_id, sequence DESC
), live AS (
   SELECT (task->>'completed')::boolean AS completed,
          (task->>'due_at')::timestamptz AS due_at,
          (task->>'created_at')::timestamptz AS created_at
     FROM latest WHERE event_type <> 'task.deleted'
)
SELECT count(*) FILTER (WHERE NOT completed AND due_at < now()),
       count(*) FILTER (WHERE created_at >= $2 AND created_at < $3),
       count(*) FILTER (WHERE completed AND created_at >= $2 AND created_at < $3)
  FROM live
