-- Every statement the SQLite backend runs, by name. Parameters are named (:tenant) and bound
-- from dicts. Times are INTEGER microseconds since the epoch (UTC). Task and agent rows are
-- read with SELECT * and mapped by column name, so a migration that adds a column does not
-- have to touch every query here.

-- name: create_schema_migrations
-- Outside the versioned migrations: it is what records them.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at INTEGER NOT NULL
);

-- name: applied_migrations
SELECT version, name, applied_at FROM schema_migrations ORDER BY version;

-- name: record_migration
INSERT INTO schema_migrations (version, name, applied_at) VALUES (:version, :name, :applied_at);

-- name: get_agent
SELECT * FROM agents WHERE tenant = :tenant AND agent_id = :agent_id;

-- name: list_agents
-- A row-value cursor keeps this one index range scan whether or not a page cursor is given.
SELECT * FROM agents
WHERE tenant = :tenant AND (created_at, agent_id) > (:after_created, :after_id)
ORDER BY created_at, agent_id
LIMIT :limit;

-- name: insert_agent
INSERT INTO agents (
    tenant, agent_id, name, description, status, status_message, default_timeout_seconds,
    max_attempts, input_timeout_seconds, metadata, created_at, updated_at
) VALUES (
    :tenant, :agent_id, :name, :description, :status, :status_message, :default_timeout_seconds,
    :max_attempts, :input_timeout_seconds, :metadata, :created_at, :updated_at
);

-- name: update_agent
UPDATE agents SET
    name = :name,
    description = :description,
    status = :status,
    status_message = :status_message,
    default_timeout_seconds = :default_timeout_seconds,
    max_attempts = :max_attempts,
    input_timeout_seconds = :input_timeout_seconds,
    metadata = :metadata,
    updated_at = :updated_at
WHERE tenant = :tenant AND agent_id = :agent_id;

-- name: delete_agent
-- Tasks and their events go by ON DELETE CASCADE.
DELETE FROM agents WHERE tenant = :tenant AND agent_id = :agent_id;

-- name: delete_finished_tasks
-- Along tasks_by_agent; their events go by ON DELETE CASCADE.
DELETE FROM tasks WHERE seq IN (
    SELECT seq FROM tasks
    WHERE tenant = :tenant AND agent_id = :agent_id AND status IN ('completed', 'failed', 'cancelled')
    LIMIT :limit
);

-- name: get_task
SELECT * FROM tasks WHERE tenant = :tenant AND task_id = :task_id;

-- name: list_tasks
-- :before_seq is always bound (a huge value when there is no cursor) so this stays a range
-- scan of tasks_by_agent from the newest row, whichever page is asked for.
SELECT * FROM tasks
WHERE tenant = :tenant AND agent_id = :agent_id AND seq < :before_seq
    AND (:status IS NULL OR status = :status)
ORDER BY seq DESC
LIMIT :limit;

-- name: unfinished_tasks
-- The status test must match the tasks_unfinished index predicate word for word for SQLite to
-- use it. A negative :limit means no limit.
SELECT * FROM tasks
WHERE tenant = :tenant AND agent_id = :agent_id
    AND (status = 'queued' OR status = 'running' OR status = 'awaiting_input')
ORDER BY seq
LIMIT :limit;

-- name: insert_task
INSERT INTO tasks (
    task_id, tenant, agent_id, message, status, priority, metadata, callback_mode, webhook_url,
    timeout_seconds, created_at, updated_at, started_at, completed_at, progress, output_bytes, output_after, result,
    error, input_prompt, attempt, last_sequence, status_reason, worker_id, lease_expires_at,
    deadline_at, run_seconds_left, traceparent, tracestate
) VALUES (
    :task_id, :tenant, :agent_id, :message, :status, :priority, :metadata, :callback_mode,
    :webhook_url, :timeout_seconds, :created_at, :updated_at, :started_at, :completed_at,
    :progress, :output_bytes, :output_after, :result, :error, :input_prompt, :attempt, :last_sequence, :status_reason,
    :worker_id, :lease_expires_at, :deadline_at, :run_seconds_left, :traceparent, :tracestate
);

-- name: update_task
-- Identity (tenant, task_id, agent_id, seq) and created_at never change.
UPDATE tasks SET
    message = :message,
    status = :status,
    priority = :priority,
    metadata = :metadata,
    callback_mode = :callback_mode,
    webhook_url = :webhook_url,
    timeout_seconds = :timeout_seconds,
    updated_at = :updated_at,
    started_at = :started_at,
    completed_at = :completed_at,
    progress = :progress,
    output_bytes = :output_bytes,
    output_after = :output_after,
    result = :result,
    error = :error,
    input_prompt = :input_prompt,
    attempt = :attempt,
    last_sequence = :last_sequence,
    status_reason = :status_reason,
    worker_id = :worker_id,
    lease_expires_at = :lease_expires_at,
    deadline_at = :deadline_at,
    run_seconds_left = :run_seconds_left
WHERE tenant = :tenant AND task_id = :task_id;

-- name: next_queued
-- The agent's next tasks in dispatch order: highest priority first, FIFO within one. A range
-- scan of the partial index tasks_queued from its head.
SELECT * FROM tasks
WHERE agent_id = :agent_id AND status = 'queued' AND tenant = :tenant
ORDER BY priority DESC, seq
LIMIT :limit;

-- name: expired_leases
SELECT * FROM tasks
WHERE status IN ('running', 'awaiting_input') AND lease_expires_at <= :now
ORDER BY lease_expires_at
LIMIT :limit;

-- name: overdue_tasks
SELECT * FROM tasks
WHERE status IN ('running', 'awaiting_input') AND deadline_at <= :now
ORDER BY deadline_at
LIMIT :limit;

-- name: worker_tasks
SELECT * FROM tasks
WHERE worker_id = :worker_id AND status IN ('running', 'awaiting_input')
ORDER BY seq;

-- name: renew_leases
UPDATE tasks SET lease_expires_at = :until
WHERE worker_id = :worker_id AND status IN ('running', 'awaiting_input')
    AND task_id IN (SELECT value FROM json_each(:task_ids));

-- name: events_of_type
SELECT * FROM task_events
WHERE tenant = :tenant AND task_id = :task_id AND type = :type
ORDER BY sequence;

-- name: task_output
-- The current attempt's output, from its output events (json_extract in C: no Python per row).
SELECT json_extract(data, '$.output') FROM task_events
WHERE task_id = :task_id AND tenant = :tenant AND type = 'output' AND sequence > :after_sequence
ORDER BY sequence;

-- name: queued_at_or_above
-- From the per-priority counts the triggers of 0004_queue_counts keep: one short index range,
-- whatever the backlog.
SELECT coalesce(sum(queued), 0) FROM queue_counts
WHERE tenant = :tenant AND agent_id = :agent_id AND priority >= :priority;

-- name: queued_in_tenant
-- The same counts over every agent of the tenant: one index range of the primary key.
SELECT coalesce(sum(queued), 0) FROM queue_counts WHERE tenant = :tenant;

-- name: recent_run_seconds
-- Microseconds; NULL (no rows) means no history.
SELECT avg(completed_at - started_at) FROM (
    SELECT completed_at, started_at FROM tasks
    WHERE tenant = :tenant AND agent_id = :agent_id AND status = 'completed'
        AND started_at IS NOT NULL AND completed_at IS NOT NULL
    ORDER BY completed_at DESC
    LIMIT :limit
);

-- name: events_after
SELECT * FROM task_events
WHERE tenant = :tenant AND task_id = :task_id AND sequence > :after_sequence
ORDER BY sequence
LIMIT :limit;

-- name: append_event
INSERT INTO task_events (task_id, sequence, tenant, type, status, time, data)
VALUES (:task_id, :sequence, :tenant, :type, :status, :time, :data);

-- name: get_api_key
-- By key id alone: this is how a presented key is found before its tenant is known.
SELECT * FROM api_keys WHERE key_id = :key_id;

-- name: list_api_keys
SELECT * FROM api_keys WHERE tenant = :tenant ORDER BY created_at, key_id;

-- name: put_api_key
INSERT INTO api_keys (key_id, tenant, role, secret_hash, created_at, revoked_at, description, agent_id)
VALUES (:key_id, :tenant, :role, :secret_hash, :created_at, :revoked_at, :description, :agent_id)
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
UPDATE api_keys SET revoked_at = coalesce(revoked_at, :at) WHERE key_id = :key_id;

-- name: get_idempotency
SELECT * FROM idempotency
WHERE tenant = :tenant AND scope = :scope AND key = :key AND expires_at > :now;

-- name: put_idempotency
-- Replaces an expired row that the purge has not reached yet.
INSERT INTO idempotency (tenant, scope, key, request_hash, response, created_at, expires_at)
VALUES (:tenant, :scope, :key, :request_hash, :response, :created_at, :expires_at)
ON CONFLICT (tenant, scope, key) DO UPDATE SET
    request_hash = excluded.request_hash,
    response = excluded.response,
    created_at = excluded.created_at,
    expires_at = excluded.expires_at;

-- name: purge_idempotency
DELETE FROM idempotency WHERE (tenant, scope, key) IN (
    SELECT tenant, scope, key FROM idempotency WHERE expires_at <= :now LIMIT :limit
);

-- name: get_meta
SELECT value FROM meta WHERE name = :name;

-- name: set_meta
INSERT INTO meta (name, value) VALUES (:name, :value)
ON CONFLICT (name) DO UPDATE SET value = excluded.value;

-- name: insert_delivery
INSERT INTO webhook_deliveries (
    delivery_id, tenant, task_id, agent_id, event_type, url, snapshot, event_time, state, attempts,
    last_status_code, last_error, created_at, updated_at, next_attempt_at, delivered_at, last_attempt_at
) VALUES (
    :delivery_id, :tenant, :task_id, :agent_id, :event_type, :url, :snapshot, :event_time, :state,
    :attempts, :last_status_code, :last_error, :created_at, :updated_at, :next_attempt_at,
    :delivered_at, :last_attempt_at
);

-- name: update_delivery
-- What a delivery is (its event, target and snapshot) never changes; only how it is going.
UPDATE webhook_deliveries SET
    state = :state,
    attempts = :attempts,
    last_status_code = :last_status_code,
    last_error = :last_error,
    updated_at = :updated_at,
    next_attempt_at = :next_attempt_at,
    delivered_at = :delivered_at,
    last_attempt_at = :last_attempt_at
WHERE tenant = :tenant AND delivery_id = :delivery_id;

-- name: get_delivery
SELECT * FROM webhook_deliveries WHERE tenant = :tenant AND delivery_id = :delivery_id;

-- name: task_deliveries
SELECT * FROM webhook_deliveries WHERE tenant = :tenant AND task_id = :task_id ORDER BY created_at, delivery_id;

-- name: due_deliveries
-- At most :per_tenant of each tenant, so one tenant's backlog (say, to a dead endpoint) cannot
-- take every slot of a round.
SELECT * FROM (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY tenant ORDER BY next_attempt_at) AS place
    FROM webhook_deliveries
    WHERE state = 'pending' AND next_attempt_at <= :now
)
WHERE place <= :per_tenant
ORDER BY next_attempt_at
LIMIT :limit;

-- name: get_signing_secret
SELECT * FROM signing_secrets WHERE tenant = :tenant;

-- name: put_signing_secret
INSERT INTO signing_secrets (tenant, secret, created_at, previous_secret, previous_until)
VALUES (:tenant, :secret, :created_at, :previous_secret, :previous_until)
ON CONFLICT (tenant) DO UPDATE SET
    secret = excluded.secret,
    created_at = excluded.created_at,
    previous_secret = excluded.previous_secret,
    previous_until = excluded.previous_until;

-- name: open_task_counts
-- Metrics, store-wide. Queued tasks from queue_counts (its triggers keep it: no scan of a
-- backlog however long); running and awaiting ones from the rows in flight, through the
-- partial indexes whose predicate this repeats word for word.
SELECT tenant, agent_id, 'queued' AS status, sum(queued) AS n FROM queue_counts
GROUP BY tenant, agent_id HAVING sum(queued) > 0
UNION ALL
SELECT tenant, agent_id, status, count(*) AS n FROM tasks
WHERE status IN ('running', 'awaiting_input')
GROUP BY tenant, agent_id, status;

-- name: pending_delivery_count
-- Metrics, store-wide: the backlog, through the deliveries_due partial index.
SELECT count(*) FROM webhook_deliveries WHERE state = 'pending';

-- name: failing_delivery_urls
-- Metrics, store-wide: where the deliveries that already failed and wait for another attempt
-- are going, the most first; through the deliveries_due partial index.
SELECT url, count(*) AS n FROM webhook_deliveries
WHERE state = 'pending' AND attempts > 0
GROUP BY url
ORDER BY n DESC, url
LIMIT :limit;
