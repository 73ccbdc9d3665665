-- The outbox relay's leadership: one row, held by the relay that renews it
-- before it expires. A lease (rather than a session advisory lock) lets a
-- standby take over from a leader that is frozen or cut off, whose
-- connection PostgreSQL would otherwise keep for hours.
CREATE TABLE outbox_relay_lease (
    id         smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    holder     uuid,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO outbox_relay_lease (id) VALUES (1);

-- Outbox rows the broker refused for good (too large, invalid), set aside
-- so that the relay goes on with everything after them. Sending them later
-- would put them behind their user's newer events; an operator looks at
-- them, fixes the cause, and decides.
CREATE TABLE outbox_dead_letters (
    id           bigint PRIMARY KEY,
    event_id     uuid        NOT NULL,
    topic        text        NOT NULL,
    key          text        NOT NULL,
    event_type   text        NOT NULL,
    payload      bytea       NOT NULL,
    created_at   timestamptz NOT NULL,
    error        text        NOT NULL,
    set_aside_at timestamptz NOT NULL DEFAULT now()
);
