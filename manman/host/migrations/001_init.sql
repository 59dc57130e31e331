-- manman host schema, version 1
CREATE TABLE workers (
    id             text PRIMARY KEY,
    name           text NOT NULL,
    status         text NOT NULL DEFAULT 'alive',      -- alive | frozen | shutdown (what the host wants)
    api_url        text NOT NULL DEFAULT '',
    address        text NOT NULL DEFAULT '',
    version        text NOT NULL DEFAULT '',
    capacity       jsonb NOT NULL DEFAULT '{}'::jsonb,
    token_version  integer NOT NULL DEFAULT 1,         -- bumped to revoke the worker's token
    registered     boolean NOT NULL DEFAULT false,
    last_heartbeat double precision,
    created_at     double precision NOT NULL
);

CREATE TABLE servers (
    id                  text PRIMARY KEY,
    name                text NOT NULL UNIQUE,
    worker_id           text NOT NULL REFERENCES workers (id),
    spec                jsonb NOT NULL,
    generation          integer NOT NULL DEFAULT 1,
    observed            jsonb,                          -- the last status the worker reported
    observed_generation integer NOT NULL DEFAULT 0,
    deleting            boolean NOT NULL DEFAULT false,
    purge               boolean NOT NULL DEFAULT false,
    created_at          double precision NOT NULL,
    updated_at          double precision NOT NULL
);
CREATE INDEX servers_worker ON servers (worker_id);

-- every accepted command: who, when, what, and what came of it
CREATE TABLE commands (
    id         text PRIMARY KEY,
    at         double precision NOT NULL,
    actor      text NOT NULL,
    server_id  text,
    worker_id  text,
    type       text NOT NULL,
    data       text,
    delivered  boolean,
    result     text
);
CREATE INDEX commands_server ON commands (server_id, at);
