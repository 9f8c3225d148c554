-- easytier-probe schema, version 5: per-peer hourly rollups, the long history.
--
-- Raw results are kept only for a short window once delivered
-- (--raw-retention-hours, default 48); these rows are kept for
-- --retention-days (default 90) and serve the status page's 7 d and 30 d
-- figures, its 48-hour strips and /api/peers/ID/history.

-- The remote versions seen, each stored once.
CREATE TABLE versions (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

-- One row per peer and hour (hour = checked_at_ms / 3600000: UTC hours
-- since the epoch).
CREATE TABLE rollups (
    peer_id        INTEGER NOT NULL,
    hour           INTEGER NOT NULL,
    checks         INTEGER NOT NULL,
    online         INTEGER NOT NULL,
    -- the latency of the checks that had one (Online), in microseconds
    latency_n      INTEGER NOT NULL,
    latency_sum_us INTEGER NOT NULL,
    latency_min_us INTEGER,
    latency_max_us INTEGER,
    -- versions.id of the last version of the hour
    version_id     INTEGER,
    PRIMARY KEY (peer_id, hour)
) WITHOUT ROWID;

-- Existing results, folded into hours: one pass in the order of
-- results_by_peer, then one for the last version of each hour.
INSERT OR IGNORE INTO versions (name)
SELECT DISTINCT remote_version FROM results WHERE remote_version IS NOT NULL;

INSERT INTO rollups (peer_id, hour, checks, online, latency_n, latency_sum_us,
                     latency_min_us, latency_max_us)
SELECT peer_id, checked_at_ms / 3600000, count(*), sum(status = 'Online'),
       count(latency_us), coalesce(sum(latency_us), 0), min(latency_us), max(latency_us)
FROM results GROUP BY peer_id, checked_at_ms / 3600000;

-- (A bare column next to max() comes from the row holding the maximum.)
UPDATE rollups SET version_id = v.id
FROM (SELECT peer_id, checked_at_ms / 3600000 AS hour, remote_version, max(checked_at_ms)
      FROM results WHERE remote_version IS NOT NULL
      GROUP BY peer_id, checked_at_ms / 3600000) AS last
JOIN versions v ON v.name = last.remote_version
WHERE rollups.peer_id = last.peer_id AND rollups.hour = last.hour;

-- From now on every result is folded into its hour as it is inserted, in
-- the writer's transaction, so the rollups never disagree with the results.
CREATE TRIGGER results_rollup AFTER INSERT ON results
BEGIN
    INSERT OR IGNORE INTO versions (name)
    SELECT NEW.remote_version WHERE NEW.remote_version IS NOT NULL;
    INSERT INTO rollups (peer_id, hour, checks, online, latency_n, latency_sum_us,
                         latency_min_us, latency_max_us, version_id)
    VALUES (NEW.peer_id, NEW.checked_at_ms / 3600000, 1, NEW.status = 'Online',
            NEW.latency_us IS NOT NULL, coalesce(NEW.latency_us, 0), NEW.latency_us,
            NEW.latency_us,
            (SELECT id FROM versions WHERE name = NEW.remote_version))
    ON CONFLICT (peer_id, hour) DO UPDATE SET
        checks = checks + 1,
        online = online + excluded.online,
        latency_n = latency_n + excluded.latency_n,
        latency_sum_us = latency_sum_us + excluded.latency_sum_us,
        latency_min_us = CASE WHEN latency_min_us IS NULL
                                OR excluded.latency_min_us < latency_min_us
                              THEN coalesce(excluded.latency_min_us, latency_min_us)
                              ELSE latency_min_us END,
        latency_max_us = CASE WHEN latency_max_us IS NULL
                                OR excluded.latency_max_us > latency_max_us
                              THEN coalesce(excluded.latency_max_us, latency_max_us)
                              ELSE latency_max_us END,
        -- the last inserted result of the hour that carried a version
        version_id = coalesce(excluded.version_id, version_id);
END;

-- A result still waiting for the backend that is deleted was dropped by the
-- outbox cap (pruning deletes only delivered or set-aside results): it goes
-- from its hour too, as it goes from the history. (Its latency may stay in
-- the hour's min and max.)
CREATE TRIGGER results_dropped AFTER DELETE ON results WHEN OLD.acked = 0
BEGIN
    UPDATE rollups SET
        checks = checks - 1,
        online = online - (OLD.status = 'Online'),
        latency_n = latency_n - (OLD.latency_us IS NOT NULL),
        latency_sum_us = latency_sum_us - coalesce(OLD.latency_us, 0)
    WHERE peer_id = OLD.peer_id AND hour = OLD.checked_at_ms / 3600000;
END;

-- The writer now prunes delivered results peer by peer through
-- results_by_peer (see store/writer.rs), so this index, a sixth of the
-- results' size, is no longer needed.
DROP INDEX results_by_time;
