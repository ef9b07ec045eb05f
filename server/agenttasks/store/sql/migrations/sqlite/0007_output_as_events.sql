-- A task's output is kept only as its output events (which every chunk already wrote): the task
-- row had a copy of the whole output, rewritten by every chunk, so appending cost as much as
-- the output so far. The row keeps what an append needs instead: how many bytes the current
-- attempt has written (for the 1 MiB cap), and after which event sequence its output starts
-- (a requeue starts a new attempt with no output; the earlier attempts' events stay).
ALTER TABLE tasks ADD COLUMN output_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN output_after INTEGER NOT NULL DEFAULT 0;

-- A requeue is the only status event back to 'queued' ('created' is an event type of its own).
UPDATE tasks SET output_after = coalesce(
    (SELECT max(e.sequence) FROM task_events e
     WHERE e.task_id = tasks.task_id AND e.type = 'status' AND e.status = 'queued'),
    0
);

UPDATE tasks SET output_bytes = (
    SELECT coalesce(sum(length(CAST(json_extract(e.data, '$.output') AS BLOB))), 0)
    FROM task_events e
    WHERE e.task_id = tasks.task_id AND e.type = 'output' AND e.sequence > tasks.output_after
);

ALTER TABLE tasks DROP COLUMN output;
