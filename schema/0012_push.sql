-- 0012_push.sql - the push service's schema and least-privilege role.
--
-- Nothing secret or identifying is stored in the clear (docs/api/push.md,
-- docs/decisions.md "Push registration"):
--   app secrets        only as a Key Center HMAC (key push-index), found by it
--   device hashes      only as a Key Center HMAC of "<app id>:<hash>" (push-index),
--                      so the same phone has unrelated indexes in two apps
--   device tokens      only as a Key Center HMAC (push-index)
--   content keys       encrypted by the Key Center (key push-content), bound to
--                      {service, table, column, row = regid}
-- The registration id is a random identifier, not derived from the device.

DO $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mica_push') THEN
		CREATE ROLE mica_push LOGIN;
	END IF;
END
$$;

CREATE SCHEMA IF NOT EXISTS push;
REVOKE ALL ON SCHEMA push FROM PUBLIC;
GRANT USAGE ON SCHEMA push TO mica_push;

-- Developer apps, created by an operator (`mica push app create`).
CREATE TABLE push.app (
	app_id text PRIMARY KEY CHECK (app_id ~ '^[1-9][0-9]{0,18}$'),
	package text NOT NULL UNIQUE CHECK (length(package) BETWEEN 1 AND 255),
	secret_idx text NOT NULL UNIQUE,	-- HMAC (push-index) of the app secret
	created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE push.registration (
	regid text PRIMARY KEY,
	app_id text NOT NULL REFERENCES push.app (app_id) ON DELETE CASCADE,
	device_idx text NOT NULL,		-- HMAC (push-index) of "<app id>:<device hash>"
	content_key_enc text NOT NULL,		-- Key Center ciphertext (push-content)
	token_idx text NOT NULL UNIQUE,		-- HMAC (push-index) of the MQTT password
	created_at timestamptz NOT NULL DEFAULT now(),
	last_seen timestamptz NOT NULL DEFAULT now(),
	UNIQUE (app_id, device_idx)
);

CREATE TABLE push.alias (
	regid text NOT NULL REFERENCES push.registration (regid) ON DELETE CASCADE,
	app_id text NOT NULL REFERENCES push.app (app_id) ON DELETE CASCADE,
	alias text NOT NULL CHECK (length(alias) BETWEEN 1 AND 128),
	created_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (regid, alias)
);
CREATE INDEX alias_app_alias_idx ON push.alias (app_id, alias);

CREATE TABLE push.topic_subscription (
	regid text NOT NULL REFERENCES push.registration (regid) ON DELETE CASCADE,
	app_id text NOT NULL REFERENCES push.app (app_id) ON DELETE CASCADE,
	topic text NOT NULL CHECK (length(topic) BETWEEN 1 AND 128),
	created_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (regid, topic)
);
CREATE INDEX topic_app_topic_idx ON push.topic_subscription (app_id, topic);

-- The daemon reads apps (it never creates them: the CLI runs as an operator)
-- and owns registrations and subscriptions.
GRANT SELECT ON push.app TO mica_push;
GRANT SELECT, INSERT, UPDATE, DELETE ON push.registration, push.alias, push.topic_subscription
	TO mica_push;
