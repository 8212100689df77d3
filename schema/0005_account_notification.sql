-- 0005_account_notification.sql - the account service's development
-- notification outbox (account/notify.h, email_mode/sms_mode = outbox).
--
-- Each e-mail or SMS the account service would send becomes a row here,
-- inserted in the caller's transaction; `mica outbox list [--to ADDR]` prints
-- them. Rows hold verification codes in clear, so this sender is for
-- development only. This is not the transactional event outbox
-- (outbox.event, 0001_outbox.sql).
--
-- Written to apply after 0004_account.sql or without it: the role and the
-- schema are created only if missing.

DO $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mica_account') THEN
		CREATE ROLE mica_account LOGIN;
	END IF;
END
$$;

CREATE SCHEMA IF NOT EXISTS account;
REVOKE ALL ON SCHEMA account FROM PUBLIC;
GRANT USAGE ON SCHEMA account TO mica_account;

CREATE TABLE account.notification (
	id bigserial PRIMARY KEY,
	channel text NOT NULL CHECK (channel IN ('email', 'sms')),
	recipient text NOT NULL CHECK (recipient <> ''),
	subject text,
	body text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
);

-- `mica outbox list --to ADDR` looks rows up by recipient, newest first.
CREATE INDEX notification_recipient_idx ON account.notification (lower(recipient), id);

REVOKE ALL ON account.notification FROM PUBLIC;
GRANT INSERT, SELECT ON account.notification TO mica_account;
GRANT USAGE ON SEQUENCE account.notification_id_seq TO mica_account;
