-- Schedules and the run of each of their intervals.
CREATE TABLE schedules (
    name       TEXT        PRIMARY KEY,
    -- The ScheduleSpec as given over HTTP.
    spec       JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE schedule_runs (
    id             UUID        PRIMARY KEY,
    schedule       TEXT        NOT NULL REFERENCES schedules (name) ON DELETE CASCADE,
    interval_start TIMESTAMPTZ NOT NULL,
    interval_end   TIMESTAMPTZ NOT NULL,
    status         TEXT        NOT NULL
        CHECK (status IN ('queued', 'running', 'succeeded', 'rejected', 'failed')),
    trigger        TEXT        NOT NULL CHECK (trigger IN ('scheduled', 'catchup', 'backfill')),
    attempts       INTEGER     NOT NULL DEFAULT 0,
    -- A queued run waits until then (its retry delay).
    not_before     TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The ingest instance running it, and until when its claim holds without renewal.
    lease_owner    UUID,
    lease_until    TIMESTAMPTZ,
    error          TEXT,
    dataset_id     UUID        REFERENCES datasets (id),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at    TIMESTAMPTZ,
    -- The run key: one run per interval, however many instances plan it.
    UNIQUE (schedule, interval_start)
);
CREATE INDEX schedule_runs_ready ON schedule_runs (schedule, interval_start)
    WHERE status IN ('queued', 'running');
