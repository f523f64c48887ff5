-- Waiters are woken in batches: one notification per app and finishing statement names up to
-- 100 finished tasks (`d <app hash> <uuid> <uuid> ...`), where 0001 sent one per task (a
-- finish batch of 256 tasks sent 256, each queued, delivered to every listener and parsed).
-- And a statement that made no record final (a take marking its records `process`) leaves
-- at once, without the two joins of the old and new rows.
-- A binary of 0001 reads a batched message as no task; its waiters then find the end on their
-- own next look (every 30 s, or the app's result interval if longer), so a rolling deploy
-- slows their wake-ups and loses nothing.
CREATE OR REPLACE FUNCTION {schema}.records_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_rows WHERE status IN ('success', 'error', 'cancel', 'retry'))
    THEN
        RETURN NULL;
    END IF;
    INSERT INTO {schema}.stat_deltas (app, queue, priority, kind, sec, n)
        SELECT a.app, '', 0, a.status, floor(extract(epoch FROM clock_timestamp()))::bigint, count(*)
        FROM new_rows a JOIN old_rows b USING (app, uuid)
        WHERE a.status IN ('success', 'error', 'cancel', 'retry')
          AND b.status NOT IN ('success', 'error', 'cancel', 'retry')
        GROUP BY a.app, a.status;
    PERFORM pg_notify('qtasks_' || TG_TABLE_SCHEMA,
                      'd ' || left(md5(app), 16) || ' ' || string_agg(uuid::text, ' '))
        FROM (SELECT a.app, a.uuid, (row_number() OVER (PARTITION BY a.app) - 1) / 100 AS chunk
              FROM new_rows a JOIN old_rows b USING (app, uuid)
              WHERE a.status IN ('success', 'error', 'cancel', 'retry')
                AND a.status <> b.status) AS ended
        GROUP BY app, chunk;
    RETURN NULL;
END $$;
