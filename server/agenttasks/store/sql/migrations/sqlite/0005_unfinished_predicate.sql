-- tasks_unfinished again, with its predicate spelled as ORs instead of a three-item IN list.
-- SQLite evaluates a partial index's predicate for the old and the new row of every UPDATE and
-- for every INSERT, and it runs an IN list of more than two constants through a temporary table
-- that it builds each time. On a database of 20,000 tasks that took 35 of the 55 µs of each task
-- update; spelled as ORs, an update takes 20 µs. Queries that use the index must repeat the
-- predicate word for word (see unfinished_tasks in sqlite.sql).
DROP INDEX tasks_unfinished;
CREATE INDEX tasks_unfinished ON tasks (tenant, agent_id, seq)
    WHERE status = 'queued' OR status = 'running' OR status = 'awaiting_input';
