-- GET /stats on todo-audit: counts per local day come from one index range
-- per user and event type (an index-only scan, whatever else the user did).
CREATE INDEX audit_events_user_type_time_idx ON audit_events (user_id, event_type, time);
