#!/usr/bin/env bash
# test_keycenter.sh - mica-keycenter end to end, driven with curl over mutual TLS against its own
# fresh database on the tests/run PostgreSQL and the harness SoftHSM2 token:
#   1. mTLS only (no certificate, untrusted certificate, client without the CA)
#   2. key lifecycle by the key administrator (create, errors, metadata without material, rotate,
#      config, unknown key)
#   3. separation of duties (admin cannot use keys, services cannot manage them nor use other
#      services' keys, auditors cannot use keys, unknown principals)
#   4. crypto by a service: encrypt/decrypt, context binding, every input error, rewrap, data
#      keys, HMAC, batches, oversized batch, malformed JSON
#   5. min_decryption_version refusing old ciphertexts, with its alert
#   6. dual control for key deletion and policy changes, and the alerts of item 6 of the issue
#   7. audit fail closed (INSERT revoked -> 503 and nothing else, /readyz names the audit trail
#      while /healthz stays 200), the role's append-only rights, export and offline verification;
#      /metrics only on the loopback metrics listener; ids and query numbers beyond int64, JSON
#      bodies without Content-Type
#   8. robustness: wrong PIN, missing PKCS#11 module, unknown token, database unreachable at
#      start, a garbage or unreadable client CA refused before the HSM and database, a key load waiting on PostgreSQL off the event thread, database connections killed
#      while running
#   9. kill -9 under datakey load: every ciphertext a client received decrypts after restart,
#      every answered request is in the audit trail, and the chain verifies.
# The database and the daemon are removed on exit, whatever happens.
set -euo pipefail

# The environment check, work directory, database, EXIT trap, fail/ok/sql and jget come from
# lib-stack.sh (shared with every stack test).
# shellcheck source=tests/integration/lib-stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-stack.sh"
stack_begin test_keycenter MICA_CERT_ROGUE MICA_KEY_ROGUE MICA_CA_ROGUE MICA_CERT_OFFICER1 \
	MICA_KEY_OFFICER1 MICA_CERT_OFFICER2 MICA_KEY_OFFICER2 MICA_CERT_AUDITOR MICA_KEY_AUDITOR \
	MICA_CERT_ACCOUNT MICA_KEY_ACCOUNT MICA_CERT_TEST MICA_KEY_TEST
KC="$BUILD/bin/mica-keycenter"
[[ -x "$KC" ]] || fail "$KC is missing (make all)"
LOG="$W/keycenter.log"
pid=""
loop_pids=()

# Called by lib-stack.sh's EXIT trap before it drops the database.
stack_on_exit() {
	local p
	for p in ${loop_pids[@]+"${loop_pids[@]}"}; do kill "$p" 2>/dev/null || true; done
	if [[ -n "${HOOK_PID:-}" ]]; then kill "$HOOK_PID" 2>/dev/null || true; fi
	if [[ -n "$pid" ]]; then
		kill -TERM "$pid" 2>/dev/null || true
		local deadline=$((SECONDS + 10))
		while mica_pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
	fi
}

# ---------------------------------------------------------------------------------------------
# The Key Center under test: a fresh database, the role's password, the init ceremony.

step="setup"
stack_db_create
KC_CI="$(mica_keycenter_conninfo "$MICA_TEST_DIR" "$DB")"

policy_doc() { stack_policy_doc "$@"; } # VERSION [EXTRA_PRINCIPALS_JSON]
policy_doc 1 >"$W/policy-v1.json"
stack_kc_init "$W/policy-v1.json"
grep -q 'Policy version 1 is active' "$W/init.out" || fail "init output: $(cat "$W/init.out")"
grep -q 'BEGIN PUBLIC KEY' "$W/audit.pem" || fail "no audit public key"
ok "database $DB migrated, role password set, token initialised"

PORT=""
mica_free_port PORT
HOOK_PORT=""
mica_free_port HOOK_PORT
MPORT=""
mica_free_port MPORT
URL="https://localhost:$PORT"
MURL="https://localhost:$MPORT"
KC_ENV=(
	MICA_LOG_LEVEL=info
	MICA_KEYCENTER_HTTP_PORT="$PORT"
	MICA_KEYCENTER_HTTP_METRICS_PORT="$MPORT"
	MICA_KEYCENTER_HTTP_CERT_FILE="$MICA_CERT_SERVER"
	MICA_KEYCENTER_HTTP_KEY_FILE="$MICA_KEY_SERVER"
	MICA_KEYCENTER_HTTP_CLIENT_CA_FILE="$MICA_CA"
	MICA_KEYCENTER_DB_CONNINFO="$KC_CI"
	MICA_KEYCENTER_DB_PASSWORD_FILE=
	MICA_KEYCENTER_HSM_MODULE="$MICA_HSM_MODULE"
	MICA_KEYCENTER_HSM_TOKEN_LABEL="$MICA_HSM_TOKEN_LABEL"
	MICA_KEYCENTER_HSM_PIN_FILE="$MICA_HSM_PIN_FILE"
	MICA_KEYCENTER_AUDIT_CHECKPOINT_EVERY=10
	MICA_KEYCENTER_LIMITS_MAX_BATCH_ITEMS=5
	MICA_KEYCENTER_ALERTS_DENIAL_MAX=3
	MICA_KEYCENTER_ALERTS_RATE_MAX=40
	MICA_KEYCENTER_ALERTS_WINDOW_S=60
	MICA_KEYCENTER_ALERTS_WEBHOOK_URL="https://localhost:$HOOK_PORT/alerts"
	MICA_KEYCENTER_ALERTS_WEBHOOK_CA_FILE="$MICA_CA"
)

# The alert webhook's receiver: every alert the Key Center POSTs becomes a line of $W/hook.log.
python3 tests/peers/webhook_sink.py "$MICA_CERT_SERVER" "$MICA_KEY_SERVER" "$HOOK_PORT" \
	"$W/hook.log" </dev/null >/dev/null 2>&1 &
HOOK_PID=$!

# start_kc [VAR=VALUE...]: start the daemon (KC_ENV plus the overrides) and wait until /healthz
# answers 200; fails if it exits or does not come up within 30 s.
start_kc() {
	printf '\n=== start %s\n' "$*" >>"$LOG"
	env "${KC_ENV[@]}" "$@" "$KC" --config deploy/mica.conf.example </dev/null >>"$LOG" 2>&1 7>&- 8<&- &
	pid=$!
	local deadline=$((SECONDS + 30)) st
	while :; do
		st="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$MICA_CA" "$URL/healthz")" || true
		[[ "$st" == 200 ]] && return 0
		mica_pid_alive "$pid" || fail "mica-keycenter exited during start: $(tail -n 20 "$LOG")"
		((SECONDS < deadline)) || fail "mica-keycenter not healthy after 30 s: $(tail -n 20 "$LOG")"
		sleep 0.1
	done
}

# stop_kc: SIGTERM, wait (bounded) and require exit status 0.
stop_kc() {
	local deadline=$((SECONDS + 30)) rc=0
	kill -TERM "$pid"
	while mica_pid_alive "$pid"; do
		((SECONDS < deadline)) || fail "mica-keycenter ignored SIGTERM for 30 s"
		sleep 0.1
	done
	wait "$pid" || rc=$?
	pid=""
	((rc == 0)) || fail "mica-keycenter exited with status $rc after SIGTERM"
}

# call WHO METHOD PATH [JSON]: one request as principal WHO (a principal name, "none" for no
# client certificate, "rogue" for the untrusted one). Body in $W/body, status in $status.
status=""
call() {
	local who="$1" method="$2" path="$3" v
	local args=(-sS --max-time 20 --cacert "$MICA_CA" -o "$W/body" -D "$W/headers" -w '%{http_code}' -X "$method")
	case "$who" in
	none) ;;
	*)
		v="$(mica_env_name "$who")"
		local cv="MICA_CERT_$v" kv="MICA_KEY_$v"
		args+=(--cert "${!cv}" --key "${!kv}")
		;;
	esac
	if (($# >= 4)); then
		args+=(-H 'Content-Type: application/json' --data-binary "$4")
	fi
	status="$(curl "${args[@]}" "$URL$path")" || fail "curl $who $method $path failed"
}

# expect STATUS CODE WHO METHOD PATH [JSON]: call, then check the status and (unless CODE is -)
# that the body is exactly a JSON error with that code.
expect() {
	local want="$1" code="$2"
	shift 2
	call "$@"
	[[ "$status" == "$want" ]] || fail "$1 $2 $3: status $status, want $want: $(cat "$W/body")"
	if [[ "$code" != - ]]; then
		local got
		got="$(jget error.code)"
		[[ "$got" == "$code" ]] || fail "$1 $2 $3: error code '$got', want $code: $(cat "$W/body")"
		[[ "$(jget '#')" == 1 ]] || fail "$1 $2 $3: error body has more than error: $(cat "$W/body")"
	fi
	echo "ok - $step: $1 $2 $3 -> $want $code"
}

b64() { printf '%s' "$1" | base64 -w0; }
unb64() { printf '%s' "$1" | base64 -d; }

# alert_seen KIND PRINCIPAL [KEY]: true once GET /v1/alerts (as auditor, every page) lists such
# an alert.
alert_seen() {
	local after=0 r
	while :; do
		call auditor GET "/v1/alerts?after=$after"
		[[ "$status" == 200 ]] || return 1
		r="$(python3 - "$W/body" "$@" <<'PY'
import json, sys
f, kind, principal = sys.argv[1:4]
key = sys.argv[4] if len(sys.argv) > 4 else None
alerts = json.load(open(f))["alerts"]
if any(a["kind"] == kind and a.get("principal") == principal and
       (key is None or a.get("key") == key) for a in alerts):
    print("found")
else:
    print(alerts[-1]["id"] if alerts else "end")
PY
)"
		case "$r" in
		found) return 0 ;;
		end) return 1 ;;
		*) after="$r" ;;
		esac
	done
}
# wait_alert KIND PRINCIPAL [KEY]: alerts are written asynchronously; poll for up to 10 s.
wait_alert() {
	local deadline=$((SECONDS + 10))
	until alert_seen "$@"; do
		((SECONDS < deadline)) || fail "no alert $* within 10 s: $(cat "$W/body")"
		sleep 0.1
	done
	echo "ok - $step: alert $*"
}

start_kc
ok "mica-keycenter healthy on $URL"

# ---------------------------------------------------------------------------------------------
step="1 mTLS only"
expect 401 client_certificate_required none GET /v1/keys/account-pii
expect 403 client_certificate_invalid rogue GET /v1/keys/account-pii
expect 401 client_certificate_required none POST /v1/encrypt/account-pii '{}'
rc=0
curl -sS -o /dev/null --cert "$MICA_CERT_ADMIN" --key "$MICA_KEY_ADMIN" "$URL/v1/keys/x" 2>/dev/null || rc=$?
[[ "$rc" == 60 ]] || fail "curl without the CA: exit $rc, want 60"
rc=0
curl -sS -o /dev/null --cacert "$MICA_CA_ROGUE" --cert "$MICA_CERT_ADMIN" --key "$MICA_KEY_ADMIN" \
	"$URL/v1/keys/x" 2>/dev/null || rc=$?
[[ "$rc" == 60 ]] || fail "curl trusting the rogue CA: exit $rc, want 60"
rc=0
curl -sS -o /dev/null --max-time 5 "http://localhost:$PORT/v1/keys/x" 2>/dev/null || rc=$?
[[ "$rc" != 0 ]] || fail "plaintext HTTP was answered"
ok "clients that do not trust the CA fail (exit 60), plaintext refused (exit $rc)"

# ---------------------------------------------------------------------------------------------
step="2 key lifecycle"
expect 201 - admin POST /v1/keys/account-pii '{"type": "aes256-gcm", "owner": "account"}'
[[ "$(jget latest_version)" == 1 && "$(jget name)" == account-pii && "$(jget type)" == aes256-gcm &&
	"$(jget owner)" == account ]] || fail "create: $(cat "$W/body")"
expect 201 - admin POST /v1/keys/account-other '{"owner": "account"}'
[[ "$(jget type)" == aes256-gcm ]] || fail "default type: $(cat "$W/body")"
expect 201 - admin POST /v1/keys/account-small '{"type": "aes128-gcm", "owner": "account"}'
expect 201 - admin POST /v1/keys/billing-ledger '{"owner": "billing"}'
expect 201 - admin POST /v1/keys/account-tmp '{"owner": "account"}'
expect 201 - admin POST /v1/keys/account-rate '{"owner": "account"}'
expect 409 key_exists admin POST /v1/keys/account-pii '{"owner": "account"}'
expect 400 bad_key_name admin POST /v1/keys/Account-PII '{"owner": "account"}'
expect 400 bad_key_name admin POST /v1/keys/-lead '{"owner": "account"}'
expect 400 bad_key_type admin POST /v1/keys/account-x '{"type": "des-cbc", "owner": "account"}'
expect 400 bad_owner admin POST /v1/keys/account-x '{"type": "aes256-gcm"}'
expect 404 unknown_key admin GET /v1/keys/account-x
expect 200 - admin GET /v1/keys/account-pii
python3 - "$W/body" <<'PY' || fail "metadata: $(cat "$W/body")"
import json, sys
d = json.load(open(sys.argv[1]))
assert set(d) == {"name", "type", "owner", "latest_version", "min_decryption_version",
                  "min_encryption_version", "deletion_allowed", "versions"}, sorted(d)
assert d["versions"] == [{"version": 1, "decryptable": True}], d["versions"]
assert d["min_decryption_version"] == 1 and d["deletion_allowed"] is False
PY
ok "metadata lists exactly the documented fields, no key material"

# Ciphertexts under version 1, made before the rotation (for rewrap and min_decryption_version).
CTX='{"user": "42", "purpose": "pii"}'
PT1="$(b64 'version one secret')"
expect 200 - account POST /v1/encrypt/account-pii "{\"plaintext\": \"$PT1\", \"context\": $CTX}"
CT_V1="$(jget ciphertext)"
expect 200 - account POST /v1/encrypt/account-pii "{\"plaintext\": \"$PT1\", \"context\": $CTX}"
CT_V1B="$(jget ciphertext)"
[[ "$CT_V1" == kc:v1:* && "$CT_V1B" == kc:v1:* && "$CT_V1" != "$CT_V1B" ]] ||
	fail "v1 ciphertexts: $CT_V1 / $CT_V1B"

expect 200 - admin POST /v1/keys/account-pii/rotate
[[ "$(jget latest_version)" == 2 ]] || fail "rotate: $(cat "$W/body")"
[[ "$(jget versions)" == '[{"decryptable": true, "version": 1}, {"decryptable": true, "version": 2}]' ]] ||
	fail "versions after rotate: $(jget versions)"
expect 400 bad_version admin POST /v1/keys/account-pii/config '{"min_decryption_version": 3}'
expect 400 bad_version admin POST /v1/keys/account-pii/config '{"min_decryption_version": -1}'
expect 400 bad_field admin POST /v1/keys/account-pii/config '{"deletion_allowed": "yes"}'
expect 404 unknown_key admin POST /v1/keys/account-x/rotate
expect 404 unknown_key admin POST /v1/keys/account-x/config '{"min_decryption_version": 1}'
expect 404 unknown_key account POST /v1/encrypt/account-x "{\"plaintext\": \"$PT1\", \"context\": $CTX}"
expect 200 - admin GET /v1/keys/account-pii
[[ "$(jget latest_version)" == 2 && "$(jget min_decryption_version)" == 1 ]] ||
	fail "failed config changed the key: $(cat "$W/body")"

# ---------------------------------------------------------------------------------------------
step="3 separation of duties"
expect 403 access_denied admin POST /v1/encrypt/account-pii "{\"plaintext\": \"$PT1\", \"context\": $CTX}"
expect 403 access_denied admin POST /v1/decrypt/account-pii "{\"ciphertext\": \"$CT_V1\", \"context\": $CTX}"
expect 403 access_denied admin POST /v1/datakey/plaintext/account-pii "{\"context\": $CTX}"
expect 403 access_denied account POST /v1/keys/account-new '{"owner": "account"}'
expect 403 access_denied account POST /v1/keys/account-pii/rotate
expect 403 access_denied account POST /v1/keys/account-pii/config '{"min_decryption_version": 2}'
expect 403 access_denied account DELETE /v1/keys/account-pii
expect 403 access_denied account POST /v1/encrypt/billing-ledger "{\"plaintext\": \"$PT1\", \"context\": $CTX}"
expect 403 access_denied account GET /v1/keys/billing-ledger
expect 403 access_denied account GET /v1/alerts
expect 403 access_denied account GET /v1/policy
expect 200 - account GET /v1/keys/account-pii
expect 403 access_denied auditor POST /v1/encrypt/account-pii "{\"plaintext\": \"$PT1\", \"context\": $CTX}"
expect 403 access_denied auditor GET /v1/keys/account-pii
expect 403 access_denied officer1 POST /v1/encrypt/account-pii "{\"plaintext\": \"$PT1\", \"context\": $CTX}"
expect 403 access_denied officer1 POST /v1/keys/account-z '{"owner": "account"}'
expect 403 unknown_principal test POST /v1/encrypt/account-pii "{\"plaintext\": \"$PT1\", \"context\": $CTX}"
expect 403 unknown_principal test GET /v1/keys/account-pii

# ---------------------------------------------------------------------------------------------
step="4 crypto"
PT="$(b64 'the user record: alice, 1990-01-01')"
expect 200 - account POST /v1/encrypt/account-pii "{\"plaintext\": \"$PT\", \"context\": $CTX}"
CT="$(jget ciphertext)"
[[ "$CT" == kc:v2:* && "$(jget key_version)" == 2 ]] || fail "encrypt: $(cat "$W/body")"
expect 200 - account POST /v1/decrypt/account-pii "{\"ciphertext\": \"$CT\", \"context\": $CTX}"
[[ "$(jget plaintext)" == "$PT" && "$(jget key_version)" == 2 ]] || fail "decrypt: $(cat "$W/body")"
# Member order of the context does not matter (canonical form), its content does.
expect 200 - account POST /v1/decrypt/account-pii \
	"{\"ciphertext\": \"$CT\", \"context\": {\"purpose\": \"pii\", \"user\": \"42\"}}"
[[ "$(jget plaintext)" == "$PT" ]] || fail "reordered context: $(cat "$W/body")"
expect 400 decryption_failed account POST /v1/decrypt/account-pii \
	"{\"ciphertext\": \"$CT\", \"context\": {\"user\": \"43\", \"purpose\": \"pii\"}}"
expect 400 decryption_failed account POST /v1/decrypt/account-pii \
	"{\"ciphertext\": \"$CT\", \"context\": {\"user\": \"42\"}}"
expect 400 bad_context account POST /v1/decrypt/account-pii "{\"ciphertext\": \"$CT\"}"
expect 400 bad_context account POST /v1/encrypt/account-pii "{\"plaintext\": \"$PT\"}"
expect 400 bad_context account POST /v1/encrypt/account-pii "{\"plaintext\": \"$PT\", \"context\": {}}"
expect 400 bad_context account POST /v1/encrypt/account-pii "{\"plaintext\": \"$PT\", \"context\": {\"user\": 42}}"
expect 400 bad_context account POST /v1/encrypt/account-pii "{\"plaintext\": \"$PT\", \"context\": [\"user\"]}"
expect 400 bad_base64 account POST /v1/encrypt/account-pii "{\"plaintext\": \"not base64!\", \"context\": $CTX}"
expect 400 missing_field account POST /v1/encrypt/account-pii "{\"context\": $CTX}"
expect 400 missing_field account POST /v1/decrypt/account-pii "{\"context\": $CTX}"
expect 400 bad_version_prefix account POST /v1/decrypt/account-pii \
	"{\"ciphertext\": \"vault:v1:${CT#kc:v2:}\", \"context\": $CTX}"
expect 400 bad_version_prefix account POST /v1/decrypt/account-pii \
	"{\"ciphertext\": \"kc:vX:${CT#kc:v2:}\", \"context\": $CTX}"
expect 400 bad_version_prefix account POST /v1/decrypt/account-pii \
	"{\"ciphertext\": \"kc:v0:${CT#kc:v2:}\", \"context\": $CTX}"
expect 400 bad_base64 account POST /v1/decrypt/account-pii "{\"ciphertext\": \"kc:v2:@@@@\", \"context\": $CTX}"
# The version in the prefix must be the envelope's.
expect 400 wrong_key account POST /v1/decrypt/account-pii \
	"{\"ciphertext\": \"kc:v1:${CT#kc:v2:}\", \"context\": $CTX}"
expect 200 - account POST /v1/encrypt/account-other "{\"plaintext\": \"$PT\", \"context\": $CTX}"
CT_OTHER="$(jget ciphertext)"
expect 400 wrong_key account POST /v1/decrypt/account-pii "{\"ciphertext\": \"$CT_OTHER\", \"context\": $CTX}"
# Tampering: a flipped bit in the GCM tag, and an envelope cut short.
read -r CT_FLIP CT_CUT < <(python3 - "$CT" <<'PY'
import base64, sys
head, b = sys.argv[1].rsplit(":", 1)
raw = bytearray(base64.b64decode(b))
flip = bytearray(raw); flip[-1] ^= 1
print(head + ":" + base64.b64encode(bytes(flip)).decode(),
      head + ":" + base64.b64encode(bytes(raw[:-5])).decode())
PY
)
expect 400 decryption_failed account POST /v1/decrypt/account-pii "{\"ciphertext\": \"$CT_FLIP\", \"context\": $CTX}"
expect 400 malformed_ciphertext account POST /v1/decrypt/account-pii "{\"ciphertext\": \"$CT_CUT\", \"context\": $CTX}"
# A 128-bit key works the same way.
expect 200 - account POST /v1/encrypt/account-small "{\"plaintext\": \"$PT\", \"context\": $CTX}"
CT_SMALL="$(jget ciphertext)"
expect 200 - account POST /v1/decrypt/account-small "{\"ciphertext\": \"$CT_SMALL\", \"context\": $CTX}"
[[ "$(jget plaintext)" == "$PT" ]] || fail "aes128 round trip: $(cat "$W/body")"
ok "encrypt/decrypt round trips, context bound, tampering detected"

# Rewrap: v1 -> latest, never returning plaintext.
expect 200 - account POST /v1/rewrap/account-pii "{\"ciphertext\": \"$CT_V1\", \"context\": $CTX}"
CT_RW="$(jget ciphertext)"
[[ "$CT_RW" == kc:v2:* && "$(jget plaintext)" == __absent__ ]] || fail "rewrap: $(cat "$W/body")"
expect 200 - account POST /v1/decrypt/account-pii "{\"ciphertext\": \"$CT_RW\", \"context\": $CTX}"
[[ "$(jget plaintext)" == "$PT1" ]] || fail "rewrapped plaintext: $(cat "$W/body")"
expect 400 decryption_failed account POST /v1/rewrap/account-pii \
	"{\"ciphertext\": \"$CT_V1\", \"context\": {\"user\": \"other\"}}"

# Data keys.
for bits in 128 256; do
	expect 200 - account POST /v1/datakey/plaintext/account-pii "{\"bits\": $bits, \"context\": $CTX}"
	DK="$(jget plaintext)"
	DK_CT="$(jget ciphertext)"
	[[ "$(unb64 "$DK" | wc -c)" == $((bits / 8)) && "$DK_CT" == kc:v2:* ]] ||
		fail "datakey $bits: $(cat "$W/body")"
	expect 200 - account POST /v1/decrypt/account-pii "{\"ciphertext\": \"$DK_CT\", \"context\": $CTX}"
	[[ "$(jget plaintext)" == "$DK" ]] || fail "datakey $bits does not decrypt to its plaintext"
done
expect 200 - account POST /v1/datakey/plaintext/account-pii "{\"context\": $CTX}"
[[ "$(unb64 "$(jget plaintext)" | wc -c)" == 32 ]] || fail "default bits: $(cat "$W/body")"
expect 200 - account POST /v1/datakey/wrapped/account-pii "{\"bits\": 128, \"context\": $CTX}"
[[ "$(jget plaintext)" == __absent__ && "$(jget ciphertext)" == kc:v2:* ]] ||
	fail "wrapped datakey: $(cat "$W/body")"
DK_CT="$(jget ciphertext)"
expect 200 - account POST /v1/decrypt/account-pii "{\"ciphertext\": \"$DK_CT\", \"context\": $CTX}"
[[ "$(unb64 "$(jget plaintext)" | wc -c)" == 16 ]] || fail "wrapped datakey decrypts to: $(cat "$W/body")"
expect 400 bad_bits account POST /v1/datakey/plaintext/account-pii "{\"bits\": 512, \"context\": $CTX}"
expect 400 bad_bits account POST /v1/datakey/wrapped/account-pii "{\"bits\": \"256\", \"context\": $CTX}"
expect 400 bad_context account POST /v1/datakey/wrapped/account-pii '{"bits": 256}'

# HMAC (blind index): deterministic per input, different between inputs.
expect 200 - account POST /v1/hmac/account-pii "{\"input\": \"$(b64 alice@example.com)\"}"
H1="$(jget hmac)"
expect 200 - account POST /v1/hmac/account-pii "{\"input\": \"$(b64 alice@example.com)\"}"
H2="$(jget hmac)"
expect 200 - account POST /v1/hmac/account-pii "{\"input\": \"$(b64 bob@example.com)\"}"
H3="$(jget hmac)"
[[ "$H1" == kc:v2:* && "$H1" == "$H2" && "$H1" != "$H3" ]] || fail "hmac: $H1 $H2 $H3"
expect 400 bad_base64 account POST /v1/hmac/account-pii '{"input": "%%%"}'
expect 400 missing_field account POST /v1/hmac/account-pii '{}'

# Batches: per-item results and errors; the limit (5 in this run) is enforced.
expect 200 - account POST /v1/encrypt/account-pii "{\"batch_input\": [
	{\"plaintext\": \"$(b64 one)\", \"context\": {\"n\": \"1\"}},
	{\"plaintext\": \"***\", \"context\": {\"n\": \"2\"}},
	{\"plaintext\": \"$(b64 three)\"},
	{\"plaintext\": \"$(b64 four)\", \"context\": {\"n\": \"4\"}}]}"
[[ "$(jget batch_results.#)" == 4 && "$(jget batch_results.1.error.code)" == bad_base64 &&
	"$(jget batch_results.2.error.code)" == bad_context &&
	"$(jget batch_results.0.ciphertext)" == kc:v2:* && "$(jget batch_results.3.ciphertext)" == kc:v2:* ]] ||
	fail "batch encrypt: $(cat "$W/body")"
B1="$(jget batch_results.0.ciphertext)"
B4="$(jget batch_results.3.ciphertext)"
expect 200 - account POST /v1/decrypt/account-pii "{\"batch_input\": [
	{\"ciphertext\": \"$B1\", \"context\": {\"n\": \"1\"}},
	{\"ciphertext\": \"$B4\", \"context\": {\"n\": \"1\"}},
	{\"ciphertext\": \"$B4\", \"context\": {\"n\": \"4\"}},
	{\"ciphertext\": \"vault:v1:abc\", \"context\": {\"n\": \"4\"}},
	{\"context\": {\"n\": \"4\"}}]}"
[[ "$(unb64 "$(jget batch_results.0.plaintext)")" == one &&
	"$(jget batch_results.1.error.code)" == decryption_failed &&
	"$(unb64 "$(jget batch_results.2.plaintext)")" == four &&
	"$(jget batch_results.3.error.code)" == bad_version_prefix &&
	"$(jget batch_results.4.error.code)" == missing_field ]] || fail "batch decrypt: $(cat "$W/body")"
expect 200 - account POST /v1/datakey/plaintext/account-pii "{\"batch_input\": [
	{\"bits\": 128, \"context\": {\"n\": \"1\"}}, {\"bits\": 512, \"context\": {\"n\": \"2\"}},
	{\"context\": {\"n\": \"3\"}}]}"
[[ "$(unb64 "$(jget batch_results.0.plaintext)" | wc -c)" == 16 &&
	"$(jget batch_results.1.error.code)" == bad_bits &&
	"$(unb64 "$(jget batch_results.2.plaintext)" | wc -c)" == 32 ]] || fail "batch datakey: $(cat "$W/body")"
SIX="$(printf '{"plaintext": "%s", "context": {"n": "x"}},' "$PT" "$PT" "$PT" "$PT" "$PT" "$PT")"
expect 413 batch_too_large account POST /v1/encrypt/account-pii "{\"batch_input\": [${SIX%,}]}"
expect 413 batch_too_large account POST /v1/datakey/wrapped/account-pii \
	'{"batch_input": [{},{},{},{},{},{}]}'
expect 400 bad_batch account POST /v1/encrypt/account-pii '{"batch_input": []}'
expect 400 bad_batch account POST /v1/encrypt/account-pii '{"batch_input": {"plaintext": "AA=="}}'
expect 400 malformed_json account POST /v1/encrypt/account-pii '{"plaintext": '
expect 400 malformed_json account POST /v1/decrypt/account-pii 'ciphertext=kc:v2:abc'

# ---------------------------------------------------------------------------------------------
step="5 min_decryption_version"
expect 200 - admin POST /v1/keys/account-pii/config '{"min_decryption_version": 2}'
[[ "$(jget min_decryption_version)" == 2 &&
	"$(jget versions)" == '[{"decryptable": false, "version": 1}, {"decryptable": true, "version": 2}]' ]] ||
	fail "config: $(cat "$W/body")"
expect 403 version_below_minimum account POST /v1/decrypt/account-pii "{\"ciphertext\": \"$CT_V1B\", \"context\": $CTX}"
expect 403 version_below_minimum account POST /v1/rewrap/account-pii "{\"ciphertext\": \"$CT_V1B\", \"context\": $CTX}"
expect 200 - account POST /v1/decrypt/account-pii "{\"ciphertext\": \"$CT\", \"context\": $CTX}"
wait_alert decrypt_below_min_version account account-pii

# ---------------------------------------------------------------------------------------------
step="6 dual control: key deletion"
expect 409 deletion_not_allowed admin DELETE /v1/keys/account-tmp
expect 404 unknown_key admin DELETE /v1/keys/account-x
expect 200 - admin POST /v1/keys/account-tmp/config '{"deletion_allowed": true}'
[[ "$(jget deletion_allowed)" == true ]] || fail "config: $(cat "$W/body")"
expect 202 - admin DELETE /v1/keys/account-tmp
DEL_ID="$(jget id)"
[[ "$DEL_ID" =~ ^[0-9]+$ && "$(jget status)" == pending && "$(jget kind)" == delete_key &&
	"$(jget target)" == account-tmp && "$(jget requested_by)" == admin && "$(jget approvals)" == '[]' ]] ||
	fail "delete request: $(cat "$W/body")"
expect 200 - admin GET /v1/keys/account-tmp
expect 403 access_denied account POST "/v1/requests/$DEL_ID/approve"
expect 403 access_denied admin POST "/v1/requests/$DEL_ID/approve"
expect 403 access_denied auditor POST "/v1/requests/$DEL_ID/approve"
expect 200 - officer1 POST "/v1/requests/$DEL_ID/approve"
[[ "$(jget status)" == pending && "$(jget approvals)" == '["officer1"]' ]] || fail "first approval: $(cat "$W/body")"
expect 200 - admin GET /v1/keys/account-tmp
expect 409 already_approved officer1 POST "/v1/requests/$DEL_ID/approve"
expect 200 - officer1 GET /v1/requests
[[ "$(jget requests.0.id)" == "$DEL_ID" ]] || fail "pending list: $(cat "$W/body")"
expect 200 - officer2 POST "/v1/requests/$DEL_ID/approve"
[[ "$(jget status)" == applied && "$(jget approvals)" == '["officer1", "officer2"]' ]] ||
	fail "second approval: $(cat "$W/body")"
expect 404 unknown_key admin GET /v1/keys/account-tmp
expect 404 unknown_key account POST /v1/encrypt/account-tmp "{\"plaintext\": \"$PT\", \"context\": $CTX}"
expect 409 request_closed officer1 POST "/v1/requests/$DEL_ID/approve"
expect 409 request_closed officer2 POST "/v1/requests/$DEL_ID/approve"
expect 200 - admin GET "/v1/requests/$DEL_ID"
[[ "$(jget status)" == applied ]] || fail "request after apply: $(cat "$W/body")"
expect 404 unknown_request officer1 POST /v1/requests/999999/approve
expect 400 bad_request_id officer1 POST /v1/requests/abc/approve
# Beyond int64 strtoll clamped the id to the largest one and answered 404 as for a real lookup.
expect 400 request_id_out_of_range officer1 POST /v1/requests/9223372036854775808/approve
expect 400 request_id_out_of_range admin GET /v1/requests/99999999999999999999999
expect 404 unknown_request admin GET /v1/requests/9223372036854775807
expect 400 bad_request_id admin GET /v1/requests/12x

step="6 dual control: policy change"
expect 200 - officer1 GET /v1/policy
[[ "$(jget version)" == 1 ]] || fail "policy: $(cat "$W/body")"
POLICY_V2="$(policy_doc 2 '"test": {"role": "service", "keys": {"account-pii": ["read", "hmac"]}}')"
expect 403 access_denied admin POST /v1/policy "{\"document\": $POLICY_V2}"
expect 202 - officer1 POST /v1/policy "{\"document\": $POLICY_V2}"
POL_ID="$(jget id)"
[[ "$POL_ID" =~ ^[0-9]+$ && "$(jget status)" == pending && "$(jget kind)" == set_policy ]] ||
	fail "policy request: $(cat "$W/body")"
BAD_POLICY="$(policy_doc 3 | python3 -c '
import json, sys
d = json.load(sys.stdin)
d["principals"]["admin"]["keys"] = {"account-*": ["decrypt"]}
print(json.dumps(d))')"
expect 400 invalid_policy officer1 POST /v1/policy "{\"document\": $BAD_POLICY}"
[[ "$(jget error.message)" == *"principal admin"* ]] || fail "invalid policy message: $(jget error.message)"
expect 409 stale_policy_version officer2 POST /v1/policy "{\"document\": $(policy_doc 1)}"
expect 400 missing_field officer1 POST /v1/policy '{}'
# A misspelt member is named as such (lib/body.h), not taken for the missing one.
expect 400 unknown_field officer1 POST /v1/policy '{"doc": {}}'
expect 403 unknown_principal test GET /v1/keys/account-pii
expect 200 - officer1 POST "/v1/requests/$POL_ID/approve"
[[ "$(jget status)" == pending ]] || fail "policy after one approval: $(cat "$W/body")"
expect 200 - officer1 GET /v1/policy
[[ "$(jget version)" == 1 ]] || fail "policy changed after one approval: $(cat "$W/body")"
expect 200 - officer2 POST "/v1/requests/$POL_ID/approve"
[[ "$(jget status)" == applied ]] || fail "policy after two approvals: $(cat "$W/body")"
expect 200 - officer2 GET /v1/policy
[[ "$(jget version)" == 2 && "$(jget document.principals.test.role)" == service ]] ||
	fail "active policy: $(cat "$W/body")"
expect 200 - test GET /v1/keys/account-pii
expect 200 - test POST /v1/hmac/account-pii "{\"input\": \"$(b64 alice@example.com)\"}"
[[ "$(jget hmac)" == "$H1" ]] || fail "hmac by test differs from account's"
expect 403 access_denied test POST /v1/encrypt/account-pii "{\"plaintext\": \"$PT\", \"context\": $CTX}"

step="6 alerts"
wait_alert officer_action officer1
wait_alert officer_action officer2
wait_alert unknown_principal test account-pii
for _ in 1 2 3 4 5; do
	expect 403 access_denied auditor POST /v1/encrypt/account-other "{\"plaintext\": \"$PT\", \"context\": $CTX}"
done
wait_alert denial_burst auditor
# 45 requests on one connection, above rate_max = 40 for (account, account-rate).
RATE_URLS=()
for _ in $(seq 45); do RATE_URLS+=(-o /dev/null "$URL/v1/hmac/account-rate"); done
curl -sS --cacert "$MICA_CA" --cert "$MICA_CERT_ACCOUNT" --key "$MICA_KEY_ACCOUNT" \
	-H 'Content-Type: application/json' -d "{\"input\": \"$(b64 x)\"}" \
	-w '%{http_code}\n' "${RATE_URLS[@]}" >"$W/rate.codes" || fail "rate burst curl failed"
[[ "$(grep -c '^200$' "$W/rate.codes")" == 45 ]] || fail "rate burst: $(sort "$W/rate.codes" | uniq -c)"
wait_alert rate_anomaly account account-rate
expect 200 - officer1 GET /v1/alerts
[[ "$(jget alerts.#)" -ge 6 ]] || fail "officers read alerts: $(cat "$W/body")"
# Each alert was also POSTed to the webhook.
for kind in unknown_principal officer_action denial_burst rate_anomaly decrypt_below_min_version; do
	deadline=$((SECONDS + 15))
	until grep -q "\"kind\": *\"$kind\"" "$W/hook.log" 2>/dev/null; do
		((SECONDS < deadline)) || fail "webhook never got a $kind alert: $(cat "$W/hook.log" 2>/dev/null)"
		sleep 0.1
	done
done
ok "alerts reached the webhook"
expect 403 access_denied admin GET /v1/alerts

# ---------------------------------------------------------------------------------------------
step="7 audit fails closed"
[[ "$(sql "$KC_CI" "SELECT count(*) > 0 FROM keycenter.audit")" == t ]] || fail "no audit rows"
for q in "DELETE FROM keycenter.audit" "UPDATE keycenter.audit SET result = 'ok'" \
	"TRUNCATE keycenter.audit" "DELETE FROM keycenter.audit_checkpoint"; do
	if sql "$KC_CI" "$q" >"$W/psql.out" 2>&1; then fail "mica_keycenter may run: $q"; fi
	grep -q 'permission denied' "$W/psql.out" || fail "$q: $(cat "$W/psql.out")"
done
ok "mica_keycenter cannot update, delete or truncate the audit tables"
# probe URL: the /readyz (or /healthz) status and body of URL, no client certificate.
probe() {
	curl -sS --max-time 10 --cacert "$MICA_CA" -o "$W/probe" -w '%{http_code}' "$1" ||
		fail "curl $1"
}
# readyz_until STATUS: /readyz results are reused for a second; poll for up to 10 s.
readyz_until() {
	local deadline=$((SECONDS + 10)) st
	until st="$(probe "$URL/readyz")" && [[ "$st" == "$1" ]]; do
		((SECONDS < deadline)) || fail "/readyz $st, want $1: $(cat "$W/probe")"
		sleep 0.1
	done
}
readyz_until 200
grep -qx '{"status":"ready"}' "$W/probe" || fail "/readyz: $(cat "$W/probe")"
sql "$ADMIN_CI" "REVOKE INSERT ON keycenter.audit FROM mica_keycenter"
# Before the fix /healthz said 200 here while every key operation failed; now /healthz is
# liveness and /readyz names the dependency that failed.
readyz_until 503
python3 - "$W/probe" <<'PY' || fail "/readyz while the audit trail refuses writes: $(cat "$W/probe")"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["status"] == "unavailable", r
assert r["failing"] == [{"dependency": "audit", "code": "audit_unavailable"}], r
assert r["error"]["code"] == "unavailable", r
PY
[[ "$(probe "$MURL/readyz")" == 503 ]] || fail "metrics listener /readyz: $(cat "$W/probe")"
[[ "$(probe "$URL/healthz")" == 200 ]] || fail "/healthz while the audit fails: $(cat "$W/probe")"
ok "$step: /readyz 503 naming the audit trail, /healthz 200"
expect 503 audit_unavailable account POST /v1/encrypt/account-pii "{\"plaintext\": \"$PT\", \"context\": $CTX}"
! grep -q 'kc:v' "$W/body" || fail "a 503 carried a ciphertext: $(cat "$W/body")"
expect 503 audit_unavailable account POST /v1/datakey/plaintext/account-pii "{\"context\": $CTX}"
! grep -q 'plaintext\|kc:v' "$W/body" || fail "a 503 carried key material: $(cat "$W/body")"
expect 503 audit_unavailable account POST /v1/decrypt/account-pii "{\"ciphertext\": \"$CT\", \"context\": $CTX}"
! grep -q "$PT" "$W/body" || fail "a 503 carried the plaintext"
# Denials must be recorded too, so they also fail closed.
expect 503 audit_unavailable admin POST /v1/encrypt/account-pii "{\"plaintext\": \"$PT\", \"context\": $CTX}"
expect 503 audit_unavailable admin POST /v1/encrypt/account-never "{\"plaintext\": \"$PT\", \"context\": $CTX}"
expect 503 audit_unavailable auditor GET /v1/alerts
# So do the HTTP layer's own refusals (their records are written without holding a thread).
expect 503 audit_unavailable none GET /v1/keys/account-pii
expect 503 audit_unavailable account POST /v1/encrypt/account-pii '{"plaintext": '
expect 503 audit_unavailable account GET /v1/no-such-route
expect 503 audit_unavailable account PUT /v1/encrypt/account-pii '{}'
! grep -qi "^allow:" "$W/headers" || fail "a 503 kept the 405's Allow header"
sql "$ADMIN_CI" "GRANT INSERT ON keycenter.audit TO mica_keycenter"
readyz_until 200
ok "$step: /readyz 200 once the audit trail takes records again"
expect 405 method_not_allowed account PUT /v1/encrypt/account-pii '{}'
expect 401 client_certificate_required none GET /v1/keys/account-pii
expect 200 - account POST /v1/encrypt/account-pii "{\"plaintext\": \"$PT\", \"context\": $CTX}"
[[ "$(jget ciphertext)" == kc:v2:* ]] || fail "after GRANT: $(cat "$W/body")"
wait_alert audit_write_failure account account-pii

step="7 audit read online"
expect 200 - auditor GET '/v1/audit?limit=5'
# The first requests were refused by the HTTP layer (no or an untrusted certificate) and
# are recorded too; the first key creation is recorded as an attempt before its outcome.
python3 - "$W/body" <<'PY' || fail "audit page: $(cat "$W/body")"
import json, sys
recs = json.load(open(sys.argv[1]))["records"]
assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5]
assert recs[0]["result"] == "client_certificate_required" and recs[0]["principal"] == "-"
assert any(r["result"] == "client_certificate_invalid" for r in recs)
kc = [r for r in recs if r["op"] == "key_create"]
assert kc and kc[0]["result"] == "attempt" and kc[0]["principal"] == "admin"
PY
expect 200 - auditor GET '/v1/audit?after=5&limit=1000'
python3 - "$W/body" <<'PY' || fail "online audit: $(head -c 400 "$W/body")"
import json, sys
recs = json.load(open(sys.argv[1]))["records"]
assert recs[0]["seq"] == 6 and [r["seq"] for r in recs] == list(range(6, 6 + len(recs)))
assert any(r["principal"] == "test" and r["result"] == "unknown_principal" for r in recs)
PY
expect 403 access_denied account GET /v1/audit
expect 403 access_denied admin GET /v1/audit
expect 403 access_denied officer1 GET /v1/audit
# Query numbers are parsed strictly: atoi() turned limit=abc into the default and strtoll()
# clamped after= beyond int64.
expect 400 bad_query_argument auditor GET '/v1/audit?limit=abc'
expect 400 bad_query_argument auditor GET '/v1/audit?limit=0'
expect 400 bad_query_argument auditor GET '/v1/audit?limit=1001'
expect 400 bad_query_argument auditor GET '/v1/audit?after=9223372036854775808'
expect 400 bad_query_argument auditor GET '/v1/audit?after=-1'
expect 400 bad_query_argument auditor GET '/v1/alerts?after=1x'
expect 200 - auditor GET '/v1/audit?after=9223372036854775807&limit=1000'
[[ "$(jget records.#)" == 0 ]] || fail "records after the largest seq: $(cat "$W/body")"

step="7 JSON bodies need their Content-Type"
st="$(curl -sS --cacert "$MICA_CA" --cert "$MICA_CERT_ACCOUNT" --key "$MICA_KEY_ACCOUNT" -o "$W/body" \
	-w '%{http_code}' -H 'Content-Type:' --data-binary "{\"plaintext\": \"$PT\", \"context\": $CTX}" \
	"$URL/v1/encrypt/account-pii")" || fail "curl without Content-Type"
[[ "$st" == 415 && "$(jget error.code)" == unsupported_media_type ]] ||
	fail "JSON body without Content-Type: $st $(cat "$W/body")"
ok "$step: a JSON body without Content-Type gets 415 unsupported_media_type"

step="7 metrics on their own listener"
# Per-route status counts were public before; now the public listener answers 404 (recorded
# like any other refusal) and the metrics listener, on loopback, serves them.
expect 404 not_found auditor GET /metrics
expect 401 client_certificate_required none GET /metrics
st="$(curl -sS --cacert "$MICA_CA" -o "$W/metrics" -w '%{http_code}' "$MURL/metrics")" ||
	fail "curl $MURL/metrics"
[[ "$st" == 200 ]] || fail "metrics listener: $st $(cat "$W/metrics")"
grep -q '^mica_http_requests_total{service="keycenter",route="/v1/encrypt/{name}",method="POST",code="503"} ' \
	"$W/metrics" || fail "metrics: $(grep requests_total "$W/metrics" | head)"
ok "$step: /metrics 404 on the public listener, 200 on $MURL"
st="$(curl -sS --cacert "$MICA_CA" -o "$W/body" -w '%{http_code}' "$MURL/v1/keys/account-pii")" ||
	fail "curl $MURL/v1/keys"
[[ "$st" == 404 ]] || fail "the metrics listener served a route: $st $(cat "$W/body")"

step="7 audit export and verify"
stop_kc
"$MICA" audit export --db "$ADMIN_CI" --out "$W/audit-1.jsonl" 2>"$W/export.err" ||
	fail "export: $(cat "$W/export.err")"
rc=0
"$MICA" audit verify --pubkey "$W/audit.pem" "$W/audit-1.jsonl" >"$W/verify.out" 2>&1 || rc=$?
((rc == 0)) || fail "verify exit $rc: $(cat "$W/verify.out")"
grep -Eq '^OK: [0-9]+ records, [1-9][0-9]* checkpoints' "$W/verify.out" || fail "verify: $(cat "$W/verify.out")"
# Shut down cleanly: the final checkpoint covers every record.
grep -q 'not covered' "$W/verify.out" && fail "unsigned tail after a clean stop: $(cat "$W/verify.out")"
python3 - "$W/audit-1.jsonl" <<'PY' || fail "export content"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"type":"record"' in l]
def has(**kw):
    return any(all(r.get(k) == v for k, v in kw.items()) for r in recs)
checks = {
    "unknown principal denied": has(principal="test", op="encrypt", result="unknown_principal"),
    "admin denied use": has(principal="admin", op="encrypt", key_name="account-pii", result="access_denied"),
    "account encrypt ok": has(principal="account", op="encrypt", key_name="account-pii", result="ok", key_version=2),
    "below minimum": has(principal="account", op="decrypt", result="version_below_minimum"),
    "approvals": has(principal="officer2", op="approve", result="ok"),
    "key created": has(principal="admin", op="key_create", key_name="account-pii", result="ok"),
}
# The requests answered 503 while INSERT was revoked are not in the trail.
checks["503 not recorded"] = not has(key_name="account-never")
checks["context hashed"] = all(r["context_hash"] is None or len(r["context_hash"]) == 64 for r in recs)
bad = [k for k, v in checks.items() if not v]
if bad:
    print("missing in export:", bad); sys.exit(1)
PY
ok "$(head -n 1 "$W/verify.out")"

# ---------------------------------------------------------------------------------------------
step="8 robustness"
# run_bad_start NAME VAR=VALUE...: the daemon must exit non-zero within 20 s; its output in
# $W/bad.log, its status in $rc.
run_bad_start() {
	local name="$1"
	shift
	rc=0
	env "${KC_ENV[@]}" "$@" timeout 20 "$KC" --config deploy/mica.conf.example </dev/null \
		>"$W/bad.log" 2>&1 7>&- 8<&- || rc=$?
	((rc != 0 && rc != 124)) || fail "$name: exit status $rc: $(cat "$W/bad.log")"
	cat "$W/bad.log" >>"$LOG"
}
printf '%s' 0000000000000000 >"$W/wrong.pin"
chmod 0600 "$W/wrong.pin"
run_bad_start "wrong PIN" MICA_KEYCENTER_HSM_PIN_FILE="$W/wrong.pin"
if ! { ((rc == 1)) && grep -q "refused the user PIN: CKR_PIN_INCORRECT" "$W/bad.log" &&
	grep -q "cannot use the HSM token $MICA_HSM_TOKEN_LABEL: hsm_login_failed" "$W/bad.log"; }; then
	fail "wrong PIN: exit $rc: $(cat "$W/bad.log")"
fi
ok "wrong PIN: exit 1, hsm_login_failed"
run_bad_start "bad module" MICA_KEYCENTER_HSM_MODULE="$W/no-such-pkcs11.so"
if ! { ((rc == 1)) && grep -q "cannot load PKCS#11 module $W/no-such-pkcs11.so" "$W/bad.log" &&
	grep -q "cannot use the HSM token $MICA_HSM_TOKEN_LABEL: hsm_unavailable" "$W/bad.log"; }; then
	fail "bad module: exit $rc: $(cat "$W/bad.log")"
fi
ok "missing PKCS#11 module: exit 1, hsm_unavailable"
run_bad_start "unknown token" MICA_KEYCENTER_HSM_TOKEN_LABEL=no-such-token
if ! { ((rc == 1)) && grep -q "cannot use the HSM token no-such-token" "$W/bad.log"; }; then
	fail "unknown token: exit $rc: $(cat "$W/bad.log")"
fi
ok "unknown token: exit 1 ($(grep -o 'cannot use the HSM token no-such-token: [a-z_]*' "$W/bad.log"))"
mica_free_port DEAD_PORT
run_bad_start "database unreachable" MICA_KEYCENTER_DB_CONNINFO="${KC_CI/port=$MICA_PG_PORT/port=$DEAD_PORT}"
if ! { ((rc == 1)) && grep -q "cannot unseal the audit key (database_unavailable)" "$W/bad.log"; }; then
	fail "database unreachable: exit $rc: $(cat "$W/bad.log")"
fi
ok "database unreachable at start: refuses to start (exit 1, database_unavailable)"
run_bad_start "no blocking threads" MICA_KEYCENTER_HTTP_BLOCKING_THREADS=0
if ! { ((rc == 2)) && grep -q "keycenter.http.blocking_threads: at least 1" "$W/bad.log"; }; then
	fail "no blocking threads: exit $rc: $(cat "$W/bad.log")"
fi
ok "blocking_threads = 0: refuses to start (key loads need the pool), exit 2"
# The configuration is judged before any dependency is opened (lib/daemon.h): with the PKCS#11
# module missing and the database unreachable as well, a client CA that is garbage or unreadable
# is what the daemon reports, as a configuration error (exit 2), and it touched neither.
printf 'not a certificate\n' >"$W/garbage-ca.pem"
for ca in "$W/garbage-ca.pem" "$W/no-such-ca.pem"; do
	run_bad_start "client CA $ca" MICA_KEYCENTER_HTTP_CLIENT_CA_FILE="$ca" \
		MICA_KEYCENTER_HSM_MODULE="$W/no-such-pkcs11.so" \
		MICA_KEYCENTER_DB_CONNINFO="${KC_CI/port=$MICA_PG_PORT/port=$DEAD_PORT}"
	if ! { ((rc == 2)) && grep -q "^mica-keycenter: keycenter.http.client_ca_file: .*$ca" "$W/bad.log" &&
		! grep -qi "pkcs#11\|database\|audit" "$W/bad.log"; }; then
		fail "client CA $ca: exit $rc: $(cat "$W/bad.log")"
	fi
done
ok "a garbage or unreadable client CA: exit 2 naming keycenter.http.client_ca_file, before the HSM and database"
run_bad_start "garbage webhook CA" MICA_KEYCENTER_ALERTS_WEBHOOK_CA_FILE="$W/garbage-ca.pem" \
	MICA_KEYCENTER_HSM_MODULE="$W/no-such-pkcs11.so"
if ! { ((rc == 2)) && grep -q "keycenter.alerts.webhook_ca_file: .*holds no PEM certificate" "$W/bad.log" &&
	! grep -qi "pkcs#11" "$W/bad.log"; }; then
	fail "garbage webhook CA: exit $rc: $(cat "$W/bad.log")"
fi
ok "a garbage alert webhook CA: exit 2 before the HSM is opened"

# A key a fresh process has not cached is loaded on the blocking pool, never on the event thread:
# with the key's versions locked in PostgreSQL the datakey request waits, while the only event
# thread still answers /healthz at once; once the lock is gone the request succeeds.
start_kc MICA_KEYCENTER_HTTP_THREADS=1
expect 201 - admin POST /v1/keys/account-cold '{"owner": "account"}'
stop_kc
start_kc MICA_KEYCENTER_HTTP_THREADS=1
psql "$ADMIN_CI" -X -qAt -v ON_ERROR_STOP=1 -c "BEGIN" \
	-c "LOCK TABLE keycenter.key_version IN ACCESS EXCLUSIVE MODE" -c "SELECT pg_sleep(3)" \
	-c "COMMIT" >/dev/null &
locker=$!
locked=0
for _ in $(seq 100); do
	if [[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM pg_locks WHERE granted AND
		relation = 'keycenter.key_version'::regclass AND mode = 'AccessExclusiveLock'")" == 1 ]]; then
		locked=1
		break
	fi
	sleep 0.05
done
((locked)) || fail "the lock on keycenter.key_version was not taken within 5 s"
curl -sS --max-time 20 --cacert "$MICA_CA" --cert "$MICA_CERT_ACCOUNT" --key "$MICA_KEY_ACCOUNT" \
	-o "$W/cold.json" -w '%{http_code}' -H 'Content-Type: application/json' \
	--data-binary "{\"context\": $CTX}" "$URL/v1/datakey/plaintext/account-cold" >"$W/cold.status" &
cold=$!
sleep 0.5
st="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$MICA_CA" "$URL/healthz")" ||
	fail "/healthz did not answer while a key load waited for PostgreSQL"
[[ "$st" == 200 ]] || fail "/healthz while a key load waited: HTTP $st"
mica_pid_alive "$cold" || fail "the datakey request did not wait for the locked key: $(cat "$W/cold.status")"
wait "$locker" || fail "the locking transaction failed"
wait "$cold" || fail "the datakey request failed"
[[ "$(cat "$W/cold.status")" == 200 && "$(jq -r .key_version "$W/cold.json")" == 1 ]] ||
	fail "datakey of a key loaded on the pool: $(cat "$W/cold.status") $(cat "$W/cold.json")"
stop_kc
ok "a key not yet cached is loaded on the blocking pool: the event thread kept serving"

# ---------------------------------------------------------------------------------------------
step="9 kill -9 under datakey load"
start_kc
expect 201 - admin POST /v1/keys/account-load '{"owner": "account"}'
rm -f "$W/load.stop"
# load_loop I: up to 200 wrapped data keys or 20 s, until load.stop exists; records each
# ciphertext of a complete 200 response in load.I.
load_loop() {
	local i="$1" n=0 deadline=$((SECONDS + 20)) st
	: >"$W/load.$i"
	while ((n < 200 && SECONDS < deadline)) && [[ ! -e "$W/load.stop" ]]; do
		n=$((n + 1))
		st="$(curl -s --max-time 5 --cacert "$MICA_CA" --cert "$MICA_CERT_ACCOUNT" --key "$MICA_KEY_ACCOUNT" \
			-H 'Content-Type: application/json' -d "{\"bits\": 256, \"context\": {\"loop\": \"$i\"}}" \
			-o "$W/load.$i.body" -w '%{http_code}' "$URL/v1/datakey/wrapped/account-load")" || st=000
		if [[ "$st" == 200 && "$(<"$W/load.$i.body")" =~ \"ciphertext\":\"(kc:v[0-9]+:[A-Za-z0-9+/=]+)\" ]]; then
			printf '%s\n' "${BASH_REMATCH[1]}" >>"$W/load.$i"
		fi
	done
}
for i in 1 2 3 4; do
	load_loop "$i" &
	loop_pids+=("$!")
done
recorded() { cat "$W"/load.[1-4] 2>/dev/null | wc -l; }
# wait_recorded N: until the loops recorded N ciphertexts (at most 15 s).
wait_recorded() {
	local deadline=$((SECONDS + 15))
	until (($(recorded) >= $1)); do
		((SECONDS < deadline)) || fail "only $(recorded) data keys within 15 s"
		sleep 0.05
	done
}
wait_recorded 20
# A rotation in the middle of the load: later data keys use version 2.
expect 200 - admin POST /v1/keys/account-load/rotate
wait_recorded 60
kill -KILL "$pid"
wait "$pid" 2>/dev/null || true
pid=""
touch "$W/load.stop"
for p in "${loop_pids[@]}"; do wait "$p" || fail "a load loop failed"; done
loop_pids=()
N="$(recorded)"
grep -q '^kc:v2:' "$W"/load.[1-4] || fail "no data key after the rotation"
ok "killed with -9 after $N data keys were returned"

start_kc MICA_KEYCENTER_LIMITS_MAX_BATCH_ITEMS=1000
for i in 1 2 3 4; do
	[[ -s "$W/load.$i" ]] || continue
	python3 - "$W/load.$i" "$i" >"$W/batch.json" <<'PY'
import json, sys
cts = [l.strip() for l in open(sys.argv[1]) if l.strip()]
print(json.dumps({"batch_input": [{"ciphertext": c, "context": {"loop": sys.argv[2]}} for c in cts]}))
PY
	call account POST /v1/decrypt/account-load "$(<"$W/batch.json")"
	[[ "$status" == 200 ]] || fail "batch decrypt of loop $i: $status $(cat "$W/body")"
	python3 - "$W/body" "$W/load.$i" <<'PY' || fail "loop $i: $(head -c 600 "$W/body")"
import base64, json, sys
res = json.load(open(sys.argv[1]))["batch_results"]
n = sum(1 for l in open(sys.argv[2]) if l.strip())
assert len(res) == n, (len(res), n)
bad = [r for r in res if "plaintext" not in r or len(base64.b64decode(r["plaintext"])) != 32]
assert not bad, bad[:3]
PY
done
ok "all $N returned data keys decrypt after the restart"

# The database connections of the Key Center are killed under it: requests fail closed (503) or
# succeed, and it recovers by reconnecting.
killed="$(sql "$ADMIN_CI" "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
	WHERE usename = 'mica_keycenter' AND datname = '$DB'")"
((killed >= 2)) || fail "only $killed connections of mica_keycenter to terminate"
codes=""
deadline=$((SECONDS + 15))
while :; do
	call account POST /v1/encrypt/account-load "{\"plaintext\": \"$PT\", \"context\": $CTX}"
	codes+=" $status"
	[[ "$status" == 200 ]] && break
	[[ "$status" == 503 ]] || fail "after its connections were killed: $status $(cat "$W/body")"
	((SECONDS < deadline)) || fail "no recovery within 15 s:$codes"
	sleep 0.2
done
ok "$killed database connections killed: statuses$codes"

stop_kc
"$MICA" audit export --db "$ADMIN_CI" --out "$W/audit-2.jsonl" 2>"$W/export.err" ||
	fail "export: $(cat "$W/export.err")"
rc=0
"$MICA" audit verify --pubkey "$W/audit.pem" "$W/audit-2.jsonl" >"$W/verify.out" 2>&1 || rc=$?
((rc == 0)) || fail "verify after kill -9: exit $rc: $(cat "$W/verify.out")"
python3 - "$W/audit-2.jsonl" "$N" <<'PY' || fail "datakey records"
import json, sys
n = sum(1 for l in open(sys.argv[1])
        if '"type":"record"' in l and (lambda r: r["op"] == "datakey" and r["principal"] == "account"
            and r["key_name"] == "account-load" and r["result"] == "ok")(json.loads(l)))
print(f"{n} datakey records for {sys.argv[2]} returned data keys")
assert n >= int(sys.argv[2])
PY
ok "$(head -n 1 "$W/verify.out")"
echo "test_keycenter.sh: all checks passed"
