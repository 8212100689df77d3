#!/usr/bin/env bash
# shellcheck disable=SC2016 # jq programs and PHC strings are single-quoted on purpose
# test_account_recycled.sh - mica-account end to end: recycled phone numbers.
# Driven with curl against its own fresh database on the tests/run PostgreSQL, the harness
# Redis (ACL user account) and a private Key Center (the harness SoftHSM2 token), with small
# risk thresholds (lib-account.sh):
#   recycled phone numbers: `mica recycled add` and `import`; a recycled login number moves to
#   its new owner, a recycled security phone leaves the old account, a reset through a recycled
#   number is refused silently; the carrier's HTTPS check (mTLS) and its failure
# A failed check is reported and the test goes on (check_fail, expect); it exits 1 at the end
# with the count. Everything it starts is stopped and its database dropped on exit.
set -euo pipefail

# shellcheck source=tests/integration/lib-account.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-account.sh"
account_begin test_account_recycled
account_small_limits
account_start
ok "Key Center on $KURL with keys account-pii/-index/-pepper; mica-account on $AURL"
AURL_A="$AURL"

# ---------------------------------------------------------------------------------------------
step="6 recycled number"
register +8613800000001 'Arecycle-1' dev-a
A_TOKEN="$REG_TOKEN" A_UID="$REG_UID" A_NO="$REG_ACCOUNT"
fresh "$REG_SID"
bind_contact "$A_TOKEN" email a-sec@example.com
# Not recycled: the number stays with A.
expect 200 - POST /v1/register/start '{"phone": "+8613800000001"}'
expect 409 identifier_in_use POST /v1/register/complete \
	"$(complete "$(jget verification_id)" "$(code_for +8613800000001)" 'Brecycle-2' dev-b)"
expect 200 - POST /v1/login "$(login_body +8613800000001 'Arecycle-1' dev-a)"
# The carrier recycled it today: recorded with `mica recycled add` in the local stand-in of the
# number-recycling check, under the number's blind index (the Key Center computes it).
recycled_add() { # PHONE DATE
	"$MICA" recycled add --db "$ADMIN_CI" --phone "$1" --on "$2" --kc-url "$KURL" --ca "$MICA_CA" \
		--cert "$MICA_CERT_ACCOUNT" --key "$MICA_KEY_ACCOUNT" >"$W/recycled.out" 2>&1
}
day="$(sql "$ADMIN_CI" "SELECT current_date")"
rc=0
recycled_add 8613800000001 "$day" || rc=$?
if [[ "$rc" != 64 ]] || ! grep -qx 'mica recycled add: --phone is + and 7 to 15 digits' "$W/recycled.out"; then
	check_fail "mica recycled add with a number without +: exit $rc: $(head -n 1 "$W/recycled.out")"
fi
rc=0
"$MICA" recycled remove >/dev/null 2>"$W/recycled.err" || rc=$?
[[ "$rc" == 64 && "$(head -n 1 "$W/recycled.err")" == "mica recycled: expected add or import" ]] ||
	check_fail "mica recycled remove: exit $rc: $(head -n 1 "$W/recycled.err")"
recycled_add +8613800000001 "$day" ||
	check_fail "mica recycled add: $(cat "$W/recycled.out")"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.recycled_number r JOIN account.user u
	ON u.phone_idx = r.phone_idx WHERE u.id = $A_UID")" == 1 ]] || check_fail "the recorded index is not A's number's"
# A carrier's list: checked whole before anything is written, then written in one transaction.
recycled_import() { # FILE
	"$MICA" recycled import --db "$ADMIN_CI" --file "$1" --kc-url "$KURL" --ca "$MICA_CA" \
		--cert "$MICA_CERT_ACCOUNT" --key "$MICA_KEY_ACCOUNT" >"$W/recycled.out" 2>&1
}
recycled_rows() { sql "$ADMIN_CI" "SELECT count(*) FROM account.recycled_number"; }
rows=$(recycled_rows)
printf '+8613800000991,%s\n# from the carrier\n+8613800000992 ,2026-2-3\n' "$day" >"$W/recycled.bad"
rc=0
recycled_import "$W/recycled.bad" || rc=$?
[[ "$rc" == 65 && "$(head -n 1 "$W/recycled.out")" == "mica recycled import: $W/recycled.bad:3: the day is not YYYY-MM-DD" ]] ||
	check_fail "import of a bad list: exit $rc: $(head -n 1 "$W/recycled.out")"
[[ "$(recycled_rows)" == "$rows" ]] || check_fail "a failed import wrote rows"
printf '+8613800000991,%s\n+8613800000992,2026-13-01\n' "$day" >"$W/recycled.bad"
rc=0
recycled_import "$W/recycled.bad" || rc=$?
[[ "$rc" == 1 && "$(recycled_rows)" == "$rows" ]] ||
	check_fail "import with a day PostgreSQL refuses: exit $rc, rows $(recycled_rows) (was $rows): $(cat "$W/recycled.out")"
printf '# carrier list\r\n\r\n  +8613800000991 , %s\r\n+8613800000001,%s\n' "$day" "$day" >"$W/recycled.list"
recycled_import - <"$W/recycled.list" || check_fail "import from stdin: $(cat "$W/recycled.out")"
[[ "$(cat "$W/recycled.out")" == "numbers: 2 read, 1 recorded, 1 already recorded" ]] ||
	check_fail "import: $(cat "$W/recycled.out")"
[[ "$(recycled_rows)" == "$((rows + 1))" ]] || check_fail "import wrote $(recycled_rows) rows (was $rows)"
ok "mica recycled import: a bad line (exit 65) or a day PostgreSQL refuses writes nothing; CRLF, comments, stdin"
register +8613800000001 'Brecycle-2' dev-b
B_UID="$REG_UID"
[[ "$(sql "$ADMIN_CI" "SELECT (phone_idx IS NULL) || ' ' || (phone_enc IS NULL) FROM account.user WHERE id = $A_UID")" == "true true" ]] ||
	check_fail "A kept the number"
expect 401 invalid_credentials POST /v1/login "$(login_body +8613800000001 'Arecycle-1' dev-a)"
expect 200 - POST /v1/login "$(login_body +8613800000001 'Brecycle-2' dev-b)"
[[ "$(sql "$ADMIN_CI" "SELECT user_id FROM account.session WHERE id = $(jget session_id)")" == "$B_UID" ]] ||
	check_fail "the phone logs into the wrong account"
expect 200 - POST /v1/login "$(login_body "$A_NO" 'Arecycle-1' dev-a)"
[[ "$(notes a-sec@example.com 'Your phone number was removed')" == 1 ]] ||
	check_fail "A was not told on its security email"
# A reset through the number reaches B, never A. (With the recycling dated the very day B bound
# the number, the day-granular check cannot tell the order and refuses B too; a carrier's date
# before B's binding is the realistic case.)
sql "$ADMIN_CI" "UPDATE account.recycled_number SET recycled_on = current_date - 1"
expect 200 - POST /v1/password/reset/start '{"login": "+8613800000001"}'
[[ "$(sql "$ADMIN_CI" "SELECT user_id FROM account.verification WHERE id = '$(jget verification_id)'")" == "$B_UID" ]] ||
	check_fail "reset by the recycled number"
ok "recycled number moved to B; A cannot use it and was told by email"

# A security phone the carrier recycled: when its new owner registers it, the old account
# loses it (step-up codes and notices must not reach the new owner) and is told by email.
code_limits_clear
register c-recycle@example.com 'Crecycle-1' dev-c
C_TOKEN="$REG_TOKEN" C_UID="$REG_UID"
fresh "$REG_SID"
bind_contact "$C_TOKEN" phone +8613800000002
[[ "$(sql "$ADMIN_CI" "SELECT security_phone_bound_at IS NOT NULL FROM account.user WHERE id = $C_UID")" == t ]] ||
	check_fail "no security_phone_bound_at"
sql "$ADMIN_CI" "INSERT INTO account.recycled_number (phone_idx, recycled_on)
	SELECT security_phone_idx, current_date FROM account.user WHERE id = $C_UID" >/dev/null
register +8613800000002 'Drecycle-2' dev-d
[[ "$(sql "$ADMIN_CI" "SELECT (security_phone_idx IS NULL) || ' ' || (security_phone_enc IS NULL)
	FROM account.user WHERE id = $C_UID")" == "true true" ]] || check_fail "C kept the recycled security phone"
[[ "$(notes c-recycle@example.com 'Your security phone number was removed')" == 1 &&
	"$(notes +8613800000002 'Your security phone number was removed')" == 0 ]] ||
	check_fail "C was not told by email only"
# A security phone that was not recycled may be shared: it stays.
register e-recycle@example.com 'Erecycle-1' dev-e
E_TOKEN="$REG_TOKEN" E_UID="$REG_UID"
fresh "$REG_SID"
bind_contact "$E_TOKEN" phone +8613800000004
register +8613800000004 'Frecycle-2' dev-f
[[ "$(sql "$ADMIN_CI" "SELECT security_phone_idx IS NOT NULL FROM account.user WHERE id = $E_UID")" == t ]] ||
	check_fail "a shared, not recycled security phone was removed"
ok "a recycled security phone leaves the old account (told by email); a shared one stays"

# A reset asked through a login phone the carrier recycled (before anyone registered it): the
# same answer as always, no code, the account loses the number and is told by email only, so
# the number's new holder learns nothing.
code_limits_clear
register +8613800000003 'Grecycle-1' dev-g
G_TOKEN="$REG_TOKEN" G_UID="$REG_UID"
fresh "$REG_SID"
bind_contact "$G_TOKEN" email g-sec@example.com
sql "$ADMIN_CI" "INSERT INTO account.recycled_number (phone_idx, recycled_on)
	SELECT phone_idx, current_date FROM account.user WHERE id = $G_UID" >/dev/null
n_codes="$(sql "$ADMIN_CI" "SELECT count(*) FROM account.notification WHERE recipient = '+8613800000003'")"
expect 200 - POST /v1/password/reset/start '{"login": "+8613800000003"}'
[[ "$(jget channel)" == sms && "$(jget verification_id)" =~ ^[0-9a-f]{32}$ ]] ||
	check_fail "reset/start through a recycled number: $(cat "$W/body")"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.notification WHERE recipient = '+8613800000003'")" == "$n_codes" ]] ||
	check_fail "the recycled number's new holder got a message"
[[ "$(sql "$ADMIN_CI" "SELECT phone_idx IS NULL FROM account.user WHERE id = $G_UID")" == t &&
	"$(notes g-sec@example.com 'Password reset refused')" == 1 ]] ||
	check_fail "G kept the number or was not told on its security email"
ok "a reset through a recycled number is refused silently; the account loses it and is told by email"

# The check as a carrier's HTTPS endpoint (account.recycling.mode = http), on a third instance.
mica_free_port CPORT
: >"$W/recycled.txt"
python3 tests/peers/carrier_stub.py "$MICA_CERT_SERVER" "$MICA_KEY_SERVER" "$MICA_CA" "$CPORT" \
	"$W/recycled.txt" "$W/carrier.log" </dev/null >/dev/null 2>&1 &
STACK_PID[carrier]=$!
if env "${ACCT_ENV[@]}" MICA_ACCOUNT_RECYCLING_MODE=http MICA_ACCOUNT_RECYCLING_URL="http://localhost:$CPORT/" \
	timeout 60 "$ACCT_BIN" --config deploy/mica.conf.example >"$W/recycling.log" 2>&1; then
	check_fail "mica-account started with a plain-http recycling URL"
fi
grep -q 'account.recycling.url: mode http needs an https:// URL' "$W/recycling.log" ||
	check_fail "start-up error: $(tail -n 3 "$W/recycling.log")"
if env "${ACCT_ENV[@]}" MICA_ACCOUNT_RECYCLING_MODE=https timeout 60 "$ACCT_BIN" \
	--config deploy/mica.conf.example >"$W/recycling.log" 2>&1; then
	check_fail "mica-account started with recycling mode https"
fi
grep -q 'account.recycling.mode: must be local or http' "$W/recycling.log" ||
	check_fail "start-up error: $(tail -n 3 "$W/recycling.log")"
mica_free_port APORT3
AURL_C="https://localhost:$APORT3"
stack_start account3 "$AURL_C" "${ACCT_ENV[@]}" "MICA_ACCOUNT_HTTP_PORT=$APORT3" MICA_ACCOUNT_HTTP_METRICS_PORT=0 \
	MICA_ACCOUNT_RECYCLING_MODE=http "MICA_ACCOUNT_RECYCLING_URL=https://localhost:$CPORT/v1/recycled" \
	"$ACCT_BIN" --config deploy/mica.conf.example
AURL="$AURL_C"
TODAY="$(sql "$ADMIN_CI" "SELECT to_char(now(), 'YYYY-MM-DD')")"
code_limits_clear
register +8613800000005 'Hrecycle-1' dev-h
H_UID="$REG_UID"
# The carrier says no: the number stays with H. It was asked with the number and H's date.
expect 200 - POST /v1/register/start '{"phone": "+8613800000005"}'
expect 409 identifier_in_use POST /v1/register/complete \
	"$(complete "$(jget verification_id)" "$(code_for +8613800000005)" 'Irecycle-2' dev-i)"
[[ "$(tail -n 1 "$W/carrier.log" | jq -c .)" == "{\"phone\":\"+8613800000005\",\"since\":\"$TODAY\"}" ]] ||
	check_fail "carrier request: $(tail -n 1 "$W/carrier.log")"
# The carrier says yes: it moves.
echo "+8613800000005 $TODAY" >>"$W/recycled.txt"
register +8613800000005 'Irecycle-2' dev-i
[[ "$(sql "$ADMIN_CI" "SELECT phone_idx IS NULL FROM account.user WHERE id = $H_UID")" == t ]] ||
	check_fail "H kept the number the carrier recycled"
# The carrier fails: the registration answers 503 and the number stays (fail closed), and a
# reset through the number sends no code but answers as always.
register +8613800000006 'Jrecycle-1' dev-j
J_UID="$REG_UID"
echo "+8613800000006 fail" >>"$W/recycled.txt"
must expect 200 - POST /v1/register/start '{"phone": "+8613800000006"}'
VID="$(jget verification_id)" CODE="$(code_for +8613800000006)"
expect 503 unavailable POST /v1/register/complete "$(complete "$VID" "$CODE" 'Krecycle-2' dev-k)"
[[ "$(sql "$ADMIN_CI" "SELECT phone_idx IS NOT NULL FROM account.user WHERE id = $J_UID")" == t ]] ||
	check_fail "J lost the number while the carrier was down"
n_codes="$(sql "$ADMIN_CI" "SELECT count(*) FROM account.notification WHERE recipient = '+8613800000006'")"
expect 200 - POST /v1/password/reset/start '{"login": "+8613800000006"}'
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.notification WHERE recipient = '+8613800000006'")" == "$n_codes" ]] ||
	check_fail "a reset code went out while the carrier was down"
AURL="$AURL_A"
stack_stop account3
kill "${STACK_PID[carrier]}" 2>/dev/null || true
STACK_PID[carrier]=""
ok "the carrier's HTTPS check (mTLS) decides; a failing carrier keeps numbers where they are"

stack_stop account
stack_stop keycenter
stack_end
