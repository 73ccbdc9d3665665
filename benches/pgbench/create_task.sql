-- What one `POST /tasks` commits, as pgbench sees it: the task, the user's
-- next event sequence and the outbox row, in one transaction. Payload size
-- matches a real task.created envelope (~900 bytes).
\set u random(1, :users)
BEGIN;
INSERT INTO tasks (id, user_id, title, description, priority, tags, completed,
                   reminders, version, created_at, updated_at)
     VALUES (gen_random_uuid(), 'user-' || :u, 'Buy milk and bread on the way home',
             NULL, 'high', '{home,errand}', false, '[]', 1, now(), now());
INSERT INTO event_sequences (user_id, last_sequence) VALUES ('user-' || :u, 1)
    ON CONFLICT (user_id) DO UPDATE SET last_sequence = event_sequences.last_sequence + 1
    RETURNING last_sequence;
INSERT INTO outbox (event_id, topic, key, event_type, payload)
     VALUES (gen_random_uuid(), 'task-events', 'user-' || :u, 'task.created',
             convert_to(repeat('x', 900), 'UTF8'));
COMMIT;
