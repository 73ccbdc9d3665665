-- todo-notifier's reminder schedule, built from task events (it does not
-- read the tasks table). One row per reminder of a task; its id is derived
-- from the task and the reminder's definition, so the same reminder keeps
-- its id when its time moves.
CREATE TABLE reminders (
    reminder_id uuid PRIMARY KEY,
    task_id     uuid        NOT NULL,
    user_id     text        NOT NULL,
    spec        jsonb       NOT NULL,
    title       text        NOT NULL,
    due_at      timestamptz,
    -- When it is meant to fire.
    remind_at   timestamptz NOT NULL,
    state       text        NOT NULL CHECK (state IN ('scheduled', 'sent', 'cancelled', 'failed')),
    -- Delivery attempts so far, and when the next is due (remind_at, or
    -- later after a failed attempt).
    attempts    integer     NOT NULL DEFAULT 0,
    attempt_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reminders_task_idx ON reminders (task_id);
CREATE INDEX reminders_due_idx ON reminders (attempt_at) WHERE state = 'scheduled';
