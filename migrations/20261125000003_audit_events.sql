-- todo-audit's event store: every event once, with its whole envelope,
-- append-only.
CREATE TABLE audit_events (
    event_id     uuid PRIMARY KEY,
    user_id      text        NOT NULL,
    sequence     bigint      NOT NULL,
    event_type   text        NOT NULL,
    -- The task the event is about (the subject of task events, `task_id` of
    -- reminder events).
    task_id      uuid,
    time         timestamptz NOT NULL,
    envelope     jsonb       NOT NULL,
    -- Where it was read from.
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    kafka_offset bigint      NOT NULL,
    -- When the row was written (clock time, not the transaction's start).
    recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- A user's log, in order (incremental sync). Unique: two different events
-- claiming one user's sequence number is corruption, refused loudly.
CREATE UNIQUE INDEX audit_events_user_sequence_idx ON audit_events (user_id, sequence);
CREATE INDEX audit_events_task_idx ON audit_events (task_id, sequence) WHERE task_id IS NOT NULL;

CREATE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only (% refused)', TG_OP;
END
$$;

CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
