-- The webhook outbox: one row per event to POST, written in the transaction of the change it
-- reports. No foreign key to tasks: a delivery outlives its task (an agent deleted with its
-- tasks still reports their cancellation).
CREATE TABLE webhook_deliveries (
    delivery_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    task_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    url TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    event_time INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_status_code INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    next_attempt_at INTEGER,
    delivered_at INTEGER,
    last_attempt_at INTEGER
);

-- What is due: only pending rows, earliest first.
CREATE INDEX deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
-- A task's delivery log.
CREATE INDEX deliveries_by_task ON webhook_deliveries (tenant, task_id, created_at);

-- Each tenant's signing secret (it must be readable to sign, so it cannot be stored hashed),
-- and the previous one while a rotation overlaps.
CREATE TABLE signing_secrets (
    tenant TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    previous_secret TEXT NOT NULL,
    previous_until INTEGER
);
