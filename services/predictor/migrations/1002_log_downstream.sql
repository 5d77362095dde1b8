-- The prediction log now lives in JetStream; this table is this service's copy of it, written
-- downstream in bulk by the `predictor-log` consumer and read by inference id only (idempotent
-- replays and `GET /v1/predictions/{id}`). Nothing reads predictions by time.
DROP INDEX IF EXISTS predictions_by_time;
