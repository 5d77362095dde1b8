-- What a dataset is for (training, scoring or reference), announced on data.ready so each
-- consumer takes only its own. Datasets from before the column were all training data.
ALTER TABLE datasets ADD COLUMN purpose TEXT NOT NULL DEFAULT 'training'
    CHECK (purpose IN ('training', 'scoring', 'reference'));
