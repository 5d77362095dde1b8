-- What a version was evaluated on, and the automatic promotion decision made for it.
ALTER TABLE model_versions
    ADD COLUMN evaluation JSONB,
    ADD COLUMN promotion JSONB;

-- Who moved an alias and the evidence (metric values) that decided it.
ALTER TABLE alias_history
    ADD COLUMN actor TEXT NOT NULL DEFAULT 'registry',
    ADD COLUMN evidence JSONB NOT NULL DEFAULT '{}';

-- One promotion policy per model; a model without one uses the default.
CREATE TABLE promotion_policies (
    model_name TEXT        PRIMARY KEY REFERENCES registered_models (name),
    policy     JSONB       NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
