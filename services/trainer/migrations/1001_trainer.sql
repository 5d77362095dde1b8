-- Training is long work, so each training is a job with a status to poll.
CREATE TABLE training_jobs (
    id            UUID        PRIMARY KEY,
    -- The data.ready event that asked for it; unique, so a redelivered event finds its job.
    event_id      UUID        UNIQUE,
    dataset_id    UUID        NOT NULL,
    dataset_name  TEXT        NOT NULL,
    dataset_uri   TEXT        NOT NULL,
    model_name    TEXT        NOT NULL,
    status        TEXT        NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    epoch         INTEGER     NOT NULL DEFAULT 0,
    epochs        INTEGER     NOT NULL,
    train_loss    DOUBLE PRECISION,
    error         TEXT,
    run_id        UUID,
    model_version INTEGER,
    metrics       JSONB,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX training_jobs_created ON training_jobs (created_at DESC);
