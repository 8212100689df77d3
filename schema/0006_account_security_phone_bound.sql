-- 0006_account_security_phone_bound.sql - when an account bound its security
-- phone, so the number-recycling check can tell whether the carrier gave the
-- number to someone else since (as phone_bound_at does for the login phone).
-- Rows bound before this migration take their account's creation time: the
-- earliest the number can have been bound, so a recycling after it counts.

ALTER TABLE account.user ADD COLUMN security_phone_bound_at timestamptz;
UPDATE account.user SET security_phone_bound_at = created_at WHERE security_phone_idx IS NOT NULL;
CREATE INDEX user_security_phone_idx ON account.user (security_phone_idx)
	WHERE security_phone_idx IS NOT NULL;
