-- Windows are spans of prediction time per model version; a window's labels are the labels of
-- its own predictions. Observations are found by prediction time, sampled by `sample_key`
-- (uniform, so `ORDER BY sample_key LIMIT n` is a random sample read through the index).
ALTER TABLE observations
    ADD COLUMN probabilities JSONB,
    ADD COLUMN sample_key DOUBLE PRECISION NOT NULL DEFAULT random();
DROP INDEX observations_open;
ALTER TABLE observations DROP COLUMN report_id;
CREATE INDEX observations_window ON observations (model_name, model_version, predicted_at);

-- Labels carry their prediction's time, so they find their window whenever they arrive;
-- `counted` is false until the window's quality includes them.
ALTER TABLE outcomes
    ADD COLUMN predicted_class TEXT,
    ADD COLUMN predicted_at TIMESTAMPTZ,
    ADD COLUMN counted BOOLEAN NOT NULL DEFAULT true;
UPDATE outcomes SET predicted_at = received_at WHERE predicted_at IS NULL;
ALTER TABLE outcomes ALTER COLUMN predicted_at SET NOT NULL, ALTER COLUMN counted SET DEFAULT false;
DROP INDEX outcomes_open;
CREATE INDEX outcomes_unassigned ON outcomes (model_name, model_version, predicted_at) WHERE report_id IS NULL;
CREATE INDEX outcomes_uncounted ON outcomes (report_id) WHERE NOT counted AND report_id IS NOT NULL;
CREATE INDEX outcomes_by_report ON outcomes (report_id);

-- Per model version: the newest prediction time seen (the watermark that closes windows).
CREATE TABLE streams (
    model_name    TEXT        NOT NULL,
    model_version INTEGER     NOT NULL,
    newest        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (model_name, model_version)
);
INSERT INTO streams SELECT model_name, model_version, max(predicted_at) FROM observations GROUP BY 1, 2;

ALTER TABLE reports
    ADD COLUMN revision INTEGER NOT NULL DEFAULT 1,
    ADD COLUMN quality_final BOOLEAN NOT NULL DEFAULT true,
    ADD COLUMN detail JSONB NOT NULL DEFAULT '{}';
ALTER TABLE reports ALTER COLUMN quality_final SET DEFAULT false;
CREATE INDEX reports_window ON reports (model_name, model_version, window_start);
CREATE INDEX reports_open_quality ON reports (window_end) WHERE NOT quality_final;

-- Every revision of a window's quality, so a revised report never silently overwrites one a
-- user saw.
CREATE TABLE report_revisions (
    report_id     UUID        NOT NULL REFERENCES reports (id),
    revision      INTEGER     NOT NULL,
    n_labels      BIGINT      NOT NULL,
    quality       JSONB,
    quality_final BOOLEAN     NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (report_id, revision)
);

-- Alert state: one row per episode of a condition (model, version, kind, key). `pending` rows
-- count consecutive firing windows before the episode opens; `open` ones have notified.
CREATE TABLE alert_episodes (
    id               UUID        PRIMARY KEY,
    model_name       TEXT        NOT NULL,
    model_version    INTEGER     NOT NULL,
    kind             TEXT        NOT NULL,
    key              TEXT        NOT NULL DEFAULT '',
    state            TEXT        NOT NULL CHECK (state IN ('pending', 'open', 'closed')),
    streak           INTEGER     NOT NULL DEFAULT 0,
    clean_windows    INTEGER     NOT NULL DEFAULT 0,
    severity         TEXT        NOT NULL,
    observed         DOUBLE PRECISION NOT NULL,
    notified_at      TIMESTAMPTZ,
    opened_at        TIMESTAMPTZ,
    closed_at        TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX alert_episodes_live ON alert_episodes (model_name, model_version, kind, key)
    WHERE state <> 'closed';

-- Every notification published, as `GET /v1/alerts` lists them (`id` is the event id).
CREATE TABLE alerts (
    id            UUID        PRIMARY KEY,
    episode_id    UUID        NOT NULL REFERENCES alert_episodes (id),
    kind          TEXT        NOT NULL,
    status        TEXT        NOT NULL,
    severity      TEXT        NOT NULL,
    model_name    TEXT        NOT NULL,
    model_version INTEGER     NOT NULL,
    key           TEXT,
    report_id     UUID        NOT NULL,
    message       TEXT        NOT NULL,
    observed      DOUBLE PRECISION NOT NULL,
    threshold     DOUBLE PRECISION NOT NULL,
    evidence      JSONB       NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX alerts_by_time ON alerts (created_at DESC);
CREATE INDEX alerts_by_model ON alerts (model_name, created_at DESC);
