-- When the label was given: a later `labels.joined` for the same inference id supersedes an
-- earlier one only when its label is newer, so a redelivered old event cannot win.
ALTER TABLE outcomes ADD COLUMN labelled_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity';
