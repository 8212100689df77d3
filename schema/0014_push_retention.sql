-- 0014_push_retention.sql - what the push service's scheduled jobs need
-- (mipush/purge.c, mipush/receipts.c; docs/push-internals.md):
--   - the state of MiPush receipts (callbacks) on push.message: the counters
--     already reported to the developer's callback URL, and the retry state.
--     A receipt reports totals taken from the message's own trace counters,
--     so neither the broker nor the send path does anything per message for
--     it, and a repeated receipt is harmless (the receiver sees totals);
--   - indexes for the purges: silent registrations by last_seen, traces by
--     app and creation time (the trace routes' time range).
-- Still nothing per device: these are per-message counters and times.

ALTER TABLE push.message
	ADD COLUMN receipted_delivered integer NOT NULL DEFAULT 0, -- delivered, as last reported
	ADD COLUMN receipted_invalid integer NOT NULL DEFAULT 0,   -- invalid, as last reported
	ADD COLUMN receipt_attempts integer NOT NULL DEFAULT 0,    -- failed tries since the last success
	ADD COLUMN receipt_next_at timestamptz,                    -- not before (backoff, or a node's lease)
	ADD COLUMN receipt_given_up boolean NOT NULL DEFAULT false; -- attempts ran out, or not https

-- The receipt job's scan: messages with a callback that are still served.
CREATE INDEX message_receipt_idx ON push.message (receipt_next_at)
	WHERE callback_url IS NOT NULL AND NOT receipt_given_up;
-- The trace of a time range (GET /v1/trace/messages/status).
CREATE INDEX message_app_created_idx ON push.message (app_id, created_at);
-- The silent-device purge (last_seen older than push.retention.silent_days).
CREATE INDEX registration_last_seen_idx ON push.registration (last_seen);
