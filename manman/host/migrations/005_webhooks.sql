-- manman host schema, version 5: webhooks, and the events each still has to deliver
CREATE TABLE webhooks (
    id          text PRIMARY KEY,
    url         text NOT NULL,
    kind        text NOT NULL,                         -- generic | discord | slack
    events      jsonb NOT NULL,
    server_id   text,                                  -- null: every server's events
    secret      text,
    enabled     boolean NOT NULL DEFAULT true,
    created_at  double precision NOT NULL,
    updated_at  double precision NOT NULL
);

-- an event a hook has not taken yet (retries go on for up to a day, across host restarts)
CREATE TABLE webhook_outbox (
    id          text PRIMARY KEY,                      -- hook id / event id
    hook_id     text NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event       jsonb NOT NULL,
    created_at  double precision NOT NULL
);
CREATE INDEX webhook_outbox_hook ON webhook_outbox (hook_id);

-- the last attempts of each hook (GET /webhook/{id}/deliveries), written in batches
CREATE TABLE webhook_deliveries (
    seq         bigserial PRIMARY KEY,
    hook_id     text NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    attempt     jsonb NOT NULL
);
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries (hook_id, seq);
