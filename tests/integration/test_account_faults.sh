#!/usr/bin/env bash
# shellcheck disable=SC2016 # jq programs are single-quoted on purpose
# test_account_faults.sh - mica-account with a dependency down, each check performing the fault
# of issue 19 that went wrong before:
#   3. security notices outlive a Key Center outage: with the Key Center stopped, a password
#      change succeeds (sealed under the data key at hand) and its notice waits, logged as
#      delayed; the account service is killed (-9) with it pending; once the Key Center and the
#      service are back the notice arrives, exactly once. An account deleted while the Key
#      Center is down still tells its contacts (the notice carries their ciphertexts, never the
#      address), and the outbox events name no contact.
#   4. a failed registration keeps its code: register/complete held inside its transaction
#      (a row lock) while the Key Center is stopped succeeds, since nothing in the transaction
#      needs it; killed (-9) there, the code is still unused and registers the account after.
#      A password reset refused because the Key Center is down keeps its code too.
#   6. failures name the dependency that failed (`dependency` member, message) and /readyz
#      lists it, while /healthz stays 200: a login that fails for lack of the Key Center names
#      the Key Center; register/start with PostgreSQL stopped names the database; with Redis
#      stopped, Redis. What needs no Key Center (security questions, cross-device) or no Redis
#      (register/complete, a bearer check) is still served, as docs/api/account.md says.
# Everything it starts is stopped, PostgreSQL and Redis restarted if down, its database dropped.
set -euo pipefail

# shellcheck source=tests/integration/lib-account.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-account.sh"
account_begin test_account_faults
# PostgreSQL and Redis are shared with the tests after this one: never leave them stopped.
stack_on_exit() {
	mica_pg_running "$MICA_TEST_DIR" || mica__pg_start "$MICA_TEST_DIR" || true
	mica_redis_running "$MICA_TEST_DIR" || mica__redis_start "$MICA_TEST_DIR" || true
	if [[ -n "${BLOCKER_PID:-}" ]]; then kill "$BLOCKER_PID" 2>/dev/null || true; fi
	redis_clear || true
}

ACCT_ENV+=(MICA_ACCOUNT_SESSION_RECENT_AUTH_S=3600)
account_start
ok "Key Center on $KURL; mica-account on $AURL"

# expect_dep DEPENDENCY WORDS: the last answer is 503 unavailable naming DEPENDENCY.
expect_dep() {
	[[ "$(jget dependency)" == "$1" ]] || fail "dependency is not $1: $(cat "$W/body")"
	[[ "$(jget error.message)" == *"$2"* ]] || fail "the message does not name $2: $(cat "$W/body")"
}
notices_to() { # ADDR SUBJECT: how many messages with SUBJECT the development outbox has for ADDR
	sql "$ADMIN_CI" "SELECT count(*) FROM account.notification WHERE recipient = '$1' AND subject = '$2'"
}
wait_notice() { # ADDR SUBJECT SECONDS: until one such message exists
	local deadline=$((SECONDS + $3))
	until [[ "$(notices_to "$1" "$2")" -ge 1 ]]; do
		((SECONDS < deadline)) || fail "no '$2' to $1 within $3 s: $(sql "$ADMIN_CI" \
			"SELECT kind, attempts, last_error, next_at FROM account.notice")"
		sleep 0.2
	done
}
readyz_failing() { # the failing dependencies /readyz lists, comma-separated
	curl -sS --max-time 30 --cacert "$MICA_CA" -o "$W/ready" "$AURL/readyz" >/dev/null || true
	jq -r '[.failing[]?.dependency] | join(",")' "$W/ready"
}
readyz_lists() { # DEPENDENCY: /readyz lists it within 5 s (its answer is reused for 1 s)
	local deadline=$((SECONDS + 5))
	until [[ "$(readyz_failing)" == *"$1"* ]]; do
		((SECONDS < deadline)) || fail "/readyz does not list $1: $(cat "$W/ready")"
		sleep 0.2
	done
}

PW='Alice-pass1'
register alice@example.com "$PW" dev-alice
T_ALICE="$REG_TOKEN"
# A login now: the password's data key is then in the service's cache, as on a busy server.
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW" dev-alice)"

# ---------------------------------------------------------------------------------------------
step="3 notices outlive a Key Center outage"
CHANGED='Your mica password was changed'
stack_stop keycenter
# Before: the change succeeded, the notice was skipped (contacts did not decrypt), unlogged.
expect 200 - -t "$T_ALICE" POST /v1/password/change \
	"$(js --arg c "$PW" '{current_password: $c, new_password: "Alice-pass2"}')"
deadline=$((SECONDS + 20))
until grep -q 'notice: event [0-9]* (password_changed) delayed: the Key Center is unavailable' \
	"$W/account.log"; do
	((SECONDS < deadline)) || fail "no log line says the notice is delayed"
	sleep 0.2
done
[[ "$(notices_to alice@example.com "$CHANGED")" == 0 ]] || fail "a notice went out without the Key Center"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.notice WHERE kind = 'password_changed' AND attempts >= 1")" == 1 ]] ||
	fail "the notice is not waiting: $(sql "$ADMIN_CI" "SELECT * FROM account.notice")"
ok "the change succeeded; its notice waits, logged as delayed"
# Killed with the notice pending: nothing is lost (it is in PostgreSQL).
kill -KILL "${STACK_PID[account]}"
wait "${STACK_PID[account]}" 2>/dev/null || true
STACK_PID[account]=""
kc_start
account_start
wait_notice alice@example.com "$CHANGED" 90
[[ "$(notices_to alice@example.com "$CHANGED")" == 1 ]] || fail "the notice went out more than once"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.notice")" == 0 ]] ||
	fail "a delivered notice is still queued"
grep -q 'notice: event [0-9]* (password_changed) delivered after [0-9]* attempts' "$W/account.log" ||
	fail "the late delivery was not logged"
ok "after kill -9 and the Key Center's return the notice arrived, once"

# Deletion with the Key Center down: the rows are gone before the notice can be sent.
register bob@example.com 'Bob-pass1' dev-bob
T_BOB="$REG_TOKEN"
stack_stop keycenter
expect 200 - -t "$T_BOB" DELETE /v1/account
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.notice WHERE kind = 'deleted' AND carried ? 'email'")" == 1 ]] ||
	fail "the deletion notice does not carry the contact"
if sql "$ADMIN_CI" "SELECT payload::text FROM outbox.event WHERE topic = 'account.notice'" | grep -q '@\|kc:v'; then
	fail "an outbox event holds a contact"
fi
if sql "$ADMIN_CI" "SELECT carried::text FROM account.notice" | grep -q 'bob@'; then
	fail "a carried contact is in clear"
fi
kc_start
wait_notice bob@example.com 'Your mica account was deleted' 90
deadline=$((SECONDS + 10))
until [[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.notice")" == 0 ]]; do
	((SECONDS < deadline)) || fail "the deletion notice and its ciphertexts outlive the delivery"
	sleep 0.2
done
ok "a deletion during the outage still reaches the contact; no contact in the events"

# ---------------------------------------------------------------------------------------------
step="4 a failed registration keeps its code"
# register/complete for carol, held inside its transaction: another transaction has inserted
# an uncommitted row with carol's address, so the account's INSERT waits on the unique index.
hold_address() { # VID SECONDS: in the background, hold that row for SECONDS
	local idx
	idx="$(sql "$ADMIN_CI" "SELECT target_idx FROM account.verification WHERE id = '$1'")"
	psql "$ADMIN_CI" -X -qAt -v ON_ERROR_STOP=1 >/dev/null 2>&1 <<SQL &
BEGIN;
INSERT INTO account.user (account_no_enc, account_no_idx, password_enc, password_policy, email_idx)
	VALUES ('', 'blocker-$1', '', 'miui', '$idx');
SELECT pg_sleep($2);
ROLLBACK;
SQL
	BLOCKER_PID=$!
	local deadline=$((SECONDS + 20))
	until [[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")" -ge 1 ]]; do
		((SECONDS < deadline)) || fail "the blocking transaction did not start"
		sleep 0.1
	done
}
wait_lock() { # until mica-account waits on a lock
	local deadline=$((SECONDS + 20))
	until [[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM pg_stat_activity WHERE usename = 'mica_account' AND wait_event_type = 'Lock'")" -ge 1 ]]; do
		((SECONDS < deadline)) || fail "register/complete never reached its transaction"
		sleep 0.1
	done
}
start_carol() { # ADDR: sets VID CODE
	must expect 200 - POST /v1/register/start "$(js --arg v "$1" '{email: $v}')"
	VID="$(jget verification_id)"
	CODE="$(code_for "$1")"
}
# a) The Key Center stops while the transaction waits. Before: the code was consumed first, and
# the account's seals then failed with 503, leaving the user with code_used.
start_carol carol@example.com
hold_address "$VID" 4
curl -sS --max-time 60 --cacert "$MICA_CA" -o "$W/carol.json" -w '%{http_code}' \
	-H 'Content-Type: application/json' -X POST \
	--data-binary "$(complete "$VID" "$CODE" 'Carol-pass1' dev-carol)" \
	"$AURL/v1/register/complete" >"$W/carol.status" &
CURL_PID=$!
wait_lock
stack_stop keycenter
wait "$BLOCKER_PID" || true
BLOCKER_PID=""
wait "$CURL_PID" || fail "curl register/complete failed"
st="$(cat "$W/carol.status")"
if [[ "$st" != 201 ]]; then
	kc_start
	expect 201 - POST /v1/register/complete "$(complete "$VID" "$CODE" 'Carol-pass1' dev-carol)"
else
	echo "ok - $step: register/complete -> 201 with the Key Center stopped during its transaction"
	kc_start
fi
ok "the Key Center failing mid-registration does not burn the code"
# b) The service is killed while the transaction waits: the code's consumption dies with it.
start_carol dave@example.com
hold_address "$VID" 3
curl -sS --max-time 60 --cacert "$MICA_CA" -o /dev/null \
	-H 'Content-Type: application/json' -X POST \
	--data-binary "$(complete "$VID" "$CODE" 'Dave-pass1' dev-dave)" \
	"$AURL/v1/register/complete" >/dev/null 2>&1 &
CURL_PID=$!
wait_lock
kill -KILL "${STACK_PID[account]}"
wait "${STACK_PID[account]}" 2>/dev/null || true
STACK_PID[account]=""
wait "$CURL_PID" 2>/dev/null || true
wait "$BLOCKER_PID" || true
BLOCKER_PID=""
[[ "$(sql "$ADMIN_CI" "SELECT consumed_at IS NULL FROM account.verification WHERE id = '$VID'")" == t ]] ||
	fail "the code was consumed by a registration that never finished"
account_start
expect 201 - POST /v1/register/complete "$(complete "$VID" "$CODE" 'Dave-pass1' dev-dave)"
expect 400 code_used POST /v1/register/complete "$(complete "$VID" "$CODE" 'Dave-pass1' dev-dave)"
ok "killed mid-registration, the code still registers the account (once)"
# c) The other codes: a reset whose address cannot be opened (the Key Center stopped) keeps its
# code. Before: the code was consumed first, then the 503 left it used.
must expect 200 - POST /v1/password/reset/start '{"login": "alice@example.com"}'
VID="$(jget verification_id)"
CODE="$(code_for alice@example.com)"
RESET="$(js --arg v "$VID" --arg c "$CODE" '{verification_id: $v, code: $c, new_password: "Alice-pass3"}')"
stack_stop keycenter
expect 503 unavailable POST /v1/password/reset/complete "$RESET"
expect_dep keycenter "Key Center"
kc_start
expect 200 - POST /v1/password/reset/complete "$RESET"
wait_notice alice@example.com 'Your mica password was reset' 30
ok "a reset refused for lack of the Key Center keeps its code"

# ---------------------------------------------------------------------------------------------
step="6 failures name the dependency"
must expect 200 - POST /v1/login "$(login_body alice@example.com 'Alice-pass3' dev-alice)"
T6="$(jget token)"
stack_stop keycenter
# What needs no Key Center is still served (docs/api/account.md, "When a dependency is down").
expect 200 - -t "$T6" PUT /v1/security/questions '{"questions": [{"question": "Pet?", "answer": "Rex"}]}'
expect 200 - -t "$T6" PUT /v1/security/cross-device '{"enabled": true}'
expect 503 unavailable -t "$T6" GET /v1/me
expect_dep keycenter "Key Center"
# An address never looked up, so no cached index answers for the Key Center.
expect 503 unavailable POST /v1/login "$(login_body erin@example.com 'Erin-pass1' dev-alice)"
expect_dep keycenter "Key Center"
readyz_lists keycenter
expect 200 - GET /healthz
ok "a login without the Key Center names it; /readyz lists it; /healthz is liveness only"
kc_start
mica_pg_stop "$MICA_TEST_DIR"
expect 503 unavailable POST /v1/register/start '{"email": "frank@example.com"}'
expect_dep database "database"
readyz_lists database
mica__pg_start "$MICA_TEST_DIR"
ok "register/start with PostgreSQL stopped names the database"
must expect 200 - POST /v1/register/start '{"email": "gina@example.com"}'
VID="$(jget verification_id)"
mica_redis_stop "$MICA_TEST_DIR"
expect 201 - POST /v1/register/complete "$(complete "$VID" "$(code_for gina@example.com)" 'Gina-pass1' dev-gina)"
expect 200 - -t "$T6" GET /v1/session
expect 503 unavailable POST /v1/login "$(login_body alice@example.com 'Alice-pass3' dev-alice)"
expect_dep redis "Redis"
readyz_lists redis
mica__redis_start "$MICA_TEST_DIR"
ok "a login with Redis stopped names Redis"
# Everything back: ready again, and a notice emitted meanwhile is delivered.
deadline=$((SECONDS + 30))
until [[ -z "$(readyz_failing)" ]]; do
	((SECONDS < deadline)) || fail "not ready after every dependency came back: $(cat "$W/ready")"
	sleep 0.5
done
ok "ready again"

stack_stop account
stack_stop keycenter
stack_end
