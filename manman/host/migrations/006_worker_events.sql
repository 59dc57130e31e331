-- manman host schema, version 6: the webhook events workers record and send (issue 14)
-- (IF NOT EXISTS: a development database may have it from a version 6 of another name)
-- the highest event seq of the worker its webhooks have taken; null: a worker that sends
-- none (its events are derived from its reports)
ALTER TABLE workers ADD COLUMN IF NOT EXISTS events_acked bigint;
