-- A reminder cancelled because its task was deleted is never wanted again
-- (a deleted task never comes back, and its earlier events are
-- deduplicated), so it goes REMINDER_RETENTION_DAYS after the deletion
-- rather than after its own time, which may be months ahead. Reminders
-- cancelled before this migration keep the old rule.
ALTER TABLE reminders ADD COLUMN task_deleted boolean NOT NULL DEFAULT false;
CREATE INDEX reminders_deleted_task_idx ON reminders (updated_at) WHERE task_deleted;
