-- A recurring task knows when its series started (the rule's DTSTART, which
-- COUNT counts from) and the due time its series produces next, so that
-- every representation can show it without evaluating the rule on read.
ALTER TABLE tasks
    ADD COLUMN series_start    timestamptz,
    ADD COLUMN next_occurrence timestamptz;

-- Existing series start where todo-recurring recorded them, else at the
-- task's own due time. todo-api computes their next_occurrence when it
-- starts (it needs the rule engine).
UPDATE tasks t
   SET series_start = coalesce(
           (SELECT s.dtstart FROM recurring_series s WHERE s.series_id = t.series_id),
           t.due_at)
 WHERE t.recurrence IS NOT NULL;
