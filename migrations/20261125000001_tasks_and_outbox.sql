-- Tasks, the per-user event sequence, the transactional outbox and
-- idempotency keys of todo-api.

CREATE TABLE tasks (
    id           uuid PRIMARY KEY,
    user_id      text        NOT NULL,
    title        text        NOT NULL,
    description  text,
    priority     text        NOT NULL CHECK (priority IN ('low', 'medium', 'high', 'urgent')),
    tags         text[]      NOT NULL DEFAULT '{}',
    completed    boolean     NOT NULL DEFAULT false,
    completed_at timestamptz,
    due_at       timestamptz,
    recurrence   jsonb,
    reminders    jsonb       NOT NULL DEFAULT '[]',
    series_id    uuid,
    version      bigint      NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);

-- Every list is one user's; the default order is newest first.
CREATE INDEX tasks_user_created_idx ON tasks (user_id, created_at DESC, id DESC);

-- One row per user: the last `sequence` given to one of their events. The
-- row lock taken by the increment serialises a user's writers, so a user's
-- outbox rows are committed in sequence order (the relay relies on that).
CREATE TABLE event_sequences (
    user_id       text PRIMARY KEY,
    last_sequence bigint NOT NULL
);

-- Events waiting for the broker. The relay publishes them in id order and
-- deletes them once the broker has acknowledged them.
CREATE TABLE outbox (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id   uuid        NOT NULL,
    topic      text        NOT NULL,
    key        text        NOT NULL,
    event_type text        NOT NULL,
    payload    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The first response to a POST carrying an Idempotency-Key.
CREATE TABLE idempotency_keys (
    user_id      text        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    status       smallint    NOT NULL,
    response     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
