-- 0002_keycenter.sql - the Key Center's schema and least-privilege role.
--
-- Key material is stored only sealed: a per-service key-encryption key (KEK)
-- is kept as a blob wrapped by the HSM's RSA-4096 root key (RSA-OAEP) and is
-- unwrapped into the HSM as a non-extractable session object at start; each
-- named key version's material is sealed by its owner's KEK inside the HSM
-- (AES-256-GCM, associated data = key name and version).
-- The audit trail lives in 0003_keycenter_audit.sql.

DO $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mica_keycenter') THEN
		CREATE ROLE mica_keycenter LOGIN;
	END IF;
END
$$;

CREATE SCHEMA keycenter;
REVOKE ALL ON SCHEMA keycenter FROM PUBLIC;
GRANT USAGE ON SCHEMA keycenter TO mica_keycenter;

-- Singletons written by `mica keycenter init`: root key id, public keys.
CREATE TABLE keycenter.meta (
	name text PRIMARY KEY,
	value text NOT NULL,
	updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE keycenter.kek (
	service text PRIMARY KEY CHECK (service ~ '^[a-z][a-z0-9_-]{0,31}$'),
	wrapped bytea NOT NULL,          -- RSA-OAEP(root public key, AES-256 KEK)
	created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE keycenter.key (
	name text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
	type text NOT NULL CHECK (type IN ('aes256-gcm', 'aes128-gcm')),
	owner text NOT NULL REFERENCES keycenter.kek (service),
	latest_version integer NOT NULL DEFAULT 1 CHECK (latest_version >= 1),
	min_decryption_version integer NOT NULL DEFAULT 1 CHECK (min_decryption_version >= 1),
	min_encryption_version integer NOT NULL DEFAULT 0 CHECK (min_encryption_version >= 0),
	deletion_allowed boolean NOT NULL DEFAULT false,
	created_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE keycenter.key_version (
	name text NOT NULL REFERENCES keycenter.key (name) ON DELETE CASCADE,
	version integer NOT NULL CHECK (version >= 1),
	sealed bytea NOT NULL,           -- nonce || AES-GCM(owner KEK, material) || tag
	created_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (name, version)
);

-- Versioned access policy; exactly one active version.
CREATE TABLE keycenter.policy (
	version integer PRIMARY KEY,
	document jsonb NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	active boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX policy_one_active ON keycenter.policy (active) WHERE active;

-- Dual control: destructive actions and policy changes wait for two officers.
CREATE TABLE keycenter.change_request (
	id bigserial PRIMARY KEY,
	kind text NOT NULL CHECK (kind IN ('delete_key', 'set_policy')),
	target text NOT NULL,
	payload jsonb NOT NULL DEFAULT '{}',
	requested_by text NOT NULL,
	status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'applied', 'failed')),
	created_at timestamptz NOT NULL DEFAULT now(),
	applied_at timestamptz
);

CREATE TABLE keycenter.approval (
	request_id bigint NOT NULL REFERENCES keycenter.change_request (id),
	officer text NOT NULL,
	approved_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (request_id, officer)
);

CREATE TABLE keycenter.alert (
	id bigserial PRIMARY KEY,
	ts timestamptz NOT NULL DEFAULT now(),
	kind text NOT NULL,
	principal text,
	key_name text,
	detail jsonb NOT NULL DEFAULT '{}'
);

GRANT SELECT ON keycenter.meta TO mica_keycenter;
GRANT SELECT, INSERT ON keycenter.kek TO mica_keycenter;
GRANT SELECT, INSERT, UPDATE, DELETE ON keycenter.key, keycenter.key_version TO mica_keycenter;
GRANT SELECT, INSERT, UPDATE ON keycenter.policy, keycenter.change_request TO mica_keycenter;
GRANT SELECT, INSERT ON keycenter.approval, keycenter.alert TO mica_keycenter;
GRANT USAGE ON SEQUENCE keycenter.change_request_id_seq, keycenter.alert_id_seq TO mica_keycenter;
