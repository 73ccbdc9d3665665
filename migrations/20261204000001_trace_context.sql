-- The W3C trace context of the change that wrote each row, so that work
-- done later on its behalf continues its trace: the relay's publish of an
-- outbox row, a reminder's firing and its deliveries, a scheduled series'
-- next instance. NULL when the change was not traced.
ALTER TABLE outbox ADD COLUMN traceparent text;
ALTER TABLE reminders ADD COLUMN traceparent text;
ALTER TABLE reminder_deliveries ADD COLUMN traceparent text;
ALTER TABLE recurring_series ADD COLUMN traceparent text;
