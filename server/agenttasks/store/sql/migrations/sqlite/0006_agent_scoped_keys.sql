-- A worker key may be scoped to one agent: the worker holding it can serve that agent only, so
-- a key leaked from one agent's machines cannot take another agent's tasks. '' = any agent of
-- the key's tenant (keys made before this migration keep that meaning).
ALTER TABLE api_keys ADD COLUMN agent_id TEXT NOT NULL DEFAULT '';
