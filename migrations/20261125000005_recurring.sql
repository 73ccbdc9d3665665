-- todo-recurring's own state, built from task events.

-- One row per recurring series: its rule from its first due time (DTSTART),
-- and the latest instance, which the next one copies.
CREATE TABLE recurring_series (
    series_id  uuid PRIMARY KEY,
    user_id    text        NOT NULL,
    -- {rule, timezone, mode}, as on the task.
    recurrence jsonb       NOT NULL,
    mode       text        NOT NULL CHECK (mode IN ('on_completion', 'schedule')),
    dtstart    timestamptz NOT NULL,
    template   jsonb       NOT NULL,
    -- False once the rule has no more occurrences or the recurrence was removed.
    active     boolean     NOT NULL DEFAULT true,
    -- Schedule mode: when the next instance is due to be created.
    next_at    timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX recurring_series_due_idx ON recurring_series (next_at)
    WHERE active AND mode = 'schedule';

-- One instance per occurrence, whatever is redelivered and however many
-- replicas run: the primary key is the guarantee.
CREATE TABLE recurring_instances (
    series_id     uuid        NOT NULL,
    occurrence_at timestamptz NOT NULL,
    task_id       uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (series_id, occurrence_at)
);
