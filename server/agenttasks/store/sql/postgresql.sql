-- Every statement the PostgreSQL backend runs, by name. Parameters are named, psycopg style
-- (%(tenant)s), and bound from dicts; so a literal percent sign must not appear here, not even
-- in a comment. Times are timestamptz, JSON columns json (see 0001_initial.sql). Rows are read
-- with SELECT * and mapped by column name, so a migration that adds a column does not have to
-- touch every query here.
--
-- A row named by its unique id is found with `tenant || '' = ...`: the tenant is checked, not
-- searched by. Connections keep generic plans of prepared statements (planning each run cost
-- ~40% of PostgreSQL's CPU per task), and a generic plan made while a table was nearly empty
-- chose an index led by tenant (tasks_by_agent, agents_by_created, deliveries_by_task) with
-- the id as a filter, walking the whole tenant on every lookup; written so, the id's unique
-- index is the only one the plan can use.
--
-- Statements named *_locked are what a write function's view runs instead of the plain one: in
-- a write, the rows read are about to be changed, and another server on the same database may
-- be changing them too. They take the row lock an UPDATE of the row would take anyway (FOR NO
-- KEY UPDATE: it does not block the foreign-key checks of event inserts), either waiting for it
-- (a task named by id) or skipping rows another transaction holds (work to be shared out:
-- claims, sweeps, the outbox), so that no two servers claim or sweep the same row. Outer
-- conditions repeat the inner ones: when a row changed under a lock wait, PostgreSQL re-checks
-- only the outer query's conditions against the new row.

-- name: create_schema_migrations
-- Outside the versioned migrations: it is what records them.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL
);

-- name: lock_migrations
-- Held until the migrating transaction ends: servers starting at once migrate one at a time.
-- The key is arbitrary but fixed; advisory locks are per database.
SELECT pg_advisory_xact_lock(%(key)s);

-- name: has_schema
SELECT to_regclass('schema_migrations') IS NOT NULL AS found;

-- name: applied_migrations
SELECT version, name, applied_at FROM schema_migrations ORDER BY version;

-- name: record_migration
INSERT INTO schema_migrations (version, name, applied_at) VALUES (%(version)s, %(name)s, %(applied_at)s);

-- name: get_agent
SELECT * FROM agents WHERE agent_id = %(agent_id)s AND tenant || '' = %(tenant)s;

-- name: list_agents
SELECT * FROM agents
WHERE tenant = %(tenant)s AND (created_at, agent_id) > (%(after_created)s, %(after_id)s)
ORDER BY created_at, agent_id
LIMIT %(limit)s;

-- name: insert_agent
INSERT INTO agents (
    tenant, agent_id, name, description, status, status_message, default_timeout_seconds,
    max_attempts, input_timeout_seconds, metadata, created_at, updated_at
) VALUES (
    %(tenant)s, %(agent_id)s, %(name)s, %(description)s, %(status)s, %(status_message)s,
    %(default_timeout_seconds)s, %(max_attempts)s, %(input_timeout_seconds)s, %(metadata)s,
    %(created_at)s, %(updated_at)s
);

-- name: update_agent
UPDATE agents SET
    name = %(name)s,
    description = %(description)s,
    status = %(status)s,
    status_message = %(status_message)s,
    default_timeout_seconds = %(default_timeout_seconds)s,
    max_attempts = %(max_attempts)s,
    input_timeout_seconds = %(input_timeout_seconds)s,
    metadata = %(metadata)s,
    updated_at = %(updated_at)s
WHERE agent_id = %(agent_id)s AND tenant || '' = %(tenant)s;

-- name: delete_agent
-- Tasks and their events go by ON DELETE CASCADE.
DELETE FROM agents WHERE agent_id = %(agent_id)s AND tenant || '' = %(tenant)s;

-- name: delete_finished_tasks
-- Along tasks_by_agent; their events go by ON DELETE CASCADE.
DELETE FROM tasks WHERE seq IN (
    SELECT seq FROM tasks
    WHERE tenant = %(tenant)s AND agent_id = %(agent_id)s AND status IN ('completed', 'failed', 'cancelled')
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
);

-- name: get_task
SELECT * FROM tasks WHERE task_id = %(task_id)s AND tenant || '' = %(tenant)s;

-- name: get_task_locked
SELECT * FROM tasks WHERE task_id = %(task_id)s AND tenant || '' = %(tenant)s FOR NO KEY UPDATE;

-- name: get_task_if_free
-- get_task_locked that does not wait: no row if another transaction holds the lock (or there
-- is no such task). The writer tries it first, so it never waits while holding locks it need
-- not hold (postgres_writer).
SELECT * FROM tasks WHERE task_id = %(task_id)s AND tenant || '' = %(tenant)s FOR NO KEY UPDATE SKIP LOCKED;

-- name: get_tasks_locked
-- Several tasks a write function will change (a worker's batch of reports), read and locked in
-- one round trip, in one order, as every such read locks them.
SELECT * FROM tasks WHERE task_id = ANY(%(task_ids)s) AND tenant || '' = %(tenant)s
ORDER BY task_id
FOR NO KEY UPDATE;

-- name: get_tasks_if_free
-- get_tasks_locked that does not wait: rows another transaction holds are left out.
SELECT * FROM tasks WHERE task_id = ANY(%(task_ids)s) AND tenant || '' = %(tenant)s
ORDER BY task_id
FOR NO KEY UPDATE SKIP LOCKED;

-- name: list_tasks
-- before_seq is always bound (a huge value when there is no cursor), so this stays one range
-- scan of tasks_by_agent from the newest row, whichever page is asked for.
SELECT * FROM tasks
WHERE tenant = %(tenant)s AND agent_id = %(agent_id)s AND seq < %(before_seq)s
    AND (%(status)s::text IS NULL OR status = %(status)s::text)
ORDER BY seq DESC
LIMIT %(limit)s;

-- name: unfinished_tasks
-- A NULL limit means no limit.
SELECT * FROM tasks
WHERE tenant = %(tenant)s AND agent_id = %(agent_id)s AND status IN ('queued', 'running', 'awaiting_input')
ORDER BY seq
LIMIT %(limit)s;

-- name: unfinished_tasks_locked
SELECT * FROM tasks
WHERE tenant = %(tenant)s AND agent_id = %(agent_id)s AND status IN ('queued', 'running', 'awaiting_input')
ORDER BY seq
LIMIT %(limit)s
FOR NO KEY UPDATE;

-- name: insert_task
INSERT INTO tasks (
    task_id, tenant, agent_id, message, status, priority, metadata, callback_mode, webhook_url,
    timeout_seconds, created_at, updated_at, started_at, completed_at, progress, output_bytes,
    output_after, result, error, input_prompt, attempt, last_sequence, status_reason, worker_id,
    lease_expires_at, deadline_at, run_seconds_left, traceparent, tracestate
) VALUES (
    %(task_id)s, %(tenant)s, %(agent_id)s, %(message)s, %(status)s, %(priority)s, %(metadata)s,
    %(callback_mode)s, %(webhook_url)s, %(timeout_seconds)s, %(created_at)s, %(updated_at)s,
    %(started_at)s, %(completed_at)s, %(progress)s, %(output_bytes)s, %(output_after)s, %(result)s,
    %(error)s, %(input_prompt)s, %(attempt)s, %(last_sequence)s, %(status_reason)s, %(worker_id)s,
    %(lease_expires_at)s, %(deadline_at)s, %(run_seconds_left)s, %(traceparent)s, %(tracestate)s
)
RETURNING seq;

-- name: take_task_seqs
-- Seqs for the tasks a batch may insert, in one round trip instead of a RETURNING each: the
-- writer numbers its inserts itself (insert_task_numbered). Taken per batch and dropped after
-- it, so a task's seq is still taken within its batch's transaction, as with RETURNING; the
-- unused ones are gaps, which an identity column has anyway.
SELECT nextval(pg_get_serial_sequence('tasks', 'seq')) AS seq FROM generate_series(1, %(count)s);

-- name: insert_task_numbered
-- insert_task with a seq from take_task_seqs (OVERRIDING SYSTEM VALUE: seq is GENERATED ALWAYS).
INSERT INTO tasks (
    seq, task_id, tenant, agent_id, message, status, priority, metadata, callback_mode, webhook_url,
    timeout_seconds, created_at, updated_at, started_at, completed_at, progress, output_bytes,
    output_after, result, error, input_prompt, attempt, last_sequence, status_reason, worker_id,
    lease_expires_at, deadline_at, run_seconds_left, traceparent, tracestate
) OVERRIDING SYSTEM VALUE VALUES (
    %(seq)s, %(task_id)s, %(tenant)s, %(agent_id)s, %(message)s, %(status)s, %(priority)s, %(metadata)s,
    %(callback_mode)s, %(webhook_url)s, %(timeout_seconds)s, %(created_at)s, %(updated_at)s,
    %(started_at)s, %(completed_at)s, %(progress)s, %(output_bytes)s, %(output_after)s, %(result)s,
    %(error)s, %(input_prompt)s, %(attempt)s, %(last_sequence)s, %(status_reason)s, %(worker_id)s,
    %(lease_expires_at)s, %(deadline_at)s, %(run_seconds_left)s, %(traceparent)s, %(tracestate)s
);

-- name: update_task
-- Identity (tenant, task_id, agent_id, seq) and created_at never change.
UPDATE tasks SET
    message = %(message)s,
    status = %(status)s,
    priority = %(priority)s,
    metadata = %(metadata)s,
    callback_mode = %(callback_mode)s,
    webhook_url = %(webhook_url)s,
    timeout_seconds = %(timeout_seconds)s,
    updated_at = %(updated_at)s,
    started_at = %(started_at)s,
    completed_at = %(completed_at)s,
    progress = %(progress)s,
    output_bytes = %(output_bytes)s,
    output_after = %(output_after)s,
    result = %(result)s,
    error = %(error)s,
    input_prompt = %(input_prompt)s,
    attempt = %(attempt)s,
    last_sequence = %(last_sequence)s,
    status_reason = %(status_reason)s,
    worker_id = %(worker_id)s,
    lease_expires_at = %(lease_expires_at)s,
    deadline_at = %(deadline_at)s,
    run_seconds_left = %(run_seconds_left)s
WHERE task_id = %(task_id)s AND tenant || '' = %(tenant)s;

-- name: next_queued
-- The agent's next tasks in dispatch order: highest priority first, FIFO within one. A range
-- scan of the partial index tasks_queued from its head.
SELECT * FROM tasks
WHERE agent_id = %(agent_id)s AND status = 'queued' AND tenant = %(tenant)s
ORDER BY priority DESC, seq
LIMIT %(limit)s;

-- name: next_queued_locked
-- The claim: rows another transaction is claiming (or changing) are skipped, not waited for,
-- so servers claiming for one agent at once each get different tasks and never wait.
SELECT * FROM tasks
WHERE agent_id = %(agent_id)s AND status = 'queued' AND tenant = %(tenant)s
ORDER BY priority DESC, seq
LIMIT %(limit)s
FOR NO KEY UPDATE SKIP LOCKED;

-- name: expired_leases
SELECT * FROM tasks
WHERE status IN ('running', 'awaiting_input') AND lease_expires_at <= %(now)s
ORDER BY lease_expires_at
LIMIT %(limit)s;

-- name: expired_leases_locked
SELECT * FROM tasks
WHERE status IN ('running', 'awaiting_input') AND lease_expires_at <= %(now)s
ORDER BY lease_expires_at
LIMIT %(limit)s
FOR NO KEY UPDATE SKIP LOCKED;

-- name: overdue_tasks
SELECT * FROM tasks
WHERE status IN ('running', 'awaiting_input') AND deadline_at <= %(now)s
ORDER BY deadline_at
LIMIT %(limit)s;

-- name: overdue_tasks_locked
SELECT * FROM tasks
WHERE status IN ('running', 'awaiting_input') AND deadline_at <= %(now)s
ORDER BY deadline_at
LIMIT %(limit)s
FOR NO KEY UPDATE SKIP LOCKED;

-- name: worker_tasks
SELECT * FROM tasks
WHERE worker_id = %(worker_id)s AND status IN ('running', 'awaiting_input')
ORDER BY seq;

-- name: worker_tasks_locked
SELECT * FROM tasks
WHERE worker_id = %(worker_id)s AND status IN ('running', 'awaiting_input')
ORDER BY seq
FOR NO KEY UPDATE;

-- name: renew_leases
UPDATE tasks SET lease_expires_at = %(until)s
WHERE worker_id = %(worker_id)s AND status IN ('running', 'awaiting_input') AND task_id = ANY(%(task_ids)s);

-- name: events_of_type
SELECT * FROM task_events
WHERE tenant = %(tenant)s AND task_id = %(task_id)s AND type = %(type)s
ORDER BY sequence;

-- name: task_output
-- The current attempt's output as one JSON array of its chunks, in order: json_agg copies each
-- chunk's JSON text as stored, so one row comes back however many chunks there are, and no
-- string is decoded in SQL (->> would fail on a \u0000 that JSON allows).
SELECT json_agg(data -> 'output' ORDER BY sequence) AS chunks FROM task_events
WHERE task_id = %(task_id)s AND tenant = %(tenant)s AND type = 'output' AND sequence > %(after_sequence)s;

-- name: queued_at_or_above
-- From the sharded counts the triggers of 0002_queue_counts keep: at most 64 rows a priority,
-- whatever the backlog.
SELECT coalesce(sum(queued), 0) AS queued FROM queue_counts
WHERE tenant = %(tenant)s AND agent_id = %(agent_id)s AND priority >= %(priority)s;

-- name: queued_by_priority
-- The same counts, every priority of the agent at once: a write batch reads them once and keeps
-- them up to date with its own changes (PostgresWriteTx.queued_at_or_above).
SELECT priority, sum(queued) AS queued FROM queue_counts
WHERE tenant = %(tenant)s AND agent_id = %(agent_id)s
GROUP BY priority;

-- name: queued_in_tenant
-- The same sharded counts over every agent of the tenant: one range of the primary key.
SELECT coalesce(sum(queued), 0) AS queued FROM queue_counts WHERE tenant = %(tenant)s;

-- name: recent_run_seconds
-- NULL (no rows) means no history.
SELECT avg(extract(epoch FROM completed_at - started_at)) AS seconds FROM (
    SELECT completed_at, started_at FROM tasks
    WHERE tenant = %(tenant)s AND agent_id = %(agent_id)s AND status = 'completed'
        AND started_at IS NOT NULL AND completed_at IS NOT NULL
    ORDER BY completed_at DESC
    LIMIT %(limit)s
) AS recent;

-- name: events_after
SELECT * FROM task_events
WHERE tenant = %(tenant)s AND task_id = %(task_id)s AND sequence > %(after_sequence)s
ORDER BY sequence
LIMIT %(limit)s;

-- name: append_event
INSERT INTO task_events (task_id, sequence, tenant, type, status, time, data)
VALUES (%(task_id)s, %(sequence)s, %(tenant)s, %(type)s, %(status)s, %(time)s, %(data)s);

-- name: get_api_key
-- By key id alone: this is how a presented key is found before its tenant is known.
SELECT * FROM api_keys WHERE key_id = %(key_id)s;

-- name: list_api_keys
SELECT * FROM api_keys WHERE tenant = %(tenant)s ORDER BY created_at, key_id;

-- name: put_api_key
INSERT INTO api_keys (key_id, tenant, role, secret_hash, created_at, revoked_at, description, agent_id)
VALUES (
    %(key_id)s, %(tenant)s, %(role)s, %(secret_hash)s, %(created_at)s, %(revoked_at)s, %(description)s,
    %(agent_id)s
)
ON CONFLICT (key_id) DO UPDATE SET
    tenant = excluded.tenant,
    role = excluded.role,
    secret_hash = excluded.secret_hash,
    created_at = excluded.created_at,
    revoked_at = excluded.revoked_at,
    description = excluded.description,
    agent_id = excluded.agent_id;

-- name: revoke_api_key
-- A second revoke keeps the first time: that is when the key stopped working.
UPDATE api_keys SET revoked_at = coalesce(revoked_at, %(at)s) WHERE key_id = %(key_id)s;

-- name: get_idempotency
SELECT * FROM idempotency
WHERE tenant = %(tenant)s AND scope = %(scope)s AND key = %(key)s AND expires_at > %(now)s;

-- name: put_idempotency
-- Replaces an expired row that the purge has not reached yet.
INSERT INTO idempotency (tenant, scope, key, request_hash, response, created_at, expires_at)
VALUES (%(tenant)s, %(scope)s, %(key)s, %(request_hash)s, %(response)s, %(created_at)s, %(expires_at)s)
ON CONFLICT (tenant, scope, key) DO UPDATE SET
    request_hash = excluded.request_hash,
    response = excluded.response,
    created_at = excluded.created_at,
    expires_at = excluded.expires_at;

-- name: purge_idempotency
DELETE FROM idempotency WHERE (tenant, scope, key) IN (
    SELECT tenant, scope, key FROM idempotency WHERE expires_at <= %(now)s
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
);

-- name: get_meta
SELECT value FROM meta WHERE name = %(name)s;

-- name: set_meta
INSERT INTO meta (name, value) VALUES (%(name)s, %(value)s)
ON CONFLICT (name) DO UPDATE SET value = excluded.value;

-- name: insert_delivery
INSERT INTO webhook_deliveries (
    delivery_id, tenant, task_id, agent_id, event_type, url, snapshot, event_time, state, attempts,
    last_status_code, last_error, created_at, updated_at, next_attempt_at, delivered_at, last_attempt_at
) VALUES (
    %(delivery_id)s, %(tenant)s, %(task_id)s, %(agent_id)s, %(event_type)s, %(url)s, %(snapshot)s,
    %(event_time)s, %(state)s, %(attempts)s, %(last_status_code)s, %(last_error)s, %(created_at)s,
    %(updated_at)s, %(next_attempt_at)s, %(delivered_at)s, %(last_attempt_at)s
);

-- name: update_delivery
-- What a delivery is (its event, target and snapshot) never changes; only how it is going.
UPDATE webhook_deliveries SET
    state = %(state)s,
    attempts = %(attempts)s,
    last_status_code = %(last_status_code)s,
    last_error = %(last_error)s,
    updated_at = %(updated_at)s,
    next_attempt_at = %(next_attempt_at)s,
    delivered_at = %(delivered_at)s,
    last_attempt_at = %(last_attempt_at)s
WHERE delivery_id = %(delivery_id)s AND tenant || '' = %(tenant)s;

-- name: get_delivery
SELECT * FROM webhook_deliveries WHERE delivery_id = %(delivery_id)s AND tenant || '' = %(tenant)s;

-- name: get_delivery_locked
SELECT * FROM webhook_deliveries WHERE delivery_id = %(delivery_id)s AND tenant || '' = %(tenant)s
FOR NO KEY UPDATE;

-- name: task_deliveries
SELECT * FROM webhook_deliveries
WHERE tenant = %(tenant)s AND task_id = %(task_id)s
ORDER BY created_at, delivery_id;

-- name: due_deliveries
-- At most per_tenant of each tenant, so one tenant's backlog (say, to a dead endpoint) cannot
-- take every slot of a round.
SELECT * FROM (
    SELECT *, row_number() OVER (PARTITION BY tenant ORDER BY next_attempt_at) AS place
    FROM webhook_deliveries
    WHERE state = 'pending' AND next_attempt_at <= %(now)s
) AS due
WHERE place <= %(per_tenant)s
ORDER BY next_attempt_at
LIMIT %(limit)s;

-- name: due_deliveries_locked
-- The same choice, then the rows locked, skipping those another server is claiming. A row
-- cannot be locked through a window function, hence the join back to the table.
SELECT d.* FROM webhook_deliveries AS d
JOIN (
    SELECT delivery_id, next_attempt_at FROM (
        SELECT delivery_id, next_attempt_at,
            row_number() OVER (PARTITION BY tenant ORDER BY next_attempt_at) AS place
        FROM webhook_deliveries
        WHERE state = 'pending' AND next_attempt_at <= %(now)s
    ) AS ranked
    WHERE place <= %(per_tenant)s
    ORDER BY next_attempt_at
    LIMIT %(limit)s
) AS due USING (delivery_id)
WHERE d.state = 'pending' AND d.next_attempt_at <= %(now)s
ORDER BY due.next_attempt_at
FOR NO KEY UPDATE OF d SKIP LOCKED;

-- name: get_signing_secret
SELECT * FROM signing_secrets WHERE tenant = %(tenant)s;

-- name: put_signing_secret
INSERT INTO signing_secrets (tenant, secret, created_at, previous_secret, previous_until)
VALUES (%(tenant)s, %(secret)s, %(created_at)s, %(previous_secret)s, %(previous_until)s)
ON CONFLICT (tenant) DO UPDATE SET
    secret = excluded.secret,
    created_at = excluded.created_at,
    previous_secret = excluded.previous_secret,
    previous_until = excluded.previous_until;

-- name: open_task_counts
-- Metrics, store-wide. Queued tasks from queue_counts (its triggers keep it: no scan of a
-- backlog however long); running and awaiting ones from the rows in flight, through the
-- partial indexes whose predicate this repeats.
SELECT tenant, agent_id, 'queued' AS status, sum(queued)::bigint AS n FROM queue_counts
GROUP BY tenant, agent_id HAVING sum(queued) > 0
UNION ALL
SELECT tenant, agent_id, status, count(*) AS n FROM tasks
WHERE status IN ('running', 'awaiting_input')
GROUP BY tenant, agent_id, status;

-- name: pending_delivery_count
-- Metrics, store-wide: the backlog, through the deliveries_due partial index.
SELECT count(*) AS n FROM webhook_deliveries WHERE state = 'pending';

-- name: failing_delivery_urls
-- Metrics, store-wide: where the deliveries that already failed and wait for another attempt
-- are going, the most first; through the deliveries_due partial index.
SELECT url, count(*) AS n FROM webhook_deliveries
WHERE state = 'pending' AND attempts > 0
GROUP BY url
ORDER BY n DESC, url
LIMIT %(limit)s;
