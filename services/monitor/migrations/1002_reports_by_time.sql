-- `GET /v1/reports` without a model filter lists the newest reports of all models.
CREATE INDEX reports_by_time ON reports (created_at DESC);
