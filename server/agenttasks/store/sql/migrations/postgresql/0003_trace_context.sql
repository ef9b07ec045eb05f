-- The W3C trace context of a task's Submit (observe.tracing): its dispatch, its handling, its
-- reports and its webhooks continue that trace, on whichever server they happen. Written once by
-- the insert and never updated; '' for tasks submitted without tracing (and those before this).
-- A constant default: PostgreSQL adds such a column without rewriting the table.
ALTER TABLE tasks ADD COLUMN traceparent text NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN tracestate text NOT NULL DEFAULT '';
