-- One row per inference id, holding whichever of the label and the prediction has arrived.
--
-- Both sides upsert the same row (`INSERT ... ON CONFLICT (inference_id) DO UPDATE`), so the row
-- lock is what serialises a label and its prediction: whichever upsert comes second waits for
-- the first to commit, then sees both sides and announces the join. No global lock is needed.
CREATE TABLE joins (
    inference_id    TEXT        PRIMARY KEY,
    -- The label side (NULL until the label arrives).
    label           TEXT,
    labelled_at     TIMESTAMPTZ,
    -- The label an overwrite replaced (the last one), for people asking why a join changed.
    previous_label  TEXT,
    -- The prediction side (NULL until the `predictions.logged` event arrives).
    model_name      TEXT,
    model_version   INTEGER,
    predicted_class TEXT,
    predicted_at    TIMESTAMPTZ,
    received_at     TIMESTAMPTZ,
    -- The `labels.joined` event that announced the current label with this prediction; cleared
    -- when an overwrite changes an announced label, so the new one is announced again.
    event_id        UUID,
    announced_at    TIMESTAMPTZ,
    CONSTRAINT joins_has_a_side CHECK (label IS NOT NULL OR predicted_class IS NOT NULL),
    CONSTRAINT joins_label_whole CHECK ((label IS NULL) = (labelled_at IS NULL)),
    CONSTRAINT joins_prediction_whole CHECK (
        (predicted_class IS NULL) = (model_name IS NULL)
        AND (predicted_class IS NULL) = (model_version IS NULL)
        AND (predicted_class IS NULL) = (predicted_at IS NULL)
    ),
    CONSTRAINT joins_announced_when_joined CHECK (
        event_id IS NULL OR (label IS NOT NULL AND predicted_class IS NOT NULL)
    )
);

-- Labels still waiting for their prediction, by age: the unknown count after the grace period
-- and retention of labels that never found a prediction.
CREATE INDEX joins_waiting ON joins (labelled_at) WHERE predicted_class IS NULL;
-- Retention of predictions, joined or not.
CREATE INDEX joins_predicted_at ON joins (predicted_at) WHERE predicted_class IS NOT NULL;

-- Carry over what 1001's tables hold. Under 1001's global lock every label with a prediction was
-- joined and announced, so `joined_at`/`event_id` carry over as `announced_at`/`event_id`.
INSERT INTO joins (inference_id, label, labelled_at, model_name, model_version, predicted_class,
                   predicted_at, received_at, event_id, announced_at)
SELECT COALESCE(l.inference_id, p.inference_id), l.label, l.labelled_at, p.model_name,
       p.model_version, p.predicted_class, p.predicted_at, p.received_at,
       CASE WHEN p.inference_id IS NOT NULL THEN l.event_id END,
       CASE WHEN p.inference_id IS NOT NULL THEN l.joined_at END
FROM labels l FULL JOIN predictions p ON p.inference_id = l.inference_id;

DROP TABLE labels;
DROP TABLE predictions;
