-- easytier-probe schema, version 4: results the backend refused for good.

-- acked now has three values: 0 waiting in the outbox, 1 acknowledged by the
-- backend (or standalone), 2 set aside because the backend refused it for
-- good (400/422 naming it, or refused alone). A set-aside result is never
-- sent again unless the operator queues it again (`easytier-probe requeue`),
-- which sets acked back to 0 and clears the two columns below.
ALTER TABLE results ADD COLUMN rejected_at_ms INTEGER;
-- The backend's answer, shortened and escaped: why it refused the result.
ALTER TABLE results ADD COLUMN rejected_reason TEXT;

CREATE INDEX results_rejected ON results (peer_id) WHERE acked = 2;
