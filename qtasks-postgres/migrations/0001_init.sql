-- qtasks on PostgreSQL, schema version 1. `{schema}` is replaced by the schema's quoted name
-- before this runs (in one transaction, under an advisory lock). Released migrations are never
-- edited: a change is a new file.
--
-- Every table has `app` (the app's name, `QueueConfig::name`) first in its key: many apps share
-- one schema. Times the engine schedules by (due times, leases, expiries) are `timestamptz` on
-- the database's clock, so the workers' clocks never matter; times the core hands in
-- (`created_at`...) are Unix seconds inside the record.

-- Every record of a task's life. `doc` is the `TaskRecord` as JSON text (stored as written: a
-- `\u0000` in an argument survives, which `jsonb` refuses); the columns beside it are what SQL
-- filters, sorts and fences by.
CREATE TABLE {schema}.records (
    app text NOT NULL,
    uuid uuid NOT NULL,
    status text NOT NULL,
    task_name text NOT NULL,
    -- `records::secs_to_ms(created_at)`: the listing's order, as the core computes it.
    created_ms bigint NOT NULL,
    -- Unix seconds of the last status change (the record's `updated_at`; `doc` may hold an
    -- older one: a take marks the status without rewriting the document).
    updated_at double precision NOT NULL,
    doc text NOT NULL,
    -- The reason of a cancel asked while the task runs: its finish ends it `cancel`.
    cancel_requested text,
    -- The delivery token that stored the outcome: a finish sent again after a lost reply is
    -- recognised (and not written twice).
    finished_by uuid,
    -- When a final record goes (retention); NULL keeps it. Reads hide records past it.
    purge_at timestamptz,
    PRIMARY KEY (app, uuid)
) WITH (fillfactor = 80);
CREATE INDEX records_newest ON {schema}.records (app, created_ms, uuid);
CREATE INDEX records_purge ON {schema}.records (app, purge_at) WHERE purge_at IS NOT NULL;

-- The live queue: one row per task that waits (`w`), waits for a time (`d`: delayed, due at
-- `due_at`) or runs under a lease (`r`, until `lease_until`, fenced by `token`). A row leaves
-- the table when its task ends, so the take's index holds the backlog, never the history.
CREATE SEQUENCE {schema}.arrival;
CREATE TABLE {schema}.queue (
    app text NOT NULL,
    uuid uuid NOT NULL,
    queue text NOT NULL,
    priority bigint NOT NULL,
    -- FIFO among equal priorities: the order rows became waiting.
    seq bigint NOT NULL DEFAULT nextval('{schema}.arrival'),
    state text NOT NULL CHECK (state IN ('w', 'd', 'r')),
    due_at timestamptz,
    lease_until timestamptz,
    token uuid,
    -- Taken before by a delivery that ended without an outcome (a lease that ran out).
    recovered boolean NOT NULL DEFAULT false,
    -- Deliveries of this attempt so far (`QueueConfig::max_deliveries`).
    deliveries integer NOT NULL DEFAULT 0,
    -- The task's `created_at`, for the oldest waiting task.
    created_at double precision NOT NULL,
    -- The task whose running slot this delayed row waits for (`max_running`): a run of it that
    -- ends makes the row due at once.
    parked_for text,
    PRIMARY KEY (app, uuid)
) WITH (fillfactor = 70);
CREATE INDEX queue_take ON {schema}.queue (app, queue, priority, seq) WHERE state = 'w';
CREATE INDEX queue_due ON {schema}.queue (app, due_at) WHERE state = 'd';
CREATE INDEX queue_leases ON {schema}.queue (app, lease_until) WHERE state = 'r';
CREATE UNIQUE INDEX queue_tokens ON {schema}.queue (token) WHERE token IS NOT NULL;

-- The items a running stream task yielded, for readers that follow it live; the record's
-- result holds them all once it ends.
CREATE TABLE {schema}.items (
    app text NOT NULL,
    uuid uuid NOT NULL,
    n bigserial,
    token uuid NOT NULL,
    item text NOT NULL,
    PRIMARY KEY (app, uuid, n)
);

-- Tasks no worker could run, with the reason, oldest first.
CREATE TABLE {schema}.dead_letters (
    app text NOT NULL,
    id bigserial,
    uuid uuid NOT NULL,
    queue text NOT NULL,
    entry text NOT NULL,
    reason text NOT NULL,
    at double precision NOT NULL,
    PRIMARY KEY (app, id)
);

-- Stats: every change appends deltas (no row is updated, so writers never wait on a counter);
-- a read folds them into the totals first. `kind`: a queue state (`w`, `d`, `r`) by queue and
-- priority, or a final status by the second it was reached (`sec`; older seconds are merged
-- into 0).
CREATE TABLE {schema}.stat_deltas (
    app text NOT NULL,
    queue text NOT NULL,
    priority bigint NOT NULL,
    kind text NOT NULL,
    sec bigint NOT NULL,
    n bigint NOT NULL
);
CREATE INDEX stat_deltas_app ON {schema}.stat_deltas (app);
CREATE TABLE {schema}.stat_totals (
    app text NOT NULL,
    queue text NOT NULL,
    priority bigint NOT NULL,
    kind text NOT NULL,
    sec bigint NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (app, queue, priority, kind, sec)
);

-- Unique tasks: which task holds each key, since when (Unix seconds, the database's clock).
-- A key is forgotten once it expires (its window, and at least a week).
CREATE TABLE {schema}.unique_keys (
    app text NOT NULL,
    key text NOT NULL,
    holder uuid NOT NULL,
    added_at double precision NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (app, key)
);

-- Task limits: the next start a rate allows, the starts it reserved for tasks handed back
-- until their turn, and the running slots of tasks with `max_running` (a slot whose
-- delivery no longer holds its lease counts for nothing).
CREATE TABLE {schema}.rate_limits (
    app text NOT NULL,
    rate_key text NOT NULL,
    next_start double precision NOT NULL,
    PRIMARY KEY (app, rate_key)
);
CREATE TABLE {schema}.rate_turns (
    app text NOT NULL,
    rate_key text NOT NULL,
    uuid uuid NOT NULL,
    turn double precision NOT NULL,
    PRIMARY KEY (app, rate_key, uuid)
);
CREATE TABLE {schema}.running_slots (
    app text NOT NULL,
    task_name text NOT NULL,
    token uuid NOT NULL,
    PRIMARY KEY (app, task_name, token)
);

CREATE TABLE {schema}.paused (
    app text NOT NULL,
    queue text NOT NULL,
    PRIMARY KEY (app, queue)
);

-- The global config: entries, the heartbeat, the workers, claims, workflows.
CREATE TABLE {schema}.entries (
    app text NOT NULL,
    name text NOT NULL,
    key text NOT NULL,
    value text NOT NULL,
    PRIMARY KEY (app, name, key)
);
CREATE TABLE {schema}.heartbeats (
    app text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE TABLE {schema}.workers (
    app text NOT NULL,
    id text NOT NULL,
    info text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (app, id)
);
CREATE TABLE {schema}.claims (
    app text NOT NULL,
    key text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (app, key)
);
CREATE TABLE {schema}.workflows (
    app text NOT NULL,
    id text NOT NULL,
    expires_at timestamptz NOT NULL,
    running boolean NOT NULL DEFAULT false,
    PRIMARY KEY (app, id)
);
CREATE TABLE {schema}.workflow_fields (
    app text NOT NULL,
    id text NOT NULL,
    field text NOT NULL,
    value text NOT NULL,
    PRIMARY KEY (app, id, field)
);
CREATE TABLE {schema}.workflow_joins (
    app text NOT NULL,
    id text NOT NULL,
    join_name text NOT NULL,
    member text NOT NULL,
    PRIMARY KEY (app, id, join_name, member)
);

-- Wake-ups, on one channel per schema (`qtasks_{schema}`), each payload starting with a kind
-- and the app's hash (`left(md5(app), 16)`): `a` a task waits in a queue, `d` a record became
-- final, `c` a cancel was asked. Sent by triggers, so a task added in a caller's own
-- transaction is announced when (and only if) that transaction commits.

-- Queue rows added: counted, and announced per queue (a delayed one too: an idle take then
-- sleeps until it is due, not until its next safety look).
CREATE FUNCTION {schema}.queue_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.stat_deltas (app, queue, priority, kind, sec, n)
        SELECT app, queue, priority, state, 0, count(*) FROM added
        GROUP BY app, queue, priority, state;
    PERFORM pg_notify('qtasks_' || TG_TABLE_SCHEMA, 'a ' || left(md5(app), 16) || ' ' || queue)
        FROM (SELECT DISTINCT app, queue FROM added) AS announced;
    RETURN NULL;
END $$;
CREATE TRIGGER queue_added AFTER INSERT ON {schema}.queue
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION {schema}.queue_added();

-- Queue rows changed: the states moved between counted, and rows that became waiting
-- announced (a hand-back, a lease reclaimed, a delayed task due). A row handed back to wait
-- for a time is not: the worker that handed it back looks again itself, and a wake-up of every
-- idle worker per postponed task would cost more than it gives.
CREATE FUNCTION {schema}.queue_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.stat_deltas (app, queue, priority, kind, sec, n)
        SELECT app, queue, priority, state, 0, sum(n) FROM (
            SELECT app, queue, priority, state, -1 AS n FROM old_rows
            UNION ALL
            SELECT app, queue, priority, state, 1 AS n FROM new_rows
        ) AS moved
        GROUP BY app, queue, priority, state HAVING sum(n) <> 0;
    PERFORM pg_notify('qtasks_' || TG_TABLE_SCHEMA, 'a ' || left(md5(app), 16) || ' ' || queue)
        FROM (SELECT DISTINCT a.app, a.queue FROM new_rows a JOIN old_rows b USING (app, uuid)
              WHERE a.state = 'w' AND b.state <> 'w') AS announced;
    RETURN NULL;
END $$;
CREATE TRIGGER queue_changed AFTER UPDATE ON {schema}.queue
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.queue_changed();

CREATE FUNCTION {schema}.queue_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.stat_deltas (app, queue, priority, kind, sec, n)
        SELECT app, queue, priority, state, 0, -count(*) FROM removed
        GROUP BY app, queue, priority, state;
    RETURN NULL;
END $$;
CREATE TRIGGER queue_removed AFTER DELETE ON {schema}.queue
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION {schema}.queue_removed();

-- Records that became final: counted by status and second, and their waiters woken.
CREATE FUNCTION {schema}.records_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.stat_deltas (app, queue, priority, kind, sec, n)
        SELECT a.app, '', 0, a.status, floor(extract(epoch FROM clock_timestamp()))::bigint, count(*)
        FROM new_rows a JOIN old_rows b USING (app, uuid)
        WHERE a.status IN ('success', 'error', 'cancel', 'retry')
          AND b.status NOT IN ('success', 'error', 'cancel', 'retry')
        GROUP BY a.app, a.status;
    PERFORM pg_notify('qtasks_' || TG_TABLE_SCHEMA, 'd ' || left(md5(a.app), 16) || ' ' || a.uuid)
        FROM new_rows a JOIN old_rows b USING (app, uuid)
        WHERE a.status IN ('success', 'error', 'cancel', 'retry') AND a.status <> b.status;
    RETURN NULL;
END $$;
CREATE TRIGGER records_changed AFTER UPDATE ON {schema}.records
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.records_changed();

-- A delivered task of a rate-limited task asks whether it may start (the counterpart of
-- `qtasks::limits::RateState::turn`, in one statement). Under the rate's row lock: a task that
-- comes back at its reserved turn starts; otherwise the next start is taken, and a task whose
-- start is later is handed back (delayed until then, status `new`, no hand-back counted).
-- Returns `lost` (the delivery no longer holds the task), `run`, `wait` (handed back: the
-- seconds to wait), or `cancel` (a cancel was asked while it was held: the caller ends it;
-- the turn is kept, the row not moved).
CREATE FUNCTION {schema}.admit_rate(p_app text, p_key text, p_uuid uuid, p_token uuid,
                                    p_interval double precision, p_slack double precision)
RETURNS TABLE (answer text, wait double precision) LANGUAGE plpgsql AS $$
DECLARE
    v_cancel text;
    v_next double precision;
    v_now double precision;
    v_turn double precision;
    v_start double precision;
    v_wait double precision;
BEGIN
    PERFORM 1 FROM {schema}.queue
        WHERE app = p_app AND uuid = p_uuid AND token = p_token AND state = 'r'
          AND lease_until > clock_timestamp()
        FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'lost'::text, NULL::double precision;
        RETURN;
    END IF;
    INSERT INTO {schema}.rate_limits AS r (app, rate_key, next_start) VALUES (p_app, p_key, 0)
        ON CONFLICT (app, rate_key) DO UPDATE SET next_start = r.next_start
        RETURNING r.next_start INTO v_next;
    v_now := extract(epoch FROM clock_timestamp());
    SELECT turn INTO v_turn FROM {schema}.rate_turns
        WHERE app = p_app AND rate_key = p_key AND uuid = p_uuid;
    IF v_turn IS NOT NULL THEN
        IF v_turn <= v_now + p_slack THEN
            DELETE FROM {schema}.rate_turns WHERE app = p_app AND rate_key = p_key AND uuid = p_uuid;
            RETURN QUERY SELECT 'run'::text, NULL::double precision;
            RETURN;
        END IF;
        v_wait := v_turn - v_now;
    ELSE
        v_start := greatest(v_next, v_now);
        UPDATE {schema}.rate_limits SET next_start = v_start + p_interval
            WHERE app = p_app AND rate_key = p_key;
        IF v_start <= v_now + p_slack THEN
            RETURN QUERY SELECT 'run'::text, NULL::double precision;
            RETURN;
        END IF;
        INSERT INTO {schema}.rate_turns (app, rate_key, uuid, turn)
            VALUES (p_app, p_key, p_uuid, v_start);
        v_wait := v_start - v_now;
    END IF;
    -- Locked: a cancel committing meanwhile is seen, not overwritten.
    SELECT cancel_requested INTO v_cancel FROM {schema}.records
        WHERE app = p_app AND uuid = p_uuid FOR UPDATE;
    IF v_cancel IS NOT NULL THEN
        RETURN QUERY SELECT 'cancel'::text, v_wait;
        RETURN;
    END IF;
    UPDATE {schema}.queue SET token = NULL, lease_until = NULL,
            deliveries = greatest(deliveries - 1, 0), state = 'd',
            due_at = clock_timestamp() + make_interval(secs => v_wait)
        WHERE app = p_app AND uuid = p_uuid;
    UPDATE {schema}.records SET status = 'new', updated_at = extract(epoch FROM clock_timestamp())
        WHERE app = p_app AND uuid = p_uuid;
    RETURN QUERY SELECT 'wait'::text, v_wait;
END $$;
