-- easytier-probe schema, version 1.
-- Applied in one transaction; PRAGMA user_version records the version.

-- Small key/value facts about this probe: its stable id, counters.
CREATE TABLE probe_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- The peers under watch, as last given by the peers file or the backend.
-- A peer missing from the newest list keeps its row (and its history) with
-- active = 0. network_secret is kept so a restart during a backend outage can
-- go on checking; the database file is created private to its owner.
CREATE TABLE peers (
    id             INTEGER PRIMARY KEY,
    name           TEXT    NOT NULL,
    host           TEXT    NOT NULL,
    port           INTEGER NOT NULL,
    protocol       TEXT    NOT NULL,
    network_name   TEXT    NOT NULL,
    network_secret TEXT,
    active         INTEGER NOT NULL DEFAULT 1,
    -- why the probe does not check this peer (for example an unsupported transport)
    skip_reason    TEXT,
    updated_at_ms  INTEGER NOT NULL
);

-- Every check result. seq never repeats (AUTOINCREMENT), so a backend can
-- drop replays; acked = 1 once the backend has acknowledged it (or at once in
-- standalone mode, where nothing is reported).
CREATE TABLE results (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    peer_id          INTEGER NOT NULL,
    checked_at_ms    INTEGER NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('Online', 'Offline')),
    response_time_ms INTEGER,
    latency_us       INTEGER,
    remote_version   TEXT,
    remote_hostname  TEXT,
    role             TEXT    NOT NULL,
    error            TEXT,
    duration_ms      INTEGER NOT NULL,
    acked            INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX results_by_peer ON results (peer_id, checked_at_ms);
CREATE INDEX results_by_time ON results (checked_at_ms);
CREATE INDEX results_unacked ON results (seq) WHERE acked = 0;
