-- The outbox is a queue: every row is deleted soon after it is written. Let
-- autovacuum clean it after a fixed number of dead rows rather than a
-- fraction of a table that is nearly always empty, and without throttling.
-- (The relay also vacuums it itself, for servers with autovacuum off.)
ALTER TABLE outbox SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);
