-- The datasets a run read (MLflow's `runs/log-inputs`): each dataset by name and digest, with
-- its source, schema and profile, and the input's tags (`mlflow.data.context`: training,
-- evaluation...). Logging the same dataset to the same run again changes nothing.
CREATE TABLE run_inputs (
    run_id      UUID        NOT NULL REFERENCES runs (id),
    name        TEXT        NOT NULL,
    digest      TEXT        NOT NULL,
    source_type TEXT        NOT NULL,
    source      TEXT        NOT NULL,
    schema      TEXT,
    profile     TEXT,
    tags        JSONB       NOT NULL DEFAULT '{}',
    logged_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, name, digest)
);
