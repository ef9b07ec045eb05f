-- How many tasks each agent has queued at each priority, for Submit's estimated_start (the
-- number of tasks ahead of the new one), kept by triggers in the transaction of every change:
-- counting the queue index instead costs every Submit a walk as long as the backlog.
--
-- One counter row per (agent, priority) would be a row that every Submit of the agent locks
-- until it commits: replicas submitting to one agent would queue behind each other's commits.
-- So each count is split into shards, and a change updates the shard of the connection that
-- makes it (its backend pid modulo 64). A server's writes all go through its one writer
-- connection, so two servers share a shard only by a collision of their pids, and even then they
-- only wait, never miscount. A shard may go below zero (a task queued through one server and
-- claimed through another): only the sum over the shards means anything, and reading it costs at
-- most 64 rows per priority, whatever the backlog.
CREATE TABLE queue_counts (
    tenant text NOT NULL,
    agent_id text NOT NULL,
    priority bigint NOT NULL,
    shard integer NOT NULL,
    queued bigint NOT NULL,
    PRIMARY KEY (tenant, agent_id, priority, shard)
);

INSERT INTO queue_counts (tenant, agent_id, priority, shard, queued)
SELECT tenant, agent_id, priority, 0, count(*) FROM tasks WHERE status = 'queued'
GROUP BY tenant, agent_id, priority;

CREATE FUNCTION queue_counts_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    my_shard integer := mod(pg_backend_pid(), 64);
BEGIN
    IF TG_OP = 'DELETE' AND NOT EXISTS (
        SELECT 1 FROM agents WHERE tenant = OLD.tenant AND agent_id = OLD.agent_id
    ) THEN
        RETURN NULL;  -- deleted with its agent, whose rows go with it (below)
    END IF;
    IF TG_OP <> 'INSERT' AND OLD.status = 'queued' THEN
        INSERT INTO queue_counts AS c (tenant, agent_id, priority, shard, queued)
        VALUES (OLD.tenant, OLD.agent_id, OLD.priority, my_shard, -1)
        ON CONFLICT (tenant, agent_id, priority, shard) DO UPDATE SET queued = c.queued - 1;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.status = 'queued' THEN
        INSERT INTO queue_counts AS c (tenant, agent_id, priority, shard, queued)
        VALUES (NEW.tenant, NEW.agent_id, NEW.priority, my_shard, 1)
        ON CONFLICT (tenant, agent_id, priority, shard) DO UPDATE SET queued = c.queued + 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER queue_counts_on_insert AFTER INSERT ON tasks
FOR EACH ROW WHEN (NEW.status = 'queued') EXECUTE FUNCTION queue_counts_change();

-- A task entering or leaving the queue (claimed, cancelled, requeued after a lost lease), or
-- changing priority while queued. Any other update leaves the counts alone.
CREATE TRIGGER queue_counts_on_update AFTER UPDATE OF status, priority ON tasks
FOR EACH ROW WHEN (
    (OLD.status = 'queued') <> (NEW.status = 'queued')
    OR (NEW.status = 'queued' AND NEW.priority <> OLD.priority)
) EXECUTE FUNCTION queue_counts_change();

-- Deleted with its agent (by cascade) while queued.
CREATE TRIGGER queue_counts_on_delete AFTER DELETE ON tasks
FOR EACH ROW WHEN (OLD.status = 'queued') EXECUTE FUNCTION queue_counts_change();

-- The agent's own rows go with it. The cascade's deletes of its tasks may fire their triggers
-- before or after this one; they find the agent gone and leave the counts alone, so no row of a
-- deleted agent comes back.
CREATE FUNCTION queue_counts_forget_agent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM queue_counts WHERE tenant = OLD.tenant AND agent_id = OLD.agent_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER queue_counts_on_agent_delete AFTER DELETE ON agents
FOR EACH ROW EXECUTE FUNCTION queue_counts_forget_agent();
