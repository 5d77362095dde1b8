-- What a version takes and answers: its input schema (features in order, and the target) and
-- its class names in output order, as the registering client gave them.
ALTER TABLE model_versions
    ADD COLUMN input_schema JSONB,
    ADD COLUMN class_names  TEXT[] NOT NULL DEFAULT '{}';
