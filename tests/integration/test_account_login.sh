#!/usr/bin/env bash
# shellcheck disable=SC2016 # jq programs and PHC strings are single-quoted on purpose
# test_account_login.sh - mica-account end to end: login.
# Driven with curl against its own fresh database on the tests/run PostgreSQL, the harness
# Redis (ACL user account) and a private Key Center (the harness SoftHSM2 token), with small
# risk thresholds (lib-account.sh):
#   login: success by email, account number and phone, device last_seen, no enumeration
#   (identical 401s), captcha per account (all its identifiers together) and per network with
#   ALTCHA challenges solved by the real altcha-lib, rising cost, replay refused, a challenge
#   spent on another login or below the cost due refused; sealed hashes (legacy, damaged);
#   GET /v1/session on the event thread; rehash on login when the Argon2id cost rises; unusual
#   login rate
# A failed check is reported and the test goes on (check_fail, expect); it exits 1 at the end
# with the count. Everything it starts is stopped and its database dropped on exit.
set -euo pipefail

# shellcheck source=tests/integration/lib-account.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-account.sh"
account_begin test_account_login
account_small_limits
account_start
ok "Key Center on $KURL with keys account-pii/-index/-pepper; mica-account on $AURL"

alice_setup
PW_P='Phone-pass2'
register +8613900000001 "$PW_P" dev-phone
P_UID="$REG_UID" P_NO="$REG_ACCOUNT"
must expect 200 - POST /v1/login "$(login_body +8613900000001 "$PW_P" dev-phone)"
must expect 200 - POST /v1/login "$(login_body "$P_NO" "$PW_P" dev-phone)"

# ---------------------------------------------------------------------------------------------
step="2 login"
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
[[ "$(jget token)" =~ ^[A-Za-z0-9_-]{43}$ && "$(jget kind)" == app && "$(jget session_id)" =~ ^[0-9]+$ ]] ||
	check_fail "login: $(cat "$W/body")"
expect 200 - POST /v1/login "$(login_body "$ALICE_NO" "$PW_A" dev-alice)"
expect 200 - POST /v1/login "$(login_body ALICE@example.COM "$PW_A" dev-alice)"
# From a trusted device on a known network a login writes only its session: the device's
# last_seen moves when it is over a minute old, and not on every login.
ALICE_DEV="$(sql "$ADMIN_CI" "SELECT device_hash FROM account.session WHERE id = $(jget session_id)")"
last_seen() { # [SQL_EXPR]: the device's last_seen (epoch), after setting it to SQL_EXPR
	[[ -n "${1:-}" ]] && sql "$ADMIN_CI" "UPDATE account.device SET last_seen = $1
		WHERE user_id = $ALICE_UID AND device_hash = '$ALICE_DEV'" >/dev/null
	sql "$ADMIN_CI" "SELECT extract(epoch from last_seen)::bigint FROM account.device
		WHERE user_id = $ALICE_UID AND device_hash = '$ALICE_DEV'"
}
t=$(last_seen "now() - interval '30 seconds'")
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
[[ "$t" =~ ^[0-9]+$ && "$(last_seen)" == "$t" ]] || check_fail "a login moved a last_seen only 30 seconds old"
t=$(last_seen "now() - interval '2 minutes'")
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
(($(last_seen) >= t + 100)) || check_fail "a login left a 2-minute-old last_seen"
ok "a login from a trusted device refreshes its last_seen at most once a minute"
# Between requests the request threads' PostgreSQL connections wait idle on the shared stack.
metrics="$(curl -sS --cacert "$MICA_CA" "$AMURL/metrics")" || check_fail "GET /metrics failed"
if ! { grep -Eq '^mica_db_connections\{service="account",state="idle"\} [1-9][0-9]*$' <<<"$metrics" &&
	grep -q '^mica_db_connections{service="account",state="busy"} ' <<<"$metrics"; }; then
	check_fail "no idle database connections in /metrics: $(grep mica_db_ <<<"$metrics")"
fi
ok "/metrics counts the idle and busy database connections"
# GET /v1/session runs on an event thread, where Redis and PostgreSQL answer would_block: a
# session the in-process cache does not hold yet (a fresh login's) is checked on the blocking
# pool instead, and the answer is the same.
moved() { curl -sS --cacert "$MICA_CA" "$AMURL/metrics" |
	sed -n 's/^mica_http_moved_to_pool_total{service="account"} //p'; }
m0="$(moved)"
must expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
T_EV="$(jget token)"
expect 200 - -t "$T_EV" GET /v1/session
[[ "$(jget kind)" == app ]] || check_fail "GET /v1/session: $(cat "$W/body")"
m1="$(moved)"
((m1 >= m0 + 1)) || check_fail "a session-cache miss was not moved to the blocking pool ($m0 -> $m1)"
# The pool's run fills Redis, the next one the in-process cache (an invalidation racing the
# fill may cost one more round); from then on the event thread answers alone.
inline=0
for _ in 1 2 3 4 5; do
	expect 200 - -t "$T_EV" GET /v1/session
	m2="$(moved)"
	((m2 == m1)) && inline=1 && break
	m1="$m2"
done
((inline)) || check_fail "GET /v1/session never answered on the event thread"
ok "GET /v1/session answers a cache miss from the blocking pool and a hit on the event thread"
# A hash sealed the older way (encrypted by the Key Center itself, bound to the row) still logs in
# and is sealed again under a data key.
legacy="$(curl -sS --cacert "$MICA_CA" --cert "$MICA_CERT_ACCOUNT" --key "$MICA_KEY_ACCOUNT" \
	-H 'Content-Type: application/json' -d "$(js --arg p "$(kc_phc "$ALICE_UID" | base64 -w0)" \
	--arg r "$ALICE_UID" '{plaintext: $p, context: {service: "account", table: "user",
	column: "password", row: $r}}')" "$KURL/v1/encrypt/account-pepper" | jq -r .ciphertext)"
[[ "$legacy" == kc:v1:* ]] || check_fail "legacy seal: $legacy"
sql "$ADMIN_CI" "UPDATE account.user SET password_enc = '$legacy' WHERE id = $ALICE_UID" >/dev/null
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
[[ "$(sql "$ADMIN_CI" "SELECT password_enc FROM account.user WHERE id = $ALICE_UID")" == dk1.kc:v1:* &&
	"$(kc_phc "$ALICE_UID")" == '$argon2id$'* ]] || check_fail "the legacy hash was not sealed again"
ok "a hash sealed by the Key Center's encrypt logs in and is sealed again under a data key"
# A damaged sealed hash is a clear server error, never a crash or a wrong answer.
sealed="$(sql "$ADMIN_CI" "SELECT password_enc FROM account.user WHERE id = $ALICE_UID")"
c=${sealed: -10:1}
[[ "$c" == A ]] && c=B || c=A
for bad in "${sealed:0:${#sealed}-10}$c${sealed: -9}" 'dk1.kc:v1:AAAA' 'dk1..' 'dk1.kc:v1:AAAA.%%%' 'x'; do
	sql "$ADMIN_CI" "UPDATE account.user SET password_enc = '$bad' WHERE id = $ALICE_UID" >/dev/null
	expect 500 internal_error POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
done
sql "$ADMIN_CI" "UPDATE account.user SET password_enc = '$sealed' WHERE id = $ALICE_UID" >/dev/null
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
ok "a tampered, truncated or malformed sealed hash answers 500 internal_error"
expect 400 missing_field POST /v1/login '{"login": "alice@example.com", "password": "x"}'
expect 400 bad_login POST /v1/login "$(login_body nobody "$PW_A" dev-alice)"
expect 400 bad_session_kind POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice '{session_kind: "tv"}')"
expect 400 bad_device POST /v1/login "{\"login\": \"alice@example.com\", \"password\": \"x\", \"device\": {\"id\": \"d\", \"name\": \"$(printf 'n%.0s' $(seq 101))\"}}"

# No enumeration: a wrong password and an unknown account answer exactly alike.
expect 401 invalid_credentials POST /v1/login "$(login_body alice@example.com 'Wrong-pass1' dev-alice)"
cp "$W/body" "$W/wrong-password.json"
expect 401 invalid_credentials POST /v1/login "$(login_body nobody@example.com 'Wrong-pass1' dev-alice)"
cmp -s "$W/body" "$W/wrong-password.json" ||
	check_fail "bodies differ: $(cat "$W/wrong-password.json") vs $(cat "$W/body")"
ok "identical 401 bodies: $(cat "$W/body")"

# Three failures for the account, through two of its identifiers: the fourth attempt, through
# either, needs a proof of work, even with the right password.
expect 401 invalid_credentials POST /v1/login "$(login_body "$ALICE_NO" 'Wrong-pass1' dev-alice)"
expect 401 invalid_credentials POST /v1/login "$(login_body alice@example.com 'Wrong-pass1' dev-alice)"
expect 428 captcha_required POST /v1/login "$(login_body "$ALICE_NO" "$PW_A" dev-alice)"
expect 428 captcha_required POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
jget challenge >"$W/c1.json"
# Asking again is no failure: a second challenge at the same cost, kept for later.
expect 428 captcha_required POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
jget challenge >"$W/c1b.json"
[[ "$(jq -c 'keys' "$W/c1.json")" == '["algorithm","challenge","maxnumber","salt","signature"]' &&
	"$(jq -r .algorithm "$W/c1.json")" == SHA-256 && "$(jq .maxnumber "$W/c1.json")" == 1000 &&
	"$(jq -r .challenge "$W/c1.json")" =~ ^[0-9a-f]{64}$ &&
	"$(jq -r .signature "$W/c1.json")" =~ ^[0-9a-f]{64}$ ]] || check_fail "challenge: $(cat "$W/c1.json")"
# Other identifiers are not affected.
expect 200 - POST /v1/login "$(login_body +8613900000001 "$PW_P" dev-phone)"
P1="$(solve "$W/c1.json")"
P1B="$(solve "$W/c1b.json")"
# A challenge fetched for another login (here an identifier with no account, at its own
# threshold) cannot be spent on this one.
for _ in 1 2 3; do
	expect 401 invalid_credentials POST /v1/login "$(login_body thrower@example.com 'Wrong-pass1' dev-t)"
done
expect 428 captcha_required POST /v1/login "$(login_body thrower@example.com 'Wrong-pass1' dev-t)"
jget challenge >"$W/ct.json"
PT="$(solve "$W/ct.json")"
expect 428 captcha_required POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice "{altcha: \"$PT\"}")"
[[ "$(jget error.message)" == *wrong_scope* ]] || check_fail "foreign challenge: $(jget error.message)"
expect 428 captcha_required POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice \
	'{altcha: "eyJhbGdvcml0aG0iOiJTSEEtMjU2In0="}')"
[[ "$(jget error.message)" == *malformed* ]] || check_fail "message: $(jget error.message)"
# The solution passes the gate; the password is still checked (and this is one more failure).
expect 401 invalid_credentials POST /v1/login "$(login_body alice@example.com 'Wrong-pass1' dev-alice \
	"{altcha: \"$P1\"}")"
# The challenge fetched before that failure is now too cheap, and the new one costs twice as much.
expect 428 captcha_required POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice "{altcha: \"$P1B\"}")"
[[ "$(jget error.message)" == *too_cheap* ]] || check_fail "cheap challenge: $(jget error.message)"
jget challenge >"$W/c2.json"
[[ "$(jq .maxnumber "$W/c2.json")" == 2000 ]] || check_fail "cost did not rise: $(cat "$W/c2.json")"
P2="$(solve "$W/c2.json")"
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice "{altcha: \"$P2\"}")"
# A success clears the account's counter, for all its identifiers.
expect 200 - POST /v1/login "$(login_body "$ALICE_NO" "$PW_A" dev-alice)"
ok "ALTCHA challenges (maxnumber 1000, then 2000) solved by altcha-lib; another login's challenge and a too cheap one refused"

# Per network: unknown identifiers, each failing once, from 127.3.0.1 (network 127.3.0.0/24).
for i in $(seq 1 15); do
	expect 401 invalid_credentials -i 127.3.0.1 POST /v1/login "$(login_body "ghost$i@example.com" 'Wrong-pass1' dev-g)"
done
expect 428 captcha_required -i 127.3.0.1 POST /v1/login "$(login_body ghost16@example.com 'Wrong-pass1' dev-g)"
[[ "$(jget challenge.maxnumber)" == 1000 ]] || check_fail "network challenge: $(cat "$W/body")"
# The network's captcha holds for a right password too. A solution passes once (here into a
# step-up for the new network, which neither counts nor clears a network failure); replayed at
# the same cost it is refused.
expect 428 captcha_required -i 127.3.0.1 POST /v1/login "$(login_body +8613900000001 "$PW_P" dev-phone)"
jget challenge >"$W/cn.json"
PN="$(solve "$W/cn.json")"
expect 403 step_up_required -i 127.3.0.1 POST /v1/login "$(login_body +8613900000001 "$PW_P" dev-phone "{altcha: \"$PN\"}")"
expect 428 captcha_required -i 127.3.0.1 POST /v1/login "$(login_body +8613900000001 "$PW_P" dev-phone "{altcha: \"$PN\"}")"
[[ "$(jget error.message)" == *already_used* ]] || check_fail "replay message: $(jget error.message)"
expect 401 invalid_credentials -i 127.4.0.1 POST /v1/login "$(login_body ghost16@example.com 'Wrong-pass1' dev-g)"
ok "15 failures from one /24 network ask that network for a captcha, not others; replay refused"

# ---------------------------------------------------------------------------------------------
step="9 rehash and login rate"
phc="$(kc_phc "$P_UID")"
[[ "$phc" == '$argon2id$v=19$m=8192,t=2,p=1$'* ]] || check_fail "stored PHC before: $phc"
stack_stop account
ACCT_ENV+=(MICA_ACCOUNT_PASSWORD_ARGON2_MEMORY_KIB=19456 MICA_ACCOUNT_RISK_LOGIN_RATE_MAX=1)
account_start
# The phone account already logged in more than once this hour from its own device.
expect 403 step_up_required POST /v1/login "$(login_body +8613900000001 "$PW_P" dev-phone)"
[[ "$(jget reasons)" == '["unusual_rate"]' ]] || check_fail "reasons: $(cat "$W/body")"
phc="$(kc_phc "$P_UID")"
[[ "$phc" == '$argon2id$v=19$m=19456,t=2,p=1$'* ]] || check_fail "stored PHC after: $phc"
SU="$(jget stepup_id)"
expect 200 - POST "/v1/stepup/$SU/send" '{"method": "sms"}'
expect 200 - POST "/v1/stepup/$SU/verify" "{\"code\": \"$(code_for +8613900000001)\"}"
ok "the hash was upgraded to m=19456 at login; an unusual login rate asked for a step-up"

stack_stop account
stack_stop keycenter
stack_end
