-- Live predictions as the monitor received them; `report_id` is set when a window takes them.
CREATE TABLE observations (
    inference_id  TEXT        PRIMARY KEY,
    model_name    TEXT        NOT NULL,
    model_version INTEGER     NOT NULL,
    features      JSONB       NOT NULL,
    class         TEXT        NOT NULL,
    confidence    REAL        NOT NULL,
    predicted_at  TIMESTAMPTZ NOT NULL,
    received_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    report_id     UUID
);
CREATE INDEX observations_open ON observations (model_name, model_version, received_at) WHERE report_id IS NULL;

-- Joined ground truth; `report_id` is set when a window counts it towards accuracy.
CREATE TABLE outcomes (
    inference_id  TEXT        PRIMARY KEY,
    model_name    TEXT        NOT NULL,
    model_version INTEGER     NOT NULL,
    label         TEXT        NOT NULL,
    correct       BOOLEAN     NOT NULL,
    received_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    report_id     UUID
);
CREATE INDEX outcomes_open ON outcomes (model_name, model_version, received_at) WHERE report_id IS NULL;

-- One row per closed window.
CREATE TABLE reports (
    id              UUID             PRIMARY KEY,
    model_name      TEXT             NOT NULL,
    model_version   INTEGER          NOT NULL,
    window_start    TIMESTAMPTZ      NOT NULL,
    window_end      TIMESTAMPTZ      NOT NULL,
    n_predictions   BIGINT           NOT NULL,
    n_labels        BIGINT           NOT NULL,
    accuracy        DOUBLE PRECISION,
    mean_confidence DOUBLE PRECISION,
    drift_share     DOUBLE PRECISION,
    drift           JSONB            NOT NULL,
    alerts          TEXT[]           NOT NULL,
    created_at      TIMESTAMPTZ      NOT NULL DEFAULT now()
);
CREATE INDEX reports_by_model ON reports (model_name, created_at DESC);
