-- Every prediction served, as logged before the response left.
CREATE TABLE predictions (
    inference_id  TEXT        PRIMARY KEY,
    model_name    TEXT        NOT NULL,
    model_version INTEGER     NOT NULL,
    features      JSONB       NOT NULL,
    class         TEXT        NOT NULL,
    confidence    REAL        NOT NULL,
    probabilities JSONB       NOT NULL,
    -- The predictions.logged event that announced this row.
    event_id      UUID        NOT NULL,
    predicted_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX predictions_by_time ON predictions (predicted_at DESC);
