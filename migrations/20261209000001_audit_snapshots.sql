-- Snapshots of the task state the audit log leads to (`todo-audit
-- snapshot`), so that a replay folds only the events after one. A snapshot
-- covers, per user, every event up to a sequence (the longest run without
-- a gap at the time it was taken); only the latest is kept.
CREATE TABLE audit_snapshots (
    snapshot_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    taken_at    timestamptz NOT NULL DEFAULT now(),
    -- Task events folded into it, over all snapshots it builds on.
    events      bigint      NOT NULL DEFAULT 0,
    -- Set once every task is written: only a complete one is replayed from.
    complete    boolean     NOT NULL DEFAULT false
);

CREATE TABLE audit_snapshot_users (
    snapshot_id bigint NOT NULL REFERENCES audit_snapshots ON DELETE CASCADE,
    user_id     text   NOT NULL,
    sequence    bigint NOT NULL,
    PRIMARY KEY (snapshot_id, user_id)
);

CREATE TABLE audit_snapshot_tasks (
    snapshot_id bigint  NOT NULL REFERENCES audit_snapshots ON DELETE CASCADE,
    task_id     uuid    NOT NULL,
    user_id     text    NOT NULL,
    -- The task after the covered events; null once deleted.
    state       jsonb,
    deleted     boolean NOT NULL,
    PRIMARY KEY (snapshot_id, task_id)
);
-- An erasure deletes a user's rows.
CREATE INDEX audit_snapshot_tasks_user_idx ON audit_snapshot_tasks (user_id);
CREATE INDEX audit_snapshot_users_user_idx ON audit_snapshot_users (user_id);
