-- What the labeler knows of each logged prediction (from predictions.logged events).
CREATE TABLE predictions (
    inference_id    TEXT        PRIMARY KEY,
    model_name      TEXT        NOT NULL,
    model_version   INTEGER     NOT NULL,
    predicted_class TEXT        NOT NULL,
    predicted_at    TIMESTAMPTZ NOT NULL,
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Ground truth. A label may arrive before its prediction; `joined_at` is set when both are here
-- and the join has been announced.
CREATE TABLE labels (
    inference_id TEXT        PRIMARY KEY,
    label        TEXT        NOT NULL,
    labelled_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    joined_at    TIMESTAMPTZ,
    event_id     UUID
);
CREATE INDEX labels_unjoined ON labels (inference_id) WHERE joined_at IS NULL;
