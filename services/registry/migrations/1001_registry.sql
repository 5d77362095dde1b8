CREATE TABLE experiments (
    id         UUID        PRIMARY KEY,
    name       TEXT        NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE runs (
    id            UUID        PRIMARY KEY,
    experiment_id UUID        NOT NULL REFERENCES experiments (id),
    name          TEXT,
    status        TEXT        NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    client_token  TEXT,
    start_time    TIMESTAMPTZ NOT NULL DEFAULT now(),
    end_time      TIMESTAMPTZ,
    UNIQUE (experiment_id, client_token)
);

CREATE TABLE run_params (
    run_id UUID NOT NULL REFERENCES runs (id),
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);

CREATE TABLE run_tags (
    run_id UUID NOT NULL REFERENCES runs (id),
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);

-- Metric history: a key may be logged at many steps.
CREATE TABLE run_metrics (
    run_id    UUID             NOT NULL REFERENCES runs (id),
    key       TEXT             NOT NULL,
    value     DOUBLE PRECISION NOT NULL,
    step      BIGINT           NOT NULL DEFAULT 0,
    timestamp TIMESTAMPTZ      NOT NULL DEFAULT now()
);
CREATE INDEX run_metrics_run ON run_metrics (run_id, key, step);

CREATE TABLE registered_models (
    name        TEXT        PRIMARY KEY,
    description TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE model_versions (
    model_name   TEXT        NOT NULL REFERENCES registered_models (name),
    version      INTEGER     NOT NULL,
    run_id       UUID        NOT NULL REFERENCES runs (id),
    artifact_uri TEXT        NOT NULL,
    dataset_id   UUID,
    metrics      JSONB       NOT NULL DEFAULT '{}',
    description  TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, version),
    -- One version per run and model: registering a run twice returns the first version.
    UNIQUE (model_name, run_id)
);

CREATE TABLE model_aliases (
    model_name TEXT        NOT NULL,
    alias      TEXT        NOT NULL,
    version    INTEGER     NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, alias),
    FOREIGN KEY (model_name, version) REFERENCES model_versions (model_name, version)
);

-- Every move of an alias, for audit and rollback.
CREATE TABLE alias_history (
    id               BIGSERIAL   PRIMARY KEY,
    model_name       TEXT        NOT NULL,
    alias            TEXT        NOT NULL,
    version          INTEGER,
    previous_version INTEGER,
    reason           TEXT        NOT NULL,
    changed_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX alias_history_by_alias ON alias_history (model_name, alias, id);
