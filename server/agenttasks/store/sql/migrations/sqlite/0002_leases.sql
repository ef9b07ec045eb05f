-- Workers: who holds a task, until when, and when its running (or input) time runs out.
-- worker_id is the holding connection ('' when none); lease_expires_at and deadline_at are
-- microseconds since the epoch; run_seconds_left keeps the running time a task still had when it
-- began awaiting input, since time awaiting input does not count against its timeout.
ALTER TABLE tasks ADD COLUMN worker_id TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN lease_expires_at INTEGER;
ALTER TABLE tasks ADD COLUMN deadline_at INTEGER;
ALTER TABLE tasks ADD COLUMN run_seconds_left REAL;

-- The lease and deadline sweeps read only tasks in flight, earliest first.
CREATE INDEX tasks_lease_expiry ON tasks (lease_expires_at)
    WHERE status IN ('running', 'awaiting_input');
CREATE INDEX tasks_deadline ON tasks (deadline_at)
    WHERE status IN ('running', 'awaiting_input');
-- A worker's held tasks, for heartbeats and when its connection ends.
CREATE INDEX tasks_by_worker ON tasks (worker_id)
    WHERE status IN ('running', 'awaiting_input');
