-- 0016_cloudsync.sql - the cloud sync service's records, recycle bin and
-- per-user keys, and its least-privilege role (docs/api/cloudsync.md,
-- docs/decisions.md "Cloud sync records").
--
-- Nothing a user synced is stored in the clear:
--   user_key.wrapped  the user's data key (AES-256), minted and wrapped by the
--                     Key Center (key cloudsync-user), bound there to
--                     {service: cloudsync, user: <id>}
--   record.body       lib/crypto's envelope of the record's JSON under that
--                     data key, bound to
--                     "service=cloudsync;user=U;module=M;record=ID;version=V"
-- Record ids are chosen by devices (UUIDs in practice) and must not carry
-- content: they stay as tombstones after a purge.

DO $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mica_cloudsync') THEN
		CREATE ROLE mica_cloudsync LOGIN;
	END IF;
END
$$;

CREATE SCHEMA IF NOT EXISTS cloudsync;
REVOKE ALL ON SCHEMA cloudsync FROM PUBLIC;
GRANT USAGE ON SCHEMA cloudsync TO mica_cloudsync;

CREATE TABLE cloudsync.user_key (
	user_id bigint PRIMARY KEY CHECK (user_id > 0),
	wrapped text NOT NULL CHECK (wrapped LIKE 'kc:v%'),
	created_at timestamptz NOT NULL DEFAULT now()
);

-- One change sequence per user, over all modules. Every writing transaction
-- locks the user's row first (cloudsync/records.c), which orders the user's
-- writers: each reads what the previous one committed (two devices cannot
-- both create one record), and sequence order is commit order, so a device
-- that has read up to N never misses a change numbered below N.
CREATE TABLE cloudsync.user_seq (
	user_id bigint PRIMARY KEY CHECK (user_id > 0),
	seq bigint NOT NULL CHECK (seq >= 0)
);

-- state: 0 live, 1 in the recycle bin (since deleted_at), 2 purged (a
-- tombstone: no body, kept so that a device syncing from before the
-- deletion learns of it).
CREATE TABLE cloudsync.record (
	user_id bigint NOT NULL CHECK (user_id > 0),
	module text NOT NULL CHECK (module ~ '^[a-z][a-z_]{0,31}$'),
	id text NOT NULL CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$'),
	version bigint NOT NULL CHECK (version > 0),
	seq bigint NOT NULL CHECK (seq > 0),
	state smallint NOT NULL CHECK (state BETWEEN 0 AND 2),
	conflict_of text,	-- a conflict copy: the record whose write lost
	body bytea,
	deleted_at timestamptz,
	modified_at timestamptz NOT NULL,
	PRIMARY KEY (user_id, module, id),
	CHECK ((state = 2) = (body IS NULL)),
	CHECK ((state = 1) = (deleted_at IS NOT NULL))
);
-- Changes since a token, in order.
CREATE UNIQUE INDEX record_seq_idx ON cloudsync.record (user_id, module, seq);
-- The bin purge: what was deleted longest ago.
CREATE INDEX record_bin_idx ON cloudsync.record (deleted_at) WHERE state = 1;

GRANT SELECT, INSERT, UPDATE, DELETE ON cloudsync.user_key, cloudsync.user_seq, cloudsync.record
	TO mica_cloudsync;

-- Account deletion: the account service emits account.deleted in the
-- deleting transaction; the cloud sync worker consumes it as
-- cloudsync.accounts and deletes everything of the user in its own.
INSERT INTO outbox.subscription (consumer, topic) VALUES ('cloudsync.accounts', 'account.deleted')
	ON CONFLICT DO NOTHING;
GRANT USAGE ON SCHEMA outbox TO mica_cloudsync;
GRANT SELECT ON outbox.event TO mica_cloudsync;
GRANT SELECT, UPDATE, DELETE ON outbox.pending TO mica_cloudsync;
CREATE POLICY pending_cloudsync ON outbox.pending TO mica_cloudsync
	USING (consumer LIKE 'cloudsync.%') WITH CHECK (consumer LIKE 'cloudsync.%');
