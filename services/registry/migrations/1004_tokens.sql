-- API tokens: only the SHA-256 of each is stored; the token itself is shown once when issued.
CREATE TABLE api_tokens (
    id         UUID        PRIMARY KEY,
    name       TEXT        NOT NULL,
    scope      TEXT        NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    hash       TEXT        NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at TIMESTAMPTZ
);
