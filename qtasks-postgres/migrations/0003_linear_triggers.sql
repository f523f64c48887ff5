-- Statements whose cost grows with their rows, not with the square of them.
--
-- The triggers no longer join `new_rows` to `old_rows`. A transition table has no index, and
-- PL/pgSQL plans a trigger's statement once per session, so 0001 and 0002's joins ran as
-- nested loops: a finish of 256 tasks spent more time in its trigger than in its update, a
-- promote of 1,000 due tasks compared a million pairs. `records_changed` pairs the rows by
-- grouping on (app, uuid), which counts and announces exactly what the join did;
-- `queue_changed` announces the queues of the rows that wait after the change, which needs
-- no pairing.
--
-- And a token names one leased row, as a check: the finish and the renewal find their rows
-- by token alone, through its unique index, rather than by joining their list to the app's
-- rows (which the planner may do by reading all of them once per listed row).

-- Records that became final: counted by status and second, and their waiters woken, up to
-- 100 uuids a notification (as in 0002). Only final rows are paired: an old row that was not
-- final differs from any final new row.
CREATE OR REPLACE FUNCTION {schema}.records_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    messages bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_rows WHERE status IN ('success', 'error', 'cancel', 'retry'))
    THEN
        RETURN NULL;
    END IF;
    -- `now`: the final status the statement wrote; `was`: the final status the row had
    -- before, NULL when it was not final.
    WITH paired AS (
        SELECT app, uuid, max(status) FILTER (WHERE side) AS now,
               max(status) FILTER (WHERE NOT side) AS was
        FROM (SELECT app, uuid, status, true AS side FROM new_rows
                WHERE status IN ('success', 'error', 'cancel', 'retry')
              UNION ALL
              SELECT app, uuid, status, false FROM old_rows
                WHERE status IN ('success', 'error', 'cancel', 'retry')) AS sides
        GROUP BY app, uuid HAVING bool_or(side)
    ),
    counted AS (
        INSERT INTO {schema}.stat_deltas (app, queue, priority, kind, sec, n)
        SELECT app, '', 0, now, floor(extract(epoch FROM clock_timestamp()))::bigint, count(*)
        FROM paired WHERE was IS NULL
        GROUP BY app, now
    )
    SELECT count(pg_notify('qtasks_' || TG_TABLE_SCHEMA, 'd ' || left(md5(app), 16) || ' ' || uuids))
    INTO messages
    FROM (SELECT app, string_agg(uuid::text, ' ') AS uuids
          FROM (SELECT app, uuid, (row_number() OVER (PARTITION BY app) - 1) / 100 AS chunk
                FROM paired WHERE was IS DISTINCT FROM now) AS ended
          GROUP BY app, chunk) AS batched;
    RETURN NULL;
END $$;

-- Queue rows changed: the states moved between counted (as in 0001), and the queues of rows
-- that wait after the change announced: a hand-back, a lease reclaimed, a delayed task due, and
-- (new here) a waiting task whose priority changed, which a take that began before the change
-- may have skipped. A lease leaves no row waiting and announces nothing.
CREATE OR REPLACE FUNCTION {schema}.queue_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.stat_deltas (app, queue, priority, kind, sec, n)
        SELECT app, queue, priority, state, 0, sum(n) FROM (
            SELECT app, queue, priority, state, -1 AS n FROM old_rows
            UNION ALL
            SELECT app, queue, priority, state, 1 AS n FROM new_rows
        ) AS moved
        GROUP BY app, queue, priority, state HAVING sum(n) <> 0;
    PERFORM pg_notify('qtasks_' || TG_TABLE_SCHEMA, 'a ' || left(md5(app), 16) || ' ' || queue)
        FROM (SELECT DISTINCT app, queue FROM new_rows WHERE state = 'w') AS announced;
    RETURN NULL;
END $$;

-- A token names one leased row. Rows that broke this (none are written so) are mended first:
-- a stray token is dropped, and a leased row without one, which no delivery could finish,
-- waits again as a lease that ran out would.
-- The check locks the table while it reads it (a moment: the table holds the live queue). A
-- migration stuck behind a long transaction on the table (an `add_in` left open) gives up
-- after 10 s and fails the worker's start with the reason, rather than stall every worker's
-- take until that transaction ends.
SET LOCAL lock_timeout = '10s';
UPDATE {schema}.queue SET token = NULL WHERE state <> 'r' AND token IS NOT NULL;
UPDATE {schema}.queue SET state = 'w', lease_until = NULL, recovered = true
    WHERE state = 'r' AND token IS NULL;
ALTER TABLE {schema}.queue ADD CONSTRAINT queue_token_while_leased
    CHECK ((state = 'r') = (token IS NOT NULL));
-- Later migrations of the same transaction wait for locks as usual.
SET LOCAL lock_timeout = DEFAULT;
