-- Done reminders and deliveries are deleted after REMINDER_RETENTION_DAYS;
-- these find them without reading the rows still in use.
CREATE INDEX reminders_done_idx ON reminders ((GREATEST(updated_at, remind_at)))
    WHERE state IN ('sent', 'failed', 'cancelled');
CREATE INDEX reminder_deliveries_done_idx ON reminder_deliveries (done_at)
    WHERE state IN ('sent', 'failed');

-- Instance records of a series that ended are deleted after
-- RECURRING_RETENTION_DAYS (the series row stays: it tells a late
-- completion of one of its tasks that the series is over).
CREATE INDEX recurring_series_ended_idx ON recurring_series (updated_at) WHERE NOT active;
