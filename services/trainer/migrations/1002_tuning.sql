-- Sweeps: how many trials a job runs and how many are done, and the cross-validation of the
-- configuration it registered.
ALTER TABLE training_jobs
    ADD COLUMN trials_total INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN trials_done  INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN cv           JSONB;
