-- manman host schema, version 4: every change made through the host's API, in one
-- append-only table; the command audit (`commands`) becomes part of it
CREATE TABLE audit (
    seq        bigserial PRIMARY KEY,                  -- the order rows were written: the cursor
    id         text NOT NULL UNIQUE,                   -- written twice after a crash: one row
    at         double precision NOT NULL,
    actor      text NOT NULL,                          -- the token's kind: admin, worker:ID, ...
    source     text NOT NULL DEFAULT '',               -- the caller's address
    action     text NOT NULL,                          -- server.create, server.command, ...
    server_id  text,
    worker_id  text,
    target     text NOT NULL DEFAULT '',               -- the path the request named
    status     integer,                                -- the HTTP status answered
    detail     text,                                   -- a console command's text
    result     text                                    -- delivered | pending | code: message
);
CREATE INDEX audit_at ON audit (at);
CREATE INDEX audit_server ON audit (server_id, seq);

INSERT INTO audit (id, at, actor, source, action, server_id, worker_id, target, status,
                   detail, result)
SELECT id, at, split_part(actor, '@', 1), substr(actor, length(split_part(actor, '@', 1)) + 2),
       'server.' || type, server_id, worker_id, '/server/' || coalesce(server_id, '') || '/command',
       NULL, data, result
FROM commands ORDER BY at;
DROP TABLE commands;
