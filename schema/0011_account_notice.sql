-- 0011_account_notice.sql - security notices (password changed or reset,
-- account frozen, new sign-in, security contact added or removed, account
-- deleted, phone number recycled) go through the transactional outbox.
--
-- The operation emits an outbox.event of topic account.notice in its own
-- transaction; its payload names only the account and the kind of notice
-- ({"user_id": N, "kind": "...", ...}: no contact, nothing personal). The
-- account service's notice worker consumes it as account.notices and
-- copies it into account.notice, from where it is delivered with retries:
-- the contacts are decrypted only then, so a Key Center that is down
-- delays a notice instead of losing it. A notice sent after the contact
-- rows are gone (deletion, a removed security contact) carries the
-- contacts' Key Center ciphertexts, copied from account.user in the
-- operation's transaction (still bound to their original row). A row is
-- deleted once its notice is delivered (or given up), so nothing of a
-- deleted account stays behind.

INSERT INTO outbox.subscription (consumer, topic) VALUES ('account.notices', 'account.notice')
	ON CONFLICT DO NOTHING;

CREATE TABLE account.notice (
	event_id bigint PRIMARY KEY,        -- the outbox.event it came from
	user_id bigint NOT NULL,            -- no foreign key: a deletion notice outlives its account
	kind text NOT NULL CHECK (kind <> ''),
	detail jsonb NOT NULL DEFAULT '{}', -- kind-specific: device hash, which contact
	carried jsonb,                      -- contact ciphertexts of rows gone by delivery
	sent integer NOT NULL DEFAULT 0,    -- one bit per contact already delivered
	attempts integer NOT NULL DEFAULT 0,
	next_at timestamptz NOT NULL DEFAULT now(),
	last_error text,                    -- mica error name of the last failed attempt
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notice_due_idx ON account.notice (next_at);
GRANT SELECT, INSERT, UPDATE, DELETE ON account.notice TO mica_account;

-- The worker claims its own pending rows (lib/outbox: DELETE ... FOR UPDATE
-- SKIP LOCKED); row security keeps other consumers' rows out of its sight.
GRANT SELECT, UPDATE, DELETE ON outbox.pending TO mica_account;
ALTER TABLE outbox.pending ENABLE ROW LEVEL SECURITY;
CREATE POLICY pending_account ON outbox.pending TO mica_account
	USING (consumer LIKE 'account.%') WITH CHECK (consumer LIKE 'account.%');
