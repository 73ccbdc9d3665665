-- Reminders are delivered after their firing has committed: `delivering`
-- is the state between `reminder.triggered` and the delivery's outcome
-- (`sent` or `failed`). While delivering, `attempt_at` is when the next
-- attempt may start (a lease: a replica that died mid-delivery leaves the
-- reminder to be delivered again once it passes).
ALTER TABLE reminders DROP CONSTRAINT reminders_state_check;
ALTER TABLE reminders ADD CONSTRAINT reminders_state_check
    CHECK (state IN ('scheduled', 'delivering', 'sent', 'cancelled', 'failed'));
DROP INDEX reminders_due_idx;
CREATE INDEX reminders_due_idx ON reminders (attempt_at) WHERE state IN ('scheduled', 'delivering');

-- The task-events partition the reminder's task is read from. A replica
-- fires only reminders of partitions it owns and has caught up on, so that
-- a completion still unread elsewhere cancels its reminder first. NULL:
-- scheduled before this column existed, fired by any replica.
ALTER TABLE reminders ADD COLUMN kafka_partition integer;
