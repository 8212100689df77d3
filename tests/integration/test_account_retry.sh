#!/usr/bin/env bash
# shellcheck disable=SC2016 # jq programs are single-quoted on purpose
# test_account_retry.sh - a transaction that PostgreSQL makes retry repeats no Argon2id hash and
# no Key Center round trip: the password's hash is made and sealed once, before the transaction.
# A trigger (installed by the superuser) fails the first write of a password in each flow with
# SQLSTATE 40001, so mica_db_tx retries, and records a fingerprint of the sealed password each
# attempt writes in sequences (which a rollback does not undo). Each hash has a fresh salt and
# each seal a fresh nonce, so a password hashed or sealed again in the retry writes another
# value: the two fingerprints must be equal.
#   1. register/complete: create_account_tx retried.
#   2. reset/complete: reset_tx retried (before: it hashed and sealed in each attempt).
#   3. password/change: change_tx retried (before: the same).
# Either flow still answers as without the fault, and the new password logs in.
# Everything it starts is stopped and its database dropped.
set -euo pipefail

# shellcheck source=tests/integration/lib-stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-stack.sh"
stack_begin test_account_retry MICA_REDIS_SOCKET MICA_REDIS_PASSWORD_FILE_ACCOUNT \
	MICA_CERT_ACCOUNT MICA_KEY_ACCOUNT
ACCT_BIN="$BUILD/bin/mica-account"
KC_BIN="$BUILD/bin/mica-keycenter"
for f in "$ACCT_BIN" "$KC_BIN"; do [[ -x "$f" ]] || fail "$f is missing (make all)"; done
command -v jq >/dev/null || fail "jq is not installed"

redis_clear() {
	local k
	mica_redis_cli "$MICA_TEST_DIR" account --scan --pattern 'account:*' 2>/dev/null |
		while IFS= read -r k; do
			[[ -n "$k" ]] && mica_redis_cli "$MICA_TEST_DIR" account DEL "$k" >/dev/null
		done
}
stack_on_exit() { redis_clear || true; }

step="setup"
redis_clear
stack_account_setup
stack_start account "$AURL" "${ACCT_ENV[@]}" "$ACCT_BIN" --config deploy/mica.conf.example
ok "Key Center on $KURL; mica-account on $AURL"

status=""
expect() { # STATUS METHOD PATH [JSON]: body in $W/body
	local want="$1" args=(-sS --max-time 30 --cacert "$MICA_CA" -o "$W/body" -w '%{http_code}' -X "$2")
	if (($# >= 4)); then args+=(-H 'Content-Type: application/json' --data-binary "$4"); fi
	status="$(curl "${args[@]}" "$AURL$3")" || fail "curl $2 $3 failed"
	[[ "$status" == "$want" ]] || fail "$2 $3: status $status, want $want: $(cat "$W/body")"
	echo "ok - $step: $2 $3 -> $want"
}
js() { jq -nc "$@"; }
code_for() {
	local c
	c="$("$MICA" outbox list --db "$ADMIN_CI" --to "$1" --limit 20 2>/dev/null |
		sed -n 's/.*verification code is \([0-9]\{6\}\)\..*/\1/p' | tail -n 1)"
	[[ "$c" =~ ^[0-9]{6}$ ]] || fail "no verification code for $1 in the outbox"
	printf '%s' "$c"
}

# The fault: the first write of a new password_enc fails with 40001; each attempt's value is
# fingerprinted (hashtext) into fault_first / fault_retry.
sql "$ADMIN_CI" "
CREATE SEQUENCE public.fault_calls;
CREATE SEQUENCE public.fault_first MINVALUE 0;
CREATE SEQUENCE public.fault_retry MINVALUE 0;
CREATE FUNCTION public.fault_once() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog AS \$\$
BEGIN
	IF TG_OP = 'UPDATE' AND NEW.password_enc IS NOT DISTINCT FROM OLD.password_enc THEN
		RETURN NEW;
	END IF;
	IF nextval('public.fault_calls') = 1 THEN
		PERFORM setval('public.fault_first', abs(hashtext(NEW.password_enc)::bigint));
		RAISE EXCEPTION 'injected serialization failure' USING ERRCODE = 'serialization_failure';
	END IF;
	PERFORM setval('public.fault_retry', abs(hashtext(NEW.password_enc)::bigint));
	RETURN NEW;
END \$\$;
CREATE TRIGGER fault_once BEFORE INSERT OR UPDATE ON account.user
	FOR EACH ROW EXECUTE FUNCTION public.fault_once();"
fault_reset() {
	sql "$ADMIN_CI" "SELECT setval('public.fault_calls', 1, false), setval('public.fault_first', 0),
		setval('public.fault_retry', 0)" >/dev/null
}
# fault_check WHAT: the flow was retried once, and its retry wrote the first attempt's value.
fault_check() {
	local calls first retry
	calls="$(sql "$ADMIN_CI" "SELECT last_value FROM public.fault_calls")"
	first="$(sql "$ADMIN_CI" "SELECT last_value FROM public.fault_first")"
	retry="$(sql "$ADMIN_CI" "SELECT last_value FROM public.fault_retry")"
	[[ "$calls" == 2 ]] || fail "$1: the password was written $calls times, want 2 (one retry)"
	[[ "$first" != 0 && "$retry" != 0 ]] || fail "$1: no fingerprint (first $first, retry $retry)"
	[[ "$first" == "$retry" ]] ||
		fail "$1: the retry wrote another sealed password ($first, then $retry): it hashed or sealed again"
	ok "$1: retried once, with the password hashed and sealed before the transaction"
}
login_ok() { # LOGIN PASSWORD DEVICE: the password is right (a session, or a step-up after it)
	local st
	st="$(curl -sS --max-time 30 --cacert "$MICA_CA" -o "$W/body" -w '%{http_code}' -X POST \
		-H 'Content-Type: application/json' \
		--data-binary "$(js --arg l "$1" --arg p "$2" --arg d "$3" '{login: $l, password: $p, device: {id: $d}}')" \
		"$AURL/v1/login")" || fail "curl login failed"
	[[ "$st" == 200 || "$st" == 403 ]] || fail "login of $1: status $st: $(cat "$W/body")"
	echo "ok - $step: the password of $1 is right ($st)"
}

step="1 register/complete retried"
fault_reset
expect 200 POST /v1/register/start '{"email":"erin@example.com"}'
VID="$(jget verification_id)"
expect 201 POST /v1/register/complete "$(js --arg v "$VID" --arg c "$(code_for erin@example.com)" \
	'{verification_id: $v, code: $c, password: "Erin-pass1", device: {id: "dev-erin"}}')"
fault_check "register/complete"
login_ok erin@example.com Erin-pass1 dev-erin

step="2 reset/complete retried"
fault_reset
expect 200 POST /v1/password/reset/start '{"login":"erin@example.com"}'
VID="$(jget verification_id)"
expect 200 POST /v1/password/reset/complete "$(js --arg v "$VID" --arg c "$(code_for erin@example.com)" \
	'{verification_id: $v, code: $c, new_password: "Erin-pass2"}')"
fault_check "reset/complete"
login_ok erin@example.com Erin-pass2 dev-erin

step="3 password/change retried"
expect 200 POST /v1/login "$(js '{login: "erin@example.com", password: "Erin-pass2", device: {id: "dev-erin"}}')"
TOKEN="$(jget token)"
[[ -n "$TOKEN" ]] || fail "the login gave no token: $(cat "$W/body")"
fault_reset
status="$(curl -sS --max-time 30 --cacert "$MICA_CA" -o "$W/body" -w '%{http_code}' -X POST \
	-H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
	--data-binary '{"current_password":"Erin-pass2","new_password":"Erin-pass3"}' \
	"$AURL/v1/password/change")" || fail "curl password/change failed"
[[ "$status" == 200 ]] || fail "password/change: status $status, want 200: $(cat "$W/body")"
fault_check "password/change"
login_ok erin@example.com Erin-pass3 dev-erin

sql "$ADMIN_CI" "DROP TRIGGER fault_once ON account.user" >/dev/null
echo "PASS test_account_retry"
