-- manman host schema, version 6: the webhook events workers record and send (issue 14)
-- the highest event seq of the worker its webhooks have taken; null: a worker that sends
-- none (its events are derived from its reports)
ALTER TABLE workers ADD COLUMN events_acked bigint;
