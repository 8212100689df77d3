-- 0004_account.sql - the account service's schema and least-privilege role.
--
-- Personal identifiers (account number, phone, email) are stored only
-- encrypted by the Key Center (key account-pii, context = table, column and
-- row) and found through HMAC blind indexes (key account-index). Password
-- hashes (Argon2id PHC strings) are encrypted under the pepper key
-- account-pepper. Session tokens are stored as SHA-256 only.

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

CREATE TABLE account.user (
	id bigserial PRIMARY KEY,
	account_no_enc text NOT NULL,
	account_no_idx text NOT NULL UNIQUE,
	phone_enc text,
	phone_idx text UNIQUE,
	phone_bound_at timestamptz,
	email_enc text,
	email_idx text UNIQUE,
	security_phone_enc text,
	security_phone_idx text,
	security_email_enc text,
	security_email_idx text,
	password_enc text NOT NULL,
	password_policy text NOT NULL CHECK (password_policy IN ('miui', 'nist')),
	status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'frozen')),
	frozen_at timestamptz,
	cross_device boolean NOT NULL DEFAULT false,
	password_changed_at timestamptz NOT NULL DEFAULT now(),
	password_reset_at timestamptz,
	created_at timestamptz NOT NULL DEFAULT now()
);

-- Passwords that may never be used or set again (burned by a freeze): the
-- pepper-encrypted Argon2id hash the account had, checked on every change.
CREATE TABLE account.burned_password (
	id bigserial PRIMARY KEY,
	user_id bigint NOT NULL REFERENCES account.user (id) ON DELETE CASCADE,
	password_enc text NOT NULL,
	burned_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX burned_password_user_idx ON account.burned_password (user_id);

-- One-time codes sent by SMS or email (registration, reset, binding, step-up).
CREATE TABLE account.verification (
	id text PRIMARY KEY,
	purpose text NOT NULL CHECK (purpose IN ('register', 'reset', 'bind_phone', 'bind_email', 'stepup')),
	channel text NOT NULL CHECK (channel IN ('sms', 'email')),
	target_idx text NOT NULL,
	target_enc text NOT NULL,
	user_id bigint REFERENCES account.user (id) ON DELETE CASCADE,
	code_hash text NOT NULL,
	attempts integer NOT NULL DEFAULT 0,
	expires_at timestamptz NOT NULL,
	consumed_at timestamptz,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX verification_user_idx ON account.verification (user_id);

-- Devices and networks an account has logged in from; raw identifiers are never stored.
CREATE TABLE account.device (
	user_id bigint NOT NULL REFERENCES account.user (id) ON DELETE CASCADE,
	device_hash text NOT NULL,
	name text NOT NULL DEFAULT '',
	trusted boolean NOT NULL DEFAULT false,
	first_seen timestamptz NOT NULL DEFAULT now(),
	last_seen timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (user_id, device_hash)
);

CREATE TABLE account.network (
	user_id bigint NOT NULL REFERENCES account.user (id) ON DELETE CASCADE,
	network_hash text NOT NULL,
	first_seen timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (user_id, network_hash)
);

-- Sessions: opaque 256-bit tokens, only their SHA-256 kept. PostgreSQL is
-- the truth; Redis (session:<hash>) the cache other services read.
CREATE TABLE account.session (
	id bigserial PRIMARY KEY,
	token_hash text NOT NULL UNIQUE,
	user_id bigint NOT NULL REFERENCES account.user (id) ON DELETE CASCADE,
	device_hash text NOT NULL,
	kind text NOT NULL CHECK (kind IN ('app', 'web')),
	created_at timestamptz NOT NULL DEFAULT now(),
	last_seen_at timestamptz NOT NULL DEFAULT now(),
	auth_at timestamptz NOT NULL DEFAULT now(),
	expires_at timestamptz NOT NULL,
	revoked_at timestamptz
);
CREATE INDEX session_user_idx ON account.session (user_id) WHERE revoked_at IS NULL;

-- Step-up verification of an abnormal login or a sensitive operation.
CREATE TABLE account.stepup (
	id text PRIMARY KEY,
	user_id bigint NOT NULL REFERENCES account.user (id) ON DELETE CASCADE,
	kind text NOT NULL CHECK (kind IN ('login', 'sensitive')),
	session_id bigint REFERENCES account.session (id) ON DELETE CASCADE,
	device_hash text NOT NULL,
	device_name text NOT NULL DEFAULT '',
	network_hash text NOT NULL,
	session_kind text NOT NULL DEFAULT 'app',
	verification_id text REFERENCES account.verification (id) ON DELETE SET NULL,
	approved_by bigint,
	failures integer NOT NULL DEFAULT 0,
	status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
	expires_at timestamptz NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE account.security_question (
	user_id bigint NOT NULL REFERENCES account.user (id) ON DELETE CASCADE,
	position integer NOT NULL CHECK (position BETWEEN 1 AND 3),
	question text NOT NULL,
	answer_hash text NOT NULL,          -- Argon2id PHC of the normalised answer
	PRIMARY KEY (user_id, position)
);

-- Local stand-in for the carriers' number-recycling check: a phone number
-- (as its blind index) recycled on a date.
CREATE TABLE account.recycled_number (
	phone_idx text NOT NULL,
	recycled_on date NOT NULL,
	PRIMARY KEY (phone_idx, recycled_on)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON account.user, account.burned_password,
	account.verification, account.device, account.network, account.session, account.stepup,
	account.security_question TO mica_account;
GRANT SELECT ON account.recycled_number TO mica_account;
GRANT USAGE ON SEQUENCE account.user_id_seq, account.session_id_seq,
	account.burned_password_id_seq TO mica_account;

-- account.deleted and other events go through the transactional outbox.
GRANT USAGE ON SCHEMA outbox TO mica_account;
GRANT INSERT, SELECT ON outbox.event TO mica_account;
GRANT USAGE ON SEQUENCE outbox.event_id_seq TO mica_account;
