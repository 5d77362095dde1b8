-- The features each prediction was made from, so labelled predictions can be exported as
-- training data (`GET /v1/labels/joined`, which retraining reads). NULL for predictions stored
-- before this column.
ALTER TABLE joins ADD COLUMN features JSONB;
CREATE INDEX joins_labelled_by_model ON joins (model_name, labelled_at DESC)
    WHERE label IS NOT NULL AND predicted_class IS NOT NULL AND features IS NOT NULL;
