#!/usr/bin/env bash
# test_unseal.sh - the sealed Key Center of issue 18, end to end on a private SoftHSM2 token:
#   1. `mica keycenter init --shares 5 --threshold 3` prints five shares once and changes the
#      token's user and SO PINs: the PIN files no longer open it, and a daemon configured with
#      unseal = shares refuses a pin_file
#   2. started with unseal = shares it is alive (healthz) but sealed: key operations and
#      management answer 503 sealed
#   3. unseal by officers' mTLS identities: a non-officer is refused, a mistyped share is named
#      (share_checksum_mismatch), garbage is bad_share, one officer cannot submit twice; the
#      third officer's share unseals (one share through `mica keycenter unseal` on stdin)
#   4. operations work; a second unseal is 409 already_unsealed; named-key material sits in
#      mappings that are locked (smaps VmFlags "lo", Locked > 0) and left out of core dumps ("dd"),
#      one per cached key, and a key dropped from the cache (rotation) gives its mapping back
#   5. every attempt made while sealed is in the audit chain, in order, before "unsealed";
#      failed attempts raised unseal_failure alerts; the chain verifies offline
#   6. a restart is sealed again (nothing on disk opens the token); another 3 of the 5 shares
#      unseal it, and what was encrypted before still decrypts
# The private token lives in the work directory, so the harness token is untouched.
set -euo pipefail

# shellcheck source=tests/integration/lib-stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-stack.sh"
stack_begin test_unseal MICA_CERT_OFFICER1 MICA_KEY_OFFICER1 MICA_CERT_OFFICER2 MICA_KEY_OFFICER2 \
	MICA_CERT_TEST MICA_KEY_TEST MICA_CERT_ACCOUNT MICA_KEY_ACCOUNT MICA_CERT_AUDITOR MICA_KEY_AUDITOR
KC="$BUILD/bin/mica-keycenter"
[[ -x "$KC" ]] || fail "$KC is missing (make all)"
LOG="$W/keycenter.log"
pid=""

stack_on_exit() {
	if [[ -n "$pid" ]]; then
		kill -TERM "$pid" 2>/dev/null || true
		local deadline=$((SECONDS + 10))
		while mica_pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
	fi
}

# ---------------------------------------------------------------------------------------------
step="1 ceremony with shares"
LABEL=mica-unseal
mica_hsm_up "$W" "$LABEL" # exports SOFTHSM2_CONF: this test's own token
USER_PIN_FILE="$W/secrets/hsm-user.pin"
SO_PIN_FILE="$W/secrets/hsm-so.pin"
stack_db_create
stack_policy_doc 1 '"test": {"role": "security-officer"}' >"$W/policy.json"
"$MICA" keycenter init --db "$ADMIN_CI" --policy "$W/policy.json" --token-label "$LABEL" \
	--pin-file "$USER_PIN_FILE" --so-pin-file "$SO_PIN_FILE" --shares 5 --threshold 3 \
	--audit-pubkey-out "$W/audit.pem" >"$W/init.out" 2>"$W/init.err" ||
	fail "init --shares: $(cat "$W/init.err")"
mapfile -t SHARES < <(sed -n 's/^  share [0-9]*: \(mks1-.*\)$/\1/p' "$W/init.out")
((${#SHARES[@]} == 5)) || fail "want 5 shares: $(cat "$W/init.out")"
grep -q 'any 3 of these 5' "$W/init.out" || fail "threshold not stated: $(cat "$W/init.out")"
ok "five shares printed"

# The PIN files (still on disk) open nothing any more.
p11() { pkcs11-tool --module "$MICA_HSM_MODULE" --token-label "$LABEL" "$@" >"$W/p11.out" 2>&1; }
if p11 --login --pin "$(<"$USER_PIN_FILE")" --list-objects; then fail "the old user PIN still logs in"; fi
grep -q CKR_PIN_INCORRECT "$W/p11.out" || fail "user PIN: $(cat "$W/p11.out")"
# (--init-pin, because an SO login needs a read-write session; it would reset the user PIN.)
if p11 --login --login-type so --so-pin "$(<"$SO_PIN_FILE")" --init-pin --new-pin 12345678; then
	fail "the old SO PIN still logs in"
fi
grep -q CKR_PIN_INCORRECT "$W/p11.out" || fail "SO PIN: $(cat "$W/p11.out")"
ok "neither PIN file opens the token (CKR_PIN_INCORRECT)"

mica_free_port PORT
# shellcheck disable=SC2153 # PORT is set by mica_free_port (printf -v), not misspelt
URL="https://localhost:$PORT"
KC_ENV=(
	MICA_LOG_LEVEL=info
	MICA_KEYCENTER_HTTP_PORT="$PORT"
	MICA_KEYCENTER_HTTP_CERT_FILE="$MICA_CERT_SERVER"
	MICA_KEYCENTER_HTTP_KEY_FILE="$MICA_KEY_SERVER"
	MICA_KEYCENTER_HTTP_CLIENT_CA_FILE="$MICA_CA"
	MICA_KEYCENTER_DB_CONNINFO="$(mica_keycenter_conninfo "$MICA_TEST_DIR" "$DB")"
	MICA_KEYCENTER_DB_PASSWORD_FILE=
	MICA_KEYCENTER_HSM_MODULE="$MICA_HSM_MODULE"
	MICA_KEYCENTER_HSM_TOKEN_LABEL="$LABEL"
	MICA_KEYCENTER_HSM_UNSEAL=shares
	MICA_KEYCENTER_HSM_PIN_FILE=
	MICA_KEYCENTER_ALERTS_WEBHOOK_URL=
)
# With a PIN file the daemon refuses to start in shares mode, and in pin_file mode the old PIN
# no longer works.
rc=0
env "${KC_ENV[@]}" MICA_KEYCENTER_HSM_PIN_FILE="$USER_PIN_FILE" "$KC" --config deploy/mica.conf.example \
	</dev/null >"$W/refuse.log" 2>&1 7>&- 8<&- || rc=$?
{ ((rc != 0)) && grep -q 'must be empty with unseal = shares' "$W/refuse.log"; } ||
	fail "shares mode with a pin_file: rc $rc $(cat "$W/refuse.log")"
rc=0
env "${KC_ENV[@]}" MICA_KEYCENTER_HSM_UNSEAL=pin_file MICA_KEYCENTER_HSM_PIN_FILE="$USER_PIN_FILE" \
	"$KC" --config deploy/mica.conf.example </dev/null >"$W/refuse.log" 2>&1 7>&- 8<&- || rc=$?
{ ((rc != 0)) && grep -q 'refused the user PIN' "$W/refuse.log"; } ||
	fail "pin_file mode with the old PIN: rc $rc $(cat "$W/refuse.log")"
ok "a PIN file is refused in shares mode, and the old PIN does not start the daemon"

start_kc() {
	printf '\n=== start %s\n' "$(date -u +%FT%TZ)" >>"$LOG"
	env "${KC_ENV[@]}" "$KC" --config deploy/mica.conf.example </dev/null >>"$LOG" 2>&1 7>&- 8<&- &
	pid=$!
	local deadline=$((SECONDS + 30)) st
	while :; do
		st="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$MICA_CA" "$URL/healthz")" || true
		[[ "$st" == 200 ]] && return 0
		mica_pid_alive "$pid" || fail "mica-keycenter exited during start: $(tail -n 20 "$LOG")"
		((SECONDS < deadline)) || fail "mica-keycenter not healthy after 30 s"
		sleep 0.1
	done
}
stop_kc() {
	local rc=0
	kill -TERM "$pid"
	wait "$pid" || rc=$?
	pid=""
	((rc == 0)) || fail "mica-keycenter exited with status $rc after SIGTERM"
}
status=""
call() {
	local who="$1" method="$2" path="$3" v
	v="$(mica_env_name "$who")"
	local cv="MICA_CERT_$v" kv="MICA_KEY_$v"
	local args=(-sS --max-time 60 --cacert "$MICA_CA" --cert "${!cv}" --key "${!kv}" -o "$W/body"
		-w '%{http_code}' -X "$method")
	if (($# >= 4)); then args+=(-H 'Content-Type: application/json' --data-binary "$4"); fi
	status="$(curl "${args[@]}" "$URL$path")" || fail "curl $who $method $path failed"
}
expect() {
	local want="$1" code="$2"
	shift 2
	call "$@"
	[[ "$status" == "$want" ]] || fail "$1 $2 $3: status $status, want $want: $(cat "$W/body")"
	if [[ "$code" != - ]]; then
		[[ "$(jget error.code)" == "$code" ]] || fail "$1 $2 $3: want $code: $(cat "$W/body")"
	fi
	echo "ok - $step: $1 $2 $3 -> $want $code"
}
share_json() { printf '{"share": "%s"}' "$1"; }
CTX='{"user": "42", "purpose": "unseal-test"}'

# ---------------------------------------------------------------------------------------------
step="2 sealed"
start_kc
expect 200 - auditor GET /v1/sys/seal-status
[[ "$(jget sealed)" == true && "$(jget progress)" == 0 ]] || fail "seal-status: $(cat "$W/body")"
expect 503 sealed admin POST /v1/keys/account-pii '{"owner": "account"}'
expect 503 sealed account POST /v1/encrypt/account-pii "{\"plaintext\": \"aGk=\", \"context\": $CTX}"
expect 503 sealed auditor GET /v1/audit
expect 503 sealed officer1 GET /v1/policy
expect 503 sealed officer1 GET /v1/requests
expect 503 unavailable auditor GET /readyz
[[ "$(jget failing.#)" == 1 && "$(jget failing.0.dependency)" == seal &&
	"$(jget failing.0.code)" == sealed ]] || fail "readyz while sealed: $(cat "$W/body")"

# ---------------------------------------------------------------------------------------------
step="3 unseal"
expect 403 not_an_officer admin POST /v1/sys/unseal "$(share_json "${SHARES[0]}")"
typo="${SHARES[0]:0:40}$([[ "${SHARES[0]:40:1}" == 0 ]] && echo 1 || echo 0)${SHARES[0]:41}"
expect 400 share_checksum_mismatch officer1 POST /v1/sys/unseal "$(share_json "$typo")"
{ grep -q 'officer1' "$W/body" && grep -q 'mistyped' "$W/body"; } || fail "typo not named: $(cat "$W/body")"
expect 200 - auditor GET /v1/sys/seal-status
[[ "$(jget progress)" == 0 ]] || fail "a mistyped share was counted: $(cat "$W/body")"
expect 202 - officer1 POST /v1/sys/unseal "$(share_json "${SHARES[0]}")"
[[ "$(jget progress)" == 1 && "$(jget threshold)" == 3 && "$(jget sealed)" == true ]] ||
	fail "after one share: $(cat "$W/body")"
expect 409 share_already_submitted officer1 POST /v1/sys/unseal "$(share_json "${SHARES[1]}")"
expect 400 bad_share test POST /v1/sys/unseal '{"share": "not a share"}'
expect 400 bad_share test POST /v1/sys/unseal '{}'
# officer2 through the CLI, the share on standard input.
printf '%s\n' "${SHARES[1]}" | "$MICA" keycenter unseal --url "$URL" --ca-file "$MICA_CA" \
	--cert-file "$MICA_CERT_OFFICER2" --key-file "$MICA_KEY_OFFICER2" >"$W/cli.out" 2>&1 ||
	fail "mica keycenter unseal: $(cat "$W/cli.out")"
grep -q '"progress": 2' "$W/cli.out" || fail "cli: $(cat "$W/cli.out")"
expect 503 sealed admin POST /v1/keys/account-pii '{"owner": "account"}'
expect 200 - test POST /v1/sys/unseal "$(share_json "${SHARES[2]}")"
[[ "$(jget sealed)" == false ]] || fail "not unsealed: $(cat "$W/body")"
UNSEAL_MS="$(jget unseal_ms)"
ok "unsealed by officer1, officer2 (CLI) and test in ${UNSEAL_MS} ms (token login, template check, audit key)"

# ---------------------------------------------------------------------------------------------
step="4 unsealed"
# /readyz reuses a probe result for up to a second (MICA_HTTP_READY_CACHE_MS).
readyz_ok() { call auditor GET /readyz && [[ "$status" == 200 ]]; }
mica_wait_for 5 readyz_ok ||
	fail "readyz after the unseal: $status $(cat "$W/body")"
expect 201 - admin POST /v1/keys/account-pii '{"owner": "account"}'
expect 200 - account POST /v1/encrypt/account-pii "{\"plaintext\": \"c2VjcmV0\", \"context\": $CTX}"
CT="$(jget ciphertext)"
expect 200 - account POST /v1/decrypt/account-pii "{\"ciphertext\": \"$CT\", \"context\": $CTX}"
[[ "$(jget plaintext)" == c2VjcmV0 ]] || fail "decrypt: $(cat "$W/body")"
expect 409 already_unsealed officer1 POST /v1/sys/unseal "$(share_json "${SHARES[3]}")"
# locked_nodump: the anonymous mappings of the daemon flagged lo (mlock) and dd (MADV_DONTDUMP)
# that are really locked, one line "count locked_kb".
# The sanitizers' runtime intercepts mlock() and does nothing (shadow memory cannot be
# locked), so under build-asan the pages are counted by residence instead of the lock, among
# accounted mappings ("ac": the sanitizer's own no-dump shadow is mapped MAP_NORESERVE).
locked_nodump() {
	local field=Locked need=lo
	if [[ "$MICA_BUILD" == build-asan ]]; then field=Rss need=ac; fi
	awk -v field="$field:" -v need="$need" '/^[0-9a-f]+-[0-9a-f]+ / { lk = 0 }
	     $1 == field { lk = $2 }
	     /^VmFlags:/ { l = 0; d = 0
		for (i = 2; i <= NF; i++) { if ($i == need) l = 1; if ($i == "dd") d = 1 }
		if (l && d && lk > 0) { n++; kb += lk } }
	     END { print n + 0, kb + 0 }' "/proc/$pid/smaps"
}
read -r n kb < <(locked_nodump)
# (The kernel merges adjacent mappings with equal flags, so the pages are counted in kB.)
((n >= 1 && kb == 4)) || fail "want one locked, no-dump page of key material, got $kb kB"
expect 201 - admin POST /v1/keys/account-index '{"owner": "account"}'
expect 200 - account POST /v1/hmac/account-index "{\"input\": \"c2VjcmV0\"}"
read -r n kb < <(locked_nodump)
((kb == 8)) || fail "two keys: want 8 kB of locked no-dump pages, got $kb kB"
for i in 1 2 3; do expect 200 - admin POST /v1/keys/account-pii/rotate; done
expect 200 - account POST /v1/encrypt/account-pii "{\"plaintext\": \"c2VjcmV0\", \"context\": $CTX}"
read -r n kb < <(locked_nodump)
((kb == 8)) || fail "after 3 rotations: want 8 kB locked no-dump (old pages freed), got $kb kB"
ok "key material in mlock()ed MADV_DONTDUMP pages, one per cached key; evicted pages unmapped"
"$MICA" keycenter seal-status --url "$URL" --ca-file "$MICA_CA" --cert-file "$MICA_CERT_AUDITOR" \
	--key-file "$MICA_KEY_AUDITOR" >"$W/cli.out" 2>&1 || fail "seal-status: $(cat "$W/cli.out")"
grep -q '"sealed": false' "$W/cli.out" || fail "seal-status cli: $(cat "$W/cli.out")"

# ---------------------------------------------------------------------------------------------
step="5 audit of the sealed period"
got="$(sql "$ADMIN_CI" "SELECT string_agg(principal || ':' || op || ':' || result, ' ' ORDER BY seq)
	FROM keycenter.audit WHERE (op IN ('unseal', 'key_create', 'seal_status')
	   OR result = 'sealed') AND coalesce(key_name, '') <> 'account-index'")"
want="auditor:seal_status:ok admin:key_create:sealed account:encrypt:sealed auditor:audit_read:sealed"
want+=" officer1:policy_read:sealed officer1:approve:sealed admin:unseal:not_an_officer officer1:unseal:share_checksum_mismatch"
want+=" auditor:seal_status:ok officer1:unseal:share_accepted officer1:unseal:share_already_submitted"
want+=" test:unseal:bad_share test:unseal:bad_share officer2:unseal:share_accepted"
want+=" admin:key_create:sealed test:unseal:share_accepted test:unseal:unsealed"
want+=" admin:key_create:attempt admin:key_create:ok officer1:unseal:already_unsealed"
want+=" auditor:seal_status:ok"
[[ "$got" == "$want" ]] || fail "audit order:
 got  $got
 want $want"
ok "every request of the sealed period is in the chain, in order, before the unseal"
n="$(sql "$ADMIN_CI" "SELECT count(*) FROM keycenter.alert WHERE kind = 'unseal_failure'")"
((n == 5)) || fail "want 5 unseal_failure alerts, got $n"
# A clean stop signs the tail (verify refuses a log without a checkpoint).
stop_kc
"$MICA" audit export --db "$ADMIN_CI" --out "$W/audit.jsonl" 2>"$W/export.err" || fail "export: $(cat "$W/export.err")"
"$MICA" audit verify --pubkey "$W/audit.pem" "$W/audit.jsonl" >"$W/verify.out" 2>&1 ||
	fail "verify: $(cat "$W/verify.out")"
ok "5 unseal_failure alerts; the chain verifies offline"

# ---------------------------------------------------------------------------------------------
step="6 restart"
start_kc
expect 503 sealed account POST /v1/decrypt/account-pii "{\"ciphertext\": \"$CT\", \"context\": $CTX}"
for i in 3 4; do
	who=$([[ $i == 3 ]] && echo officer1 || echo officer2)
	expect 202 - "$who" POST /v1/sys/unseal "$(share_json "${SHARES[$i]}")"
done
expect 200 - test POST /v1/sys/unseal "$(share_json "${SHARES[0]}")"
expect 200 - account POST /v1/decrypt/account-pii "{\"ciphertext\": \"$CT\", \"context\": $CTX}"
[[ "$(jget plaintext)" == c2VjcmV0 ]] || fail "decrypt after restart: $(cat "$W/body")"
stop_kc
ok "sealed after restart; shares 4, 5 and 1 unseal it; old ciphertext decrypts"
