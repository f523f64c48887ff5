-- The triggers pair a statement's old and new rows by grouping them, not by joining them.
-- A transition table has no index, and PL/pgSQL plans a trigger's statement once per session,
-- so 0001 and 0002's join of `new_rows` to `old_rows` ran as a nested loop whose cost grew
-- with the square of the statement's rows: a finish of 256 tasks spent more time in it than
-- in its update, a promote of 1,000 due tasks compared a million pairs. Grouping on
-- (app, uuid) costs the same per row at any size. What the triggers count and announce is
-- unchanged.

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
-- that became waiting announced (a hand-back, a lease reclaimed, a delayed task due). A take
-- makes no row waiting, and leaves before the pairing.
CREATE OR REPLACE FUNCTION {schema}.queue_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.stat_deltas (app, queue, priority, kind, sec, n)
        SELECT app, queue, priority, state, 0, sum(n) FROM (
            SELECT app, queue, priority, state, -1 AS n FROM old_rows
            UNION ALL
            SELECT app, queue, priority, state, 1 AS n FROM new_rows
        ) AS moved
        GROUP BY app, queue, priority, state HAVING sum(n) <> 0;
    IF NOT EXISTS (SELECT 1 FROM new_rows WHERE state = 'w') THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('qtasks_' || TG_TABLE_SCHEMA, 'a ' || left(md5(app), 16) || ' ' || queue)
        FROM (SELECT DISTINCT app, queue
              FROM (SELECT app, uuid, max(queue) AS queue
                    FROM (SELECT app, uuid, queue, true AS side FROM new_rows WHERE state = 'w'
                          UNION ALL
                          SELECT app, uuid, NULL, false FROM old_rows WHERE state = 'w') AS sides
                    GROUP BY app, uuid HAVING bool_and(side)) AS became_waiting
             ) AS announced;
    RETURN NULL;
END $$;
