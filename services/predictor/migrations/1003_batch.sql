-- Batch scoring is long work, so each batch is a job with a status to poll (GET /v1/batch/{id}).
CREATE TABLE batch_jobs (
    id            UUID        PRIMARY KEY,
    -- The data.ready event that asked for it, if one did; unique, so a redelivered event finds
    -- its job instead of scoring the file twice.
    event_id      UUID        UNIQUE,
    -- What the caller asked for: `name@alias`, `name/3`, or NULL for the served alias.
    model         TEXT,
    -- The version the job scores with, fixed when it first starts, so a job resumed after a
    -- promotion still answers every row with one model.
    model_name    TEXT,
    model_version INTEGER,
    input_uri     TEXT        NOT NULL,
    status        TEXT        NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    rows_total    BIGINT,
    rows_done     BIGINT      NOT NULL DEFAULT 0,
    rows_rejected BIGINT      NOT NULL DEFAULT 0,
    output_uri    TEXT,
    run_id        UUID,
    error         TEXT,
    -- How many times a runner has claimed it; more than one means it was resumed.
    attempts      INTEGER     NOT NULL DEFAULT 0,
    -- A job put back after a passing failure is not claimed again before this.
    retry_at      TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at    TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ,
    -- Refreshed by the runner while it works; a `running` job whose heartbeat is older than the
    -- lease was left by a runner that died, and is claimed again.
    heartbeat_at  TIMESTAMPTZ
);
CREATE INDEX batch_jobs_claimable ON batch_jobs (created_at) WHERE status IN ('queued', 'running');
