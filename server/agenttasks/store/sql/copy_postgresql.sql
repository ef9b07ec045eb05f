-- What `agenttasks store copy` runs on the PostgreSQL target (store/copy.py) besides the
-- backend's own inserts of postgresql.sql. Parameters are named, psycopg style, so a literal
-- percent sign must not appear here, not even in a comment.

-- name: tables_with_rows
-- The tables that already hold tenant data; the copy goes only into a store without any.
-- meta is not among them: it holds no tenant's data (see copy.py).
SELECT name FROM (
    SELECT 'agents' AS name WHERE EXISTS (SELECT 1 FROM agents)
    UNION ALL SELECT 'tasks' WHERE EXISTS (SELECT 1 FROM tasks)
    UNION ALL SELECT 'task_events' WHERE EXISTS (SELECT 1 FROM task_events)
    UNION ALL SELECT 'api_keys' WHERE EXISTS (SELECT 1 FROM api_keys)
    UNION ALL SELECT 'idempotency' WHERE EXISTS (SELECT 1 FROM idempotency)
    UNION ALL SELECT 'webhook_deliveries' WHERE EXISTS (SELECT 1 FROM webhook_deliveries)
    UNION ALL SELECT 'signing_secrets' WHERE EXISTS (SELECT 1 FROM signing_secrets)
) AS found;

-- name: insert_task_with_seq
-- As insert_task, but keeping the task's seq: it is the task's place in its agent's FIFO and the
-- cursor of task lists, so the copy must not renumber it. OVERRIDING SYSTEM VALUE is how an
-- identity column GENERATED ALWAYS takes a given value. The AFTER INSERT trigger of
-- 0002_queue_counts counts each queued task as it goes in, so Submit's estimate is right.
INSERT INTO tasks (
    seq, task_id, tenant, agent_id, message, status, priority, metadata, callback_mode, webhook_url,
    timeout_seconds, created_at, updated_at, started_at, completed_at, progress, output_bytes,
    output_after, result, error, input_prompt, attempt, last_sequence, status_reason, worker_id,
    lease_expires_at, deadline_at, run_seconds_left
) OVERRIDING SYSTEM VALUE VALUES (
    %(seq)s, %(task_id)s, %(tenant)s, %(agent_id)s, %(message)s, %(status)s, %(priority)s, %(metadata)s,
    %(callback_mode)s, %(webhook_url)s, %(timeout_seconds)s, %(created_at)s, %(updated_at)s,
    %(started_at)s, %(completed_at)s, %(progress)s, %(output_bytes)s, %(output_after)s, %(result)s,
    %(error)s, %(input_prompt)s, %(attempt)s, %(last_sequence)s, %(status_reason)s, %(worker_id)s,
    %(lease_expires_at)s, %(deadline_at)s, %(run_seconds_left)s
);

-- name: continue_task_seq
-- The next task inserted gets last_seq + 1 (is_called = true: last_seq counts as handed out).
SELECT setval(pg_get_serial_sequence('tasks', 'seq'), %(last_seq)s, true);
