-- 0003_keycenter_audit.sql - the Key Center's audit trail (keycenter/audit.h).
--
-- keycenter.audit holds one row per request, hash-chained (prev_hash = the
-- previous row's hash) and MACed; keycenter.audit_checkpoint holds a signature
-- by the HSM audit key over the chain head every N records or T seconds. The
-- canonical encoding that hash covers is documented in keycenter/audit.h.
-- Rows are only ever appended: the service role may INSERT and SELECT, nothing
-- else, so a compromised Key Center cannot rewrite history it already wrote;
-- auditors read the tables through `mica audit export` run by an operator.

CREATE TABLE keycenter.audit (
	seq bigint PRIMARY KEY CHECK (seq >= 1),
	ts_us bigint NOT NULL,
	principal text NOT NULL,
	client text NOT NULL,
	op text NOT NULL,
	key_name text,
	key_version integer CHECK (key_version >= 1),
	context_hash text,
	result text NOT NULL,
	prev_hash bytea NOT NULL CHECK (length(prev_hash) = 32),
	hash bytea NOT NULL CHECK (length(hash) = 32),
	mac bytea NOT NULL CHECK (length(mac) = 32)
);

CREATE TABLE keycenter.audit_checkpoint (
	seq bigint PRIMARY KEY CHECK (seq >= 1),
	ts_us bigint NOT NULL,
	head_hash bytea NOT NULL CHECK (length(head_hash) = 32),
	signature bytea NOT NULL CHECK (length(signature) BETWEEN 1 AND 1024)
);

-- Append-only for the service: SELECT (to resume the chain) and INSERT, and
-- deliberately no UPDATE, DELETE or TRUNCATE (nor REFERENCES/TRIGGER).
REVOKE ALL ON keycenter.audit, keycenter.audit_checkpoint FROM PUBLIC;
GRANT SELECT, INSERT ON keycenter.audit, keycenter.audit_checkpoint TO mica_keycenter;
