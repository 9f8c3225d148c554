-- easytier-probe schema, version 2: why a result is Offline in one word, and
-- how many checks its verdict took.

-- refused, unreachable, dns, timeout, rejected, not_relayed, role_mismatch,
-- internal; NULL for Online results. Results from before this version have
-- no kind.
ALTER TABLE results ADD COLUMN error_kind TEXT;
-- 2 when a failed check was confirmed by a second one before Offline was
-- recorded.
ALTER TABLE results ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
