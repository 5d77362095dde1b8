-- Retraining on alerts: each model's policy, and one row per alert that asked for a retraining
-- (keyed by the alert's event id, so a redelivered alert finds its row).
CREATE TABLE retraining_policies (
    model_name TEXT        PRIMARY KEY,
    policy     JSONB       NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE retrains (
    alert_id        UUID        PRIMARY KEY,
    model_name      TEXT        NOT NULL,
    alert_kind      TEXT        NOT NULL,
    status          TEXT        NOT NULL
        CHECK (status IN ('collecting', 'requested', 'suppressed', 'too_few_labels', 'failed')),
    reason          TEXT,
    rows            INTEGER,
    -- The training set, stored before it is ingested so a redelivery ingests the same bytes.
    csv_uri         TEXT,
    dataset_id      UUID,
    dataset_version INTEGER,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX retrains_by_model ON retrains (model_name, created_at DESC);
