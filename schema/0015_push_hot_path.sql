-- 0015_push_hot_path.sql - what the QoS1 rate of bench/push found in the
-- store (docs/decisions.md, "Push store hot path"). Nothing here changes
-- what is stored; it changes what each write costs.
--
-- 1. Each app's daily counters spread over 16 rows. Every send and every
--    batch of acknowledgements adds to its app's counters for the day
--    (mipush/stats.c) and holds that row's lock until it commits: with one
--    row per app and day every sender and every broker of a busy app queued
--    on one lock. A writer now adds to the shard of its database session
--    (pg_backend_pid() % 16); readers sum the shards of a day.
ALTER TABLE push.stat_daily
	ADD COLUMN shard smallint NOT NULL DEFAULT 0 CHECK (shard BETWEEN 0 AND 15);
ALTER TABLE push.stat_daily
	DROP CONSTRAINT stat_daily_pkey,
	ADD PRIMARY KEY (app_id, day, shard);

-- 2. push.queue's rows no longer reference push.message by foreign key. The
--    check was a trigger per inserted row: a query and a lock on the one
--    message row that a send's hundred rows all share, about a third of the
--    insert. What it guarded holds without it: a queue row is inserted only
--    in the transaction that inserted its message (mipush/send.c), and a
--    message is deleted only when no queue row names it (the trace purge,
--    mipush/purge.c, which this index serves; an app's deletion cascades to
--    its queue rows through their registrations). The registration foreign
--    key stays: its lock is what orders a send before a registration's
--    deletion, so that no row is left behind uncounted.
ALTER TABLE push.queue DROP CONSTRAINT queue_msg_id_fkey;
CREATE INDEX queue_msg_idx ON push.queue (msg_id);
