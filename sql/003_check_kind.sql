-- easytier-probe schema, version 3: quick and full checks.

-- 'full' (the route table: round-trip latency, version, host name) or
-- 'quick' (the handshake only).
ALTER TABLE results ADD COLUMN check_kind TEXT NOT NULL DEFAULT 'full';
-- 'rtt' or 'handshake': which latency latency_us is; NULL without one.
ALTER TABLE results ADD COLUMN latency_kind TEXT;
-- 1 when remote_version and remote_hostname were observed by this check,
-- 0 when a quick check carried over those of the last full one.
ALTER TABLE results ADD COLUMN version_observed INTEGER NOT NULL DEFAULT 1;
