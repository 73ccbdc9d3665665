-- The same commit as create_task_one_statement.sql without BEGIN and
-- COMMIT: the statement alone, atomic on its own, as todo-api sends a
-- create without an Idempotency-Key since 2026-12-06. The ceiling for that
-- shape.
\set u random(1, :users)
WITH task AS (
    INSERT INTO tasks (id, user_id, title, description, priority, tags, completed,
                       reminders, version, created_at, updated_at)
         VALUES (gen_random_uuid(), 'user-' || :u, 'Buy milk and bread on the way home',
                 NULL, 'high', '{home,errand}', false, '[]', 1, now(), now())),
seq AS (
    INSERT INTO event_sequences (user_id, last_sequence) VALUES ('user-' || :u, 1)
    ON CONFLICT (user_id) DO UPDATE SET last_sequence = event_sequences.last_sequence + 1
    RETURNING last_sequence)
INSERT INTO outbox (event_id, topic, key, event_type, payload)
SELECT gen_random_uuid(), 'task-events', 'user-' || :u, 'task.created',
       convert_to(repeat('x', 450), 'UTF8') || convert_to(seq.last_sequence::text, 'UTF8')
       || convert_to(repeat('x', 450), 'UTF8')
  FROM seq
RETURNING (SELECT last_sequence FROM seq);
