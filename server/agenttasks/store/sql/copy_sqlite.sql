-- What `agenttasks store copy` reads from a SQLite store (store/copy.py): every row of every
-- tenant, table by table, in one read transaction so that the copy is one snapshot. Rows are
-- read with SELECT * and decoded by store/rows.py, as the SQLite backend decodes them. Parents
-- come before children (agents before their tasks, tasks before their events) only through the
-- order the tables are copied in; within a table, rows go in primary-key order (tasks by seq).

-- name: count_agents
SELECT count(*) FROM agents;

-- name: all_agents
SELECT * FROM agents ORDER BY agent_id;

-- name: count_tasks
SELECT count(*) FROM tasks;

-- name: all_tasks
SELECT * FROM tasks ORDER BY seq;

-- name: last_task_seq
-- The highest seq ever handed out, that of a task since deleted too (AUTOINCREMENT keeps it in
-- sqlite_sequence), so the copy's sequence goes on after it and no seq is used twice.
SELECT max(
    coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'tasks'), 0),
    coalesce((SELECT max(seq) FROM tasks), 0)
) AS last_seq;

-- name: count_task_events
SELECT count(*) FROM task_events;

-- name: all_task_events
SELECT * FROM task_events ORDER BY task_id, sequence;

-- name: count_api_keys
SELECT count(*) FROM api_keys;

-- name: all_api_keys
SELECT * FROM api_keys ORDER BY key_id;

-- name: count_idempotency
SELECT count(*) FROM idempotency;

-- name: all_idempotency
SELECT * FROM idempotency ORDER BY tenant, scope, key;

-- name: count_webhook_deliveries
SELECT count(*) FROM webhook_deliveries;

-- name: all_webhook_deliveries
SELECT * FROM webhook_deliveries ORDER BY delivery_id;

-- name: count_signing_secrets
SELECT count(*) FROM signing_secrets;

-- name: all_signing_secrets
SELECT * FROM signing_secrets ORDER BY tenant;

-- name: count_meta
SELECT count(*) FROM meta;

-- name: all_meta
SELECT * FROM meta ORDER BY name;
