-- Champion/challenger and jobs over HTTP.
--
-- `champion`: the alias holder scored on the job's held-out rows; `promotion`: the registry's
-- decision for the version the job registered. Jobs asked for over HTTP carry what they train
-- on (`dataset`, a data.ready payload) and how (`plan`), so any trainer instance can run them;
-- data.ready jobs record the same. `datasets` keeps every data.ready the trainer has seen, so
-- a job can name a dataset.
ALTER TABLE training_jobs
    ADD COLUMN champion         JSONB,
    ADD COLUMN promotion        JSONB,
    ADD COLUMN source           TEXT NOT NULL DEFAULT 'data.ready',
    ADD COLUMN plan             JSONB,
    ADD COLUMN dataset          JSONB,
    ADD COLUMN phase            TEXT,
    ADD COLUMN client_token     TEXT UNIQUE,
    ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN started_at       TIMESTAMPTZ,
    ADD COLUMN finished_at      TIMESTAMPTZ;

CREATE TABLE datasets (
    dataset_id UUID PRIMARY KEY,
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    purpose    TEXT NOT NULL,
    event      JSONB NOT NULL,
    seen_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX datasets_by_name ON datasets (name, version DESC);

ALTER TABLE training_jobs DROP CONSTRAINT training_jobs_status_check;
ALTER TABLE training_jobs ADD CONSTRAINT training_jobs_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled'));
