-- 0013_push_message.sql - the push message store: the durable per-device
-- queue, per-message traces, per-app daily statistics and job keys.
--
-- Flow (docs/push-internals.md): the developer API resolves its targets,
-- encrypts the message once per device under that device's content key and
-- inserts one push.queue row per device in the transaction that inserts the
-- push.message row; the message id is answered after that commit. It then
-- publishes the new rows on Redis (channel push:wake) so the broker
-- process holding each device's connection sends them at once. A broker
-- deletes a row when the device acknowledges it (PUBACK); a device that
-- connects gets every row still queued for it, oldest first. Expired rows
-- and devices silent for 90 days are purged by scheduled jobs.
--
-- Nothing here identifies a person: queue rows name a random registration
-- id and hold ciphertext only; push.message and push.stat_daily hold
-- counters by app, by day and by message, never by device (a test checks
-- that no statistics table has a regid or device column).

CREATE TABLE push.message (
	msg_id text PRIMARY KEY,                 -- random, answered to the developer
	app_id text NOT NULL REFERENCES push.app (app_id) ON DELETE CASCADE,
	jobkey text CHECK (length(jobkey) BETWEEN 1 AND 128),
	target text NOT NULL CHECK (target IN ('regid', 'alias', 'topic', 'multi_topic', 'all')),
	created_at timestamptz NOT NULL,
	expires_at timestamptz NOT NULL,
	-- counters of the trace: devices queued for, and what became of them
	queued integer NOT NULL DEFAULT 0,
	delivered integer NOT NULL DEFAULT 0,
	expired integer NOT NULL DEFAULT 0,
	dropped integer NOT NULL DEFAULT 0,      -- pushed out by the pending cap or replaced (notify_id)
	invalid integer NOT NULL DEFAULT 0,      -- targets that named no registration
	-- MiPush receipts: callback.url, callback.param, callback.type of the request
	callback_url text CHECK (length(callback_url) BETWEEN 1 AND 2048),
	callback_param text CHECK (length(callback_param) <= 1024),
	callback_type integer,
	CHECK (expires_at > created_at)
);
CREATE INDEX message_app_jobkey_idx ON push.message (app_id, jobkey) WHERE jobkey IS NOT NULL;
CREATE INDEX message_expires_idx ON push.message (expires_at);

-- One row per (device, message) not yet acknowledged. seq orders a
-- device's queue and names a row on the wire (the broker's PUBLISH carries
-- its message id inside the ciphertext, its row by seq in memory).
CREATE TABLE push.queue (
	seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	regid text NOT NULL REFERENCES push.registration (regid) ON DELETE CASCADE,
	msg_id text REFERENCES push.message (msg_id) ON DELETE CASCADE, -- NULL: deleted_messages marker
	app_id text NOT NULL,
	kind smallint NOT NULL DEFAULT 0 CHECK (kind IN (0, 1)),  -- 0 message, 1 deleted_messages marker
	notify_id integer,                       -- a newer message with the same id replaces this one
	expires_at timestamptz NOT NULL,
	attempted boolean NOT NULL DEFAULT false, -- sent at least once: resent with DUP
	body bytea NOT NULL,                     -- mica envelope under the device's content key
	CHECK ((kind = 0) = (msg_id IS NOT NULL))
);
CREATE INDEX queue_regid_seq_idx ON push.queue (regid, seq);
CREATE INDEX queue_expires_idx ON push.queue (expires_at);
CREATE UNIQUE INDEX queue_marker_idx ON push.queue (regid) WHERE kind = 1;

-- jobkey: a message with a job key is queued at most once per device.
-- Rows live as long as the longest time to live (14 days) and are purged.
CREATE TABLE push.jobkey (
	regid text NOT NULL REFERENCES push.registration (regid) ON DELETE CASCADE,
	app_id text NOT NULL,
	jobkey text NOT NULL,
	expires_at timestamptz NOT NULL,
	PRIMARY KEY (regid, app_id, jobkey)
);
CREATE INDEX jobkey_expires_idx ON push.jobkey (expires_at);

-- Per-app daily counters (UTC days). By app and day only.
CREATE TABLE push.stat_daily (
	app_id text NOT NULL REFERENCES push.app (app_id) ON DELETE CASCADE,
	day date NOT NULL,
	sent bigint NOT NULL DEFAULT 0,          -- messages accepted (one per device queued)
	delivered bigint NOT NULL DEFAULT 0,
	expired bigint NOT NULL DEFAULT 0,
	dropped bigint NOT NULL DEFAULT 0,
	invalid bigint NOT NULL DEFAULT 0,
	PRIMARY KEY (app_id, day)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON push.message, push.queue, push.jobkey, push.stat_daily
	TO mica_push;
