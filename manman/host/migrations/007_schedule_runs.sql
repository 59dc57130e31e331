-- manman host schema, version 7: each schedule's last runs, as its worker reported them with
-- its heartbeats (GET /server/{id}/schedule/{sid}/runs answers from here, worker away or not)
-- (IF NOT EXISTS: a development database once took this as version 6, under another name)
CREATE TABLE IF NOT EXISTS schedule_runs (
    server_id   text NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    schedule_id text NOT NULL,
    run_id      integer NOT NULL,                      -- counts up per schedule on the worker
    started_at  double precision NOT NULL,
    record      jsonb NOT NULL,
    PRIMARY KEY (server_id, schedule_id, run_id)       -- a run sent twice: one row
);
