-- 0007_account_sealed_at_rest.sql - what the account service keeps at rest
-- is keyed or sealed, never an unkeyed hash or clear text a database copy
-- gives away:
--   verification.code_hash     Key Center HMAC (account-index) of "code:<id>:<code>"
--   network.network_hash,
--   stepup.network_hash        Key Center HMAC (account-index) of "network:<prefix>"
--   security_question.answer_hash
--                              Argon2id PHC sealed under a pepper data key (account-pepper)
--   security_question.question,
--   device.name, stepup.device_name
--                              sealed under a data key of account-pii, bound to the row
--
-- Rows written before: codes hashed with unkeyed SHA-256 cannot be keyed
-- (the code is not kept), so they are retired here: their hash is replaced
-- and they expire now (a user asks for a new code). Questions, answers and
-- device names are sealed by mica-account at start (account/atrest.c),
-- since only it holds the keys. Unkeyed network hashes are re-keyed at the
-- account's next right password from that network (account/login.c); until
-- then they still count as known networks.

UPDATE account.verification
	SET code_hash = 'retired', expires_at = least(expires_at, now())
	WHERE code_hash NOT LIKE 'kc:%';

COMMENT ON COLUMN account.verification.code_hash IS
	'Key Center HMAC (index key) of "code:<id>:<code>"; "retired" for codes of before 0007';
COMMENT ON COLUMN account.network.network_hash IS
	'Key Center HMAC (index key) of "network:<prefix>"; 64 hex digits (unkeyed SHA-256) until re-keyed at login';
COMMENT ON COLUMN account.security_question.answer_hash IS
	'Argon2id PHC of the normalised answer, sealed under a pepper data key ("dk1.")';
COMMENT ON COLUMN account.security_question.question IS
	'the question, sealed under a data key of the pii key ("dk1.")';
COMMENT ON COLUMN account.device.name IS
	'the device name, sealed under a data key of the pii key ("dk1."), or empty';
