-- Each run's latest value per metric key, as MLflow shows it and searches it: the point with the
-- highest (step, timestamp, value). Kept by a statement trigger on `run_metrics`, in the same
-- transaction as every insert whatever the write path, so that a run search filters and orders
-- on one indexed row per run instead of ranking each run's history per query.
CREATE TABLE run_latest_metrics (
    run_id    UUID             NOT NULL REFERENCES runs (id),
    key       TEXT             NOT NULL,
    value     DOUBLE PRECISION NOT NULL,
    step      BIGINT           NOT NULL,
    timestamp TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (run_id, key)
);
-- Filters and orders on one metric: `metrics.accuracy > 0.9 ORDER BY metrics.accuracy DESC`.
CREATE INDEX run_latest_metrics_by_value ON run_latest_metrics (key, value);

INSERT INTO run_latest_metrics (run_id, key, value, step, timestamp)
SELECT DISTINCT ON (run_id, key) run_id, key, value, step, timestamp FROM run_metrics
ORDER BY run_id, key, step DESC, timestamp DESC, value DESC;

CREATE FUNCTION run_latest_metrics_keep() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO run_latest_metrics AS l (run_id, key, value, step, timestamp)
    SELECT DISTINCT ON (run_id, key) run_id, key, value, step, timestamp FROM new_points
    ORDER BY run_id, key, step DESC, timestamp DESC, value DESC
    ON CONFLICT (run_id, key) DO UPDATE
        SET value = EXCLUDED.value, step = EXCLUDED.step, timestamp = EXCLUDED.timestamp
        WHERE (EXCLUDED.step, EXCLUDED.timestamp, EXCLUDED.value) > (l.step, l.timestamp, l.value);
    RETURN NULL;
END
$$;

CREATE TRIGGER run_metrics_latest AFTER INSERT ON run_metrics
    REFERENCING NEW TABLE AS new_points
    FOR EACH STATEMENT EXECUTE FUNCTION run_latest_metrics_keep();
