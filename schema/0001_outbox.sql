-- 0001_outbox.sql - transactional outbox shared by all services.
--
-- A service inserts into outbox.event inside the transaction that changes its
-- state (mica_outbox_emit). The trigger fans the event out to one
-- outbox.pending row per consumer subscribed to the topic and wakes the
-- consumers with NOTIFY mica_outbox (payload: consumer name). Consumers claim
-- pending rows with FOR UPDATE SKIP LOCKED and delete them in the same
-- transaction as their own effects (mica_outbox_consume), so every event's
-- database effects commit exactly once per consumer.

CREATE SCHEMA outbox;

CREATE TABLE outbox.event (
	id bigserial PRIMARY KEY,
	topic text NOT NULL CHECK (topic <> ''),
	payload jsonb NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE outbox.subscription (
	consumer text NOT NULL CHECK (consumer <> ''),
	topic text NOT NULL CHECK (topic <> ''),
	created_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (consumer, topic)
);

-- Looked up by topic on every insert into outbox.event.
CREATE INDEX subscription_topic_idx ON outbox.subscription (topic);

CREATE TABLE outbox.pending (
	consumer text NOT NULL,
	event_id bigint NOT NULL REFERENCES outbox.event (id),
	PRIMARY KEY (consumer, event_id)
);

-- Pruning finds old events with no pending rows left.
CREATE INDEX pending_event_idx ON outbox.pending (event_id);
CREATE INDEX event_created_at_idx ON outbox.event (created_at);

-- SECURITY DEFINER so that a producer's role needs only INSERT and
-- SELECT (id) on outbox.event and USAGE on its sequence, never access to
-- the subscriptions and pending rows of other services; search_path is
-- pinned for that reason.
CREATE FUNCTION outbox.fan_out() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	c text;
BEGIN
	FOR c IN
		INSERT INTO outbox.pending (consumer, event_id)
		SELECT s.consumer, NEW.id FROM outbox.subscription s WHERE s.topic = NEW.topic
		RETURNING consumer
	LOOP
		-- Delivered at COMMIT, and identical notifications in one
		-- transaction are folded into one.
		PERFORM pg_notify('mica_outbox', c);
	END LOOP;
	RETURN NULL;
END
$$;

CREATE TRIGGER event_fan_out AFTER INSERT ON outbox.event
	FOR EACH ROW EXECUTE FUNCTION outbox.fan_out();
