-- manman host schema, version 3: each server's backups as its worker last reported them
-- (the worker keeps the archives and is the authority; this copy answers the list while
-- the worker is away)
CREATE TABLE backups (
    id         text PRIMARY KEY,
    server_id  text NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    record     jsonb NOT NULL,
    updated_at double precision NOT NULL
);
CREATE INDEX backups_server ON backups (server_id);
