-- The audit log by month: one partition of `audit_events` per calendar
-- month (UTC) of the event's `time`, so that AUDIT_RETENTION_MONTHS drops
-- whole months (a DROP TABLE, no row-by-row DELETE) and everything inside
-- the window stays append-only. Converts an existing log in place: its rows
-- are copied into their months' partitions within this migration's
-- transaction.
--
-- A unique index of a partitioned table must contain the partition key, so
-- the primary key becomes (event_id, time): a redelivered event carries the
-- time it was published with, so it still meets its first copy. A user's
-- (user_id, sequence) stays unique within each month's partition (its own
-- index, created with the partition); two events claiming one sequence in
-- different months would need a producer to give a later sequence an
-- earlier month, which the one transaction that assigns both does not.

ALTER TABLE audit_events RENAME TO audit_events_unpartitioned;
ALTER INDEX audit_events_pkey RENAME TO audit_events_unpartitioned_pkey;
DROP INDEX audit_events_user_sequence_idx;
DROP INDEX audit_events_task_idx;
DROP INDEX audit_events_user_type_time_idx;

CREATE TABLE audit_events (
    event_id     uuid        NOT NULL,
    user_id      text        NOT NULL,
    sequence     bigint      NOT NULL,
    event_type   text        NOT NULL,
    task_id      uuid,
    time         timestamptz NOT NULL,
    envelope     jsonb       NOT NULL,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    kafka_offset bigint      NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (event_id, time)
) PARTITION BY RANGE (time);

CREATE INDEX audit_events_task_idx ON audit_events (task_id, sequence) WHERE task_id IS NOT NULL;
CREATE INDEX audit_events_user_type_time_idx ON audit_events (user_id, event_type, time);

-- Append-only, partition by partition too: row triggers on a partitioned
-- table are cloned onto every partition, so an UPDATE or DELETE aimed at one
-- month directly is refused as well. TRUNCATE is a statement trigger, which
-- is not cloned: audit_events_create_partition adds it to each month.
CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_delete_only_erased
    BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_delete_only_erased();

-- The partition for the month holding `at`, created if missing; true when
-- it was created. SECURITY DEFINER: todo-audit creates next month's
-- partition itself, with the rights of the role that ran the migrations.
CREATE FUNCTION audit_events_create_partition(at timestamptz) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    first timestamp := date_trunc('month', at AT TIME ZONE 'UTC');
    name  text      := 'audit_events_' || to_char(first, '"y"YYYY"m"MM');
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    -- Two replicas asking for one month at once: the second finds it made.
    PERFORM pg_advisory_xact_lock(hashtext('audit_events partitions'));
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'CREATE TABLE %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)',
        name, first::text || '+00', (first + interval '1 month')::text || '+00');
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (user_id, sequence)',
        name || '_user_sequence_idx', name);
    EXECUTE format(
        'CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON %I
             FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()', name);
    RETURN true;
END
$$;

-- Drops every month that ended before `keep_from` (AUDIT_RETENTION_MONTHS'
-- horizon) and returns their names. Dropping a partition locks the whole
-- log for a moment; a lock not granted within 5 s gives up (the next round
-- tries again) rather than queue every reader behind it.
CREATE FUNCTION audit_events_drop_partitions_before(keep_from timestamptz) RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    part text;
BEGIN
    SET LOCAL lock_timeout = '5s';
    FOR part IN
        SELECT c.relname::text
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'audit_events'::regclass
           AND c.relname ~ '^audit_events_y[0-9]{4}m[0-9]{2}$'
           AND (to_date(substr(c.relname, 15, 4) || substr(c.relname, 20, 2), 'YYYYMM')
                    + interval '1 month') AT TIME ZONE 'UTC' <= keep_from
         ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I', part);
        RETURN NEXT part;
    END LOOP;
END
$$;

-- The months the existing log spans, this month and the next, then the
-- rows themselves.
SELECT audit_events_create_partition(m)
  FROM (SELECT DISTINCT date_trunc('month', time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS m
          FROM audit_events_unpartitioned
        UNION SELECT now()
        UNION SELECT now() + interval '1 month') months;

INSERT INTO audit_events (event_id, user_id, sequence, event_type, task_id, time, envelope,
                          topic, partition, kafka_offset, recorded_at)
SELECT event_id, user_id, sequence, event_type, task_id, time, envelope,
       topic, partition, kafka_offset, recorded_at
  FROM audit_events_unpartitioned;

DROP TABLE audit_events_unpartitioned;
