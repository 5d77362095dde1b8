-- Tags of registered models and of model versions (MLflow's RegisteredModelTag and
-- ModelVersionTag), served by both APIs.
CREATE TABLE registered_model_tags (
    model_name TEXT NOT NULL REFERENCES registered_models (name),
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (model_name, key)
);

CREATE TABLE model_version_tags (
    model_name TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    key        TEXT    NOT NULL,
    value      TEXT    NOT NULL,
    PRIMARY KEY (model_name, version, key),
    FOREIGN KEY (model_name, version) REFERENCES model_versions (model_name, version)
);
