-- A sweep's trials as they run: the child run each one streams to, and its cross-validated
-- result once it has finished, so a job interrupted mid-sweep resumes with the trials it
-- finished instead of training them again.
CREATE TABLE training_trials (
    job_id      UUID             NOT NULL REFERENCES training_jobs (id) ON DELETE CASCADE,
    trial       INTEGER          NOT NULL,
    run_id      UUID,
    -- petrel_ml::Trial as JSON; NULL while the trial trains.
    result      JSONB,
    cv_accuracy DOUBLE PRECISION,
    started_at  TIMESTAMPTZ      NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    PRIMARY KEY (job_id, trial)
);
