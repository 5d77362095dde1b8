-- What MLflow's REST API needs of the tracking tables (services/registry/src/mlflow). The
-- model-registry tables are untouched: MLflow's registry maps onto them as they are.

-- MLflow names experiments by short decimal ids ("0" is the Default experiment). Existing
-- experiments are numbered by creation, and new ones take the next number.
CREATE SEQUENCE experiments_mlflow_id_seq START 1;
ALTER TABLE experiments
    ADD COLUMN mlflow_id         BIGINT,
    -- NULL: `mlflow-artifacts:/<mlflow_id>`, served by the registry's artifact proxy.
    ADD COLUMN artifact_location TEXT,
    ADD COLUMN lifecycle_stage   TEXT        NOT NULL DEFAULT 'active'
        CHECK (lifecycle_stage IN ('active', 'deleted')),
    ADD COLUMN last_update_time  TIMESTAMPTZ NOT NULL DEFAULT now();
UPDATE experiments e SET mlflow_id = o.n, last_update_time = e.created_at
FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS n FROM experiments) o
WHERE e.id = o.id;
SELECT setval('experiments_mlflow_id_seq', COALESCE((SELECT MAX(mlflow_id) FROM experiments), 0) + 1, false);
ALTER TABLE experiments
    ALTER COLUMN mlflow_id SET DEFAULT nextval('experiments_mlflow_id_seq'),
    ALTER COLUMN mlflow_id SET NOT NULL,
    ADD CONSTRAINT experiments_mlflow_id_key UNIQUE (mlflow_id);
ALTER SEQUENCE experiments_mlflow_id_seq OWNED BY experiments.mlflow_id;

-- MLflow clients log to experiment "0" when none is set.
INSERT INTO experiments (id, name, mlflow_id) VALUES (gen_random_uuid(), 'Default', 0)
ON CONFLICT (name) DO UPDATE SET mlflow_id = 0;

CREATE TABLE experiment_tags (
    experiment_id UUID NOT NULL REFERENCES experiments (id),
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (experiment_id, key)
);

-- MLflow's KILLED, soft deletion, the submitting user, the artifact root and nested runs.
ALTER TABLE runs DROP CONSTRAINT runs_status_check;
ALTER TABLE runs ADD CONSTRAINT runs_status_check
    CHECK (status IN ('running', 'finished', 'failed', 'killed'));
ALTER TABLE runs
    ADD COLUMN user_id         TEXT,
    ADD COLUMN lifecycle_stage TEXT NOT NULL DEFAULT 'active'
        CHECK (lifecycle_stage IN ('active', 'deleted')),
    ADD COLUMN deleted_time    TIMESTAMPTZ,
    -- NULL: `<experiment's artifact location>/<run id, 32 hex>/artifacts`.
    ADD COLUMN artifact_uri    TEXT,
    -- From the `mlflow.parentRunId` tag, when it names a run of this registry.
    ADD COLUMN parent_run_id   UUID REFERENCES runs (id);
CREATE INDEX runs_by_experiment ON runs (experiment_id, start_time DESC, id);
CREATE INDEX runs_by_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;

-- Every file written through the artifact proxy: where it lives in the store, its size and
-- hash. `path` is relative to the proxy's root, as in `mlflow-artifacts:/<path>`.
CREATE TABLE artifact_files (
    path       TEXT        PRIMARY KEY,
    run_id     UUID        REFERENCES runs (id),
    uri        TEXT        NOT NULL,
    size_bytes BIGINT      NOT NULL,
    sha256     TEXT        NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX artifact_files_by_run ON artifact_files (run_id) WHERE run_id IS NOT NULL;
