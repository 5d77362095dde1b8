-- Tables every Petrel service has in its own schema.

-- Events a service has consumed and fully applied. A handler inserts the event id in the same
-- transaction as its effect, so a redelivered event is recognised and never applied twice.
CREATE TABLE IF NOT EXISTS processed_events (
    consumer    TEXT        NOT NULL,
    event_id    UUID        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- The transactional outbox: an event implied by a database write is inserted in the same
-- transaction as the write, and a relay publishes it to JetStream afterwards. The event id is
-- also the JetStream message id, so a relay that publishes twice is deduplicated by the stream.
CREATE TABLE IF NOT EXISTS outbox (
    id           UUID        PRIMARY KEY,
    subject      TEXT        NOT NULL,
    payload      JSONB       NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ,
    attempts     INTEGER     NOT NULL DEFAULT 0,
    last_error   TEXT
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL;
