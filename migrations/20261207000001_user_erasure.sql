-- Per-user erasure. A user's sequence row doubles as the tombstone: once
-- `erased_at` is set, no transaction can take the row again (the trigger
-- below refuses with SQLSTATE TD001), and every writer of a user's events
-- takes that row first. So nothing written after an erasure can bring the
-- user back: todo-api answers 403, a consumer skips the event, a clock
-- drops the work. Only the user id stays, to remember to forget.
ALTER TABLE event_sequences ADD COLUMN erased_at timestamptz;

CREATE FUNCTION event_sequences_refuse_erased() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'user % has been erased', OLD.user_id USING ERRCODE = 'TD001';
END
$$;

-- WHEN keeps the cost off every other user's event: the function only runs
-- for a row that is already a tombstone.
CREATE TRIGGER event_sequences_refuse_erased
    BEFORE UPDATE ON event_sequences
    FOR EACH ROW WHEN (OLD.erased_at IS NOT NULL)
    EXECUTE FUNCTION event_sequences_refuse_erased();

-- The audit log stays append-only, with one exception: the rows of a user
-- who has been erased may be deleted (todo-audit does, on user.erased).
DROP TRIGGER audit_events_append_only ON audit_events;
CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

CREATE FUNCTION audit_events_delete_only_erased() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM event_sequences
                WHERE user_id = OLD.user_id AND erased_at IS NOT NULL) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only (DELETE refused: user % is not erased)', OLD.user_id;
END
$$;

CREATE TRIGGER audit_events_delete_only_erased
    BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_delete_only_erased();

-- What erasure deletes by user.
CREATE INDEX reminders_user_idx ON reminders (user_id);
CREATE INDEX reminder_deliveries_user_idx ON reminder_deliveries (user_id);
CREATE INDEX recurring_series_user_idx ON recurring_series (user_id);
CREATE INDEX outbox_dead_letters_key_idx ON outbox_dead_letters (key);

-- Consumers look up the tombstones among a batch's users.
CREATE INDEX event_sequences_erased_idx ON event_sequences (user_id) WHERE erased_at IS NOT NULL;
