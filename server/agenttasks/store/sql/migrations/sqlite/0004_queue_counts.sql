-- How many tasks each agent has queued at each priority, kept by triggers in the transaction of
-- every change. Submit's estimated_start needs the number of tasks ahead of the new one; counting
-- them in the queue index cost every Submit a walk that grew with the backlog (capped at 100 rows,
-- it was still 15% of a Submit's time in the single writer), while a counter costs the same at
-- any depth and is exact. Triggers rather than application code: every writer (the server, an
-- admin command, a later migration) keeps the counts right without knowing about them.
CREATE TABLE queue_counts (
    tenant TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    priority INTEGER NOT NULL,
    queued INTEGER NOT NULL,
    PRIMARY KEY (tenant, agent_id, priority)
) WITHOUT ROWID;

INSERT INTO queue_counts (tenant, agent_id, priority, queued)
SELECT tenant, agent_id, priority, count(*) FROM tasks WHERE status = 'queued'
GROUP BY tenant, agent_id, priority;

CREATE TRIGGER queue_counts_on_insert AFTER INSERT ON tasks WHEN NEW.status = 'queued'
BEGIN
    INSERT INTO queue_counts (tenant, agent_id, priority, queued)
    VALUES (NEW.tenant, NEW.agent_id, NEW.priority, 1)
    ON CONFLICT (tenant, agent_id, priority) DO UPDATE SET queued = queued + 1;
END;

-- A task leaving the queue (claimed, cancelled) or changing priority while queued.
CREATE TRIGGER queue_counts_on_leave AFTER UPDATE OF status, priority ON tasks
WHEN OLD.status = 'queued' AND (NEW.status != 'queued' OR NEW.priority != OLD.priority)
BEGIN
    UPDATE queue_counts SET queued = queued - 1
    WHERE tenant = OLD.tenant AND agent_id = OLD.agent_id AND priority = OLD.priority;
END;

-- A task entering the queue (requeued after a lost lease) or changing priority while queued.
CREATE TRIGGER queue_counts_on_enter AFTER UPDATE OF status, priority ON tasks
WHEN NEW.status = 'queued' AND (OLD.status != 'queued' OR NEW.priority != OLD.priority)
BEGIN
    INSERT INTO queue_counts (tenant, agent_id, priority, queued)
    VALUES (NEW.tenant, NEW.agent_id, NEW.priority, 1)
    ON CONFLICT (tenant, agent_id, priority) DO UPDATE SET queued = queued + 1;
END;

-- Deleted with its agent (by cascade) while queued.
CREATE TRIGGER queue_counts_on_delete AFTER DELETE ON tasks WHEN OLD.status = 'queued'
BEGIN
    UPDATE queue_counts SET queued = queued - 1
    WHERE tenant = OLD.tenant AND agent_id = OLD.agent_id AND priority = OLD.priority;
END;

-- The agent's own rows go with it; they would only be zeros by then.
CREATE TRIGGER queue_counts_on_agent_delete AFTER DELETE ON agents
BEGIN
    DELETE FROM queue_counts WHERE tenant = OLD.tenant AND agent_id = OLD.agent_id;
END;
