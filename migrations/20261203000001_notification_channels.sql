-- todo-api's record of each user's reminder channels (PUT /me/notifications).
-- No secret is stored: a webhook's signing secret is made again from the
-- server's key and `secret_id`.
CREATE TABLE notification_preferences (
    user_id     text PRIMARY KEY,
    preferences jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- todo-notifier's own copy, kept from `user.notifications.updated` events
-- (services talk only through events).
CREATE TABLE notifier_channels (
    user_id     text PRIMARY KEY,
    preferences jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The zone a reminder's due time is shown in (the task's recurrence zone;
-- UTC for a task without one).
ALTER TABLE reminders ADD COLUMN time_zone text NOT NULL DEFAULT 'UTC';

-- One row per (firing, channel, target), written in the transaction that
-- fires the reminder: delivered after that commit, at least once, with the
-- same delivery id on every attempt. While `pending`, `attempt_at` is when
-- the next attempt may start (a lease while one runs).
CREATE TABLE reminder_deliveries (
    delivery_id      uuid        NOT NULL,
    channel          text        NOT NULL CHECK (channel IN ('email', 'webhook', 'webpush')),
    -- The address, URL or push endpoint: one user may have several devices.
    target           text        NOT NULL,
    reminder_id      uuid        NOT NULL,
    user_id          text        NOT NULL,
    -- The channel's settings at firing time and what the reminder says.
    settings         jsonb       NOT NULL,
    reminder         jsonb       NOT NULL,
    state            text        NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    attempt_at       timestamptz NOT NULL,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    first_attempt_at timestamptz,
    done_at          timestamptz,
    PRIMARY KEY (delivery_id, channel, target)
);
CREATE INDEX reminder_deliveries_due_idx ON reminder_deliveries (channel, attempt_at)
    WHERE state = 'pending';
