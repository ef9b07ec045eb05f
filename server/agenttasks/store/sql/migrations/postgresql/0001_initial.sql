-- The schema of the SQLite backend as of its migration 0007, for PostgreSQL.
--
-- Conventions: every table carries the tenant and every lookup filters by it. Times are
-- timestamptz: PostgreSQL keeps them as 64-bit microseconds, so an aware Python datetime comes
-- back exact to the microsecond (and every year Python can hold fits), and they stay readable in
-- psql and usable with PostgreSQL's own time functions. JSON columns are json, not jsonb: json
-- keeps the text as written (key order and all, as SQLite keeps it) and costs only a validation
-- on insert; nothing queries inside it except for the output events' strings, which json_agg
-- copies without decoding (jsonb would also refuse the \u0000 a string may hold).

-- agent_id is a server-generated UUID and unique on its own; UNIQUE (tenant, agent_id) is the
-- parent key of tasks, so the task-to-agent foreign key also proves the task's tenant.
CREATE TABLE agents (
    agent_id text PRIMARY KEY,
    tenant text NOT NULL,
    name text NOT NULL,
    description text NOT NULL,
    status text NOT NULL,
    status_message text NOT NULL,
    default_timeout_seconds bigint NOT NULL,
    max_attempts bigint NOT NULL,
    input_timeout_seconds bigint NOT NULL,
    metadata json NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    UNIQUE (tenant, agent_id)
);

-- ListAgents pages oldest first by (created_at, agent_id).
CREATE INDEX agents_by_created ON agents (tenant, created_at, agent_id);

-- seq: insertion order, FIFO within a priority; a sequence never hands a number out twice, so
-- list cursors (before_seq) and FIFO order stay monotonic after deletes.
CREATE TABLE tasks (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id text NOT NULL UNIQUE,
    tenant text NOT NULL,
    agent_id text NOT NULL,
    message text NOT NULL,
    status text NOT NULL,
    priority bigint NOT NULL,
    metadata json NOT NULL,
    callback_mode text NOT NULL,
    webhook_url text NOT NULL,
    timeout_seconds bigint NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    started_at timestamptz,
    completed_at timestamptz,
    progress json,
    -- The output itself is only in the task's output events; the row keeps what an append
    -- needs: the current attempt's size so far (for the cap), and after which event it starts.
    output_bytes bigint NOT NULL DEFAULT 0,
    output_after bigint NOT NULL DEFAULT 0,
    result json,
    error json,
    input_prompt text NOT NULL,
    attempt bigint NOT NULL,
    last_sequence bigint NOT NULL,
    status_reason text NOT NULL,
    -- The holding worker connection ('' when none), until when, and when its running (or
    -- input) time runs out; run_seconds_left keeps what a task awaiting input still has.
    worker_id text NOT NULL DEFAULT '',
    lease_expires_at timestamptz,
    deadline_at timestamptz,
    run_seconds_left double precision,
    FOREIGN KEY (tenant, agent_id) REFERENCES agents (tenant, agent_id) ON DELETE CASCADE
);

-- ListTasks newest first; its (tenant, agent_id) prefix also serves the cascade from agents.
CREATE INDEX tasks_by_agent ON tasks (tenant, agent_id, seq DESC);

-- The dispatch queue: only queued rows, in claim order. Small and hot: rows leave it when
-- claimed.
CREATE INDEX tasks_queued ON tasks (agent_id, priority DESC, seq) WHERE status = 'queued';

-- Work still in flight for an agent (stop, delete, recovery). Small: terminal rows drop out.
CREATE INDEX tasks_unfinished ON tasks (tenant, agent_id, seq)
    WHERE status IN ('queued', 'running', 'awaiting_input');

-- The most recent completions, for run-time estimates.
CREATE INDEX tasks_completed ON tasks (tenant, agent_id, completed_at) WHERE status = 'completed';

-- The lease and deadline sweeps read only tasks in flight, earliest first.
CREATE INDEX tasks_lease_expiry ON tasks (lease_expires_at) WHERE status IN ('running', 'awaiting_input');
CREATE INDEX tasks_deadline ON tasks (deadline_at) WHERE status IN ('running', 'awaiting_input');
-- A worker's held tasks, for heartbeats and when its connection ends.
CREATE INDEX tasks_by_worker ON tasks (worker_id) WHERE status IN ('running', 'awaiting_input');

-- Every change of a task, and its output: output events are the output's only copy.
CREATE TABLE task_events (
    task_id text NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    sequence bigint NOT NULL,
    tenant text NOT NULL,
    type text NOT NULL,
    status text NOT NULL,
    time timestamptz NOT NULL,
    data json NOT NULL,
    PRIMARY KEY (task_id, sequence)
);

-- A worker key may be scoped to one agent ('' = any agent of the key's tenant).
CREATE TABLE api_keys (
    key_id text PRIMARY KEY,
    tenant text NOT NULL,
    role text NOT NULL,
    secret_hash text NOT NULL,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz,
    description text NOT NULL,
    agent_id text NOT NULL DEFAULT ''
);

CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at, key_id);

CREATE TABLE idempotency (
    tenant text NOT NULL,
    scope text NOT NULL,
    key text NOT NULL,
    request_hash text NOT NULL,
    response json NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (tenant, scope, key)
);

-- The purge deletes by expiry across tenants.
CREATE INDEX idempotency_expiry ON idempotency (expires_at);

CREATE TABLE meta (
    name text PRIMARY KEY,
    value text NOT NULL
);

-- The webhook outbox: one row per event to POST, written in the transaction of the change it
-- reports. No foreign key to tasks: a delivery outlives its task (an agent deleted with its
-- tasks still reports their cancellation).
CREATE TABLE webhook_deliveries (
    delivery_id text PRIMARY KEY,
    tenant text NOT NULL,
    task_id text NOT NULL,
    agent_id text NOT NULL,
    event_type text NOT NULL,
    url text NOT NULL,
    snapshot json NOT NULL,
    event_time timestamptz NOT NULL,
    state text NOT NULL,
    attempts bigint NOT NULL,
    last_status_code bigint NOT NULL,
    last_error text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    next_attempt_at timestamptz,
    delivered_at timestamptz,
    last_attempt_at timestamptz
);

-- What is due: only pending rows, earliest first.
CREATE INDEX deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
-- A task's delivery log.
CREATE INDEX deliveries_by_task ON webhook_deliveries (tenant, task_id, created_at);

-- Each tenant's signing secret (it must be readable to sign, so it cannot be stored hashed),
-- and the previous one while a rotation overlaps.
CREATE TABLE signing_secrets (
    tenant text PRIMARY KEY,
    secret text NOT NULL,
    created_at timestamptz NOT NULL,
    previous_secret text NOT NULL,
    previous_until timestamptz
);
