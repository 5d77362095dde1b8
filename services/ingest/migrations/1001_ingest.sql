CREATE TABLE datasets (
    id            UUID        PRIMARY KEY,
    name          TEXT        NOT NULL,
    version       INTEGER     NOT NULL,
    uri           TEXT        NOT NULL,
    content_hash  TEXT        NOT NULL,
    row_count     BIGINT      NOT NULL,
    rejected_rows BIGINT      NOT NULL,
    schema        JSONB       NOT NULL,
    -- The first rejected rows with their reasons, as shown to the uploader.
    errors        JSONB       NOT NULL DEFAULT '[]',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (name, version),
    -- The same bytes under the same name are one dataset: re-ingesting is a no-op.
    UNIQUE (name, content_hash)
);
