-- manman host schema, version 2: a restart_on_change that could not be pushed at once
-- travels with the heartbeat reply until the worker holds that generation
ALTER TABLE servers ADD COLUMN restart_generation integer NOT NULL DEFAULT 0;
