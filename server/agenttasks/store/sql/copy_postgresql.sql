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

-- name: continue_task_seq
-- The next task inserted gets last_seq + 1 (is_called = true: last_seq counts as handed out).
SELECT setval(pg_get_serial_sequence('tasks', 'seq'), %(last_seq)s, true);
