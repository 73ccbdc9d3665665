-- The events each consumer has applied. A consumer records an event's id in
-- the same transaction as the event's effect, so a redelivered event (after
-- a crash, a rebalance or a duplicate produce) is recognised and changes
-- nothing. Rows older than the topics' retention are pruned.
CREATE TABLE processed_events (
    consumer     text        NOT NULL,
    event_id     uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX processed_events_processed_at_idx ON processed_events (processed_at);
