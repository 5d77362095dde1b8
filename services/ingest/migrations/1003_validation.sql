-- Validation with rejection, and deduplication by content *and* schema.
--
-- A file that fails validation is stored as `rejected` with its report (and announced on
-- alerts.data_quality instead of data.ready). `schema_hash` digests the declared schema and
-- checks: the same bytes under a corrected schema are a new dataset, not the old one. Rows from
-- before the column get a digest no request produces, so re-sending their file makes a new
-- version once.
ALTER TABLE datasets
    ADD COLUMN status TEXT NOT NULL DEFAULT 'accepted' CHECK (status IN ('accepted', 'rejected')),
    ADD COLUMN schema_hash TEXT,
    ADD COLUMN checks JSONB NOT NULL DEFAULT '{}',
    ADD COLUMN report JSONB NOT NULL DEFAULT '{}',
    ADD COLUMN source TEXT NOT NULL DEFAULT 'upload',
    ADD COLUMN source_uri TEXT,
    -- The schedule interval [start, end) that produced the dataset, when a schedule did.
    ADD COLUMN schedule TEXT,
    ADD COLUMN interval_start TIMESTAMPTZ,
    ADD COLUMN interval_end TIMESTAMPTZ;
UPDATE datasets SET schema_hash = 'legacy:' || id::text, source_uri = uri;
ALTER TABLE datasets
    ALTER COLUMN schema_hash SET NOT NULL,
    ALTER COLUMN source_uri SET NOT NULL,
    DROP CONSTRAINT datasets_name_content_hash_key,
    ADD CONSTRAINT datasets_name_content_schema_key UNIQUE (name, content_hash, schema_hash);
CREATE INDEX datasets_status ON datasets (status, created_at DESC);
