#!/usr/bin/env bash
# test_audit_publish.sh - the attacks of issue 18 item 2 against a real mica-keycenter, each
# performed as a PostgreSQL superuser without HSM access:
#   1. every checkpoint is appended to the publish file and POSTed to the publish webhook; the
#      auditor's anchor workflow (`mica audit verify --anchor`, --published) accepts the log
#   2. (d) a tampered record MAC: `mica audit verify --mac` (the auditor asks the Key Center)
#      fails naming the record and raises audit_mac_failure; the periodic self-check raises it
#      on its own
#   3. (b) the log cut back to an earlier checkpoint: the Key Center refuses to start, and the
#      anchor and the publish file both detect it offline
#   4. (c) every checkpoint deleted and the history replaced: verify says no_checkpoint, the
#      anchor names the rewritten head, the Key Center refuses to start
# The database and the daemon are removed on exit, whatever happens.
set -euo pipefail

# shellcheck source=tests/integration/lib-stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-stack.sh"
stack_begin test_audit_publish MICA_CERT_AUDITOR MICA_KEY_AUDITOR MICA_CERT_ACCOUNT \
	MICA_KEY_ACCOUNT
KC_BIN="$BUILD/bin/mica-keycenter"
[[ -x "$KC_BIN" ]] || fail "$KC_BIN is missing (make all)"
HOOK_PID=""
stack_on_exit() { if [[ -n "$HOOK_PID" ]]; then kill "$HOOK_PID" 2>/dev/null || true; fi; }

step="setup"
stack_db_create
stack_policy_doc 1 >"$W/policy.json"
stack_kc_init "$W/policy.json"
KPORT="" HOOK_PORT=""
mica_free_port KPORT
mica_free_port HOOK_PORT
KURL="https://localhost:$KPORT"
PUB="$W/published.jsonl"
python3 tests/peers/webhook_sink.py "$MICA_CERT_SERVER" "$MICA_KEY_SERVER" "$HOOK_PORT" \
	"$W/hook.out" 7>&- 8<&- &
HOOK_PID=$!
mapfile -t KC_ENV < <(stack_kc_env "$KPORT")
KC_ENV+=(
	MICA_KEYCENTER_AUDIT_CHECKPOINT_EVERY=5
	"MICA_KEYCENTER_AUDIT_PUBLISH_FILE=$PUB"
	"MICA_KEYCENTER_AUDIT_PUBLISH_WEBHOOK_URL=https://localhost:$HOOK_PORT/checkpoints"
	"MICA_KEYCENTER_AUDIT_PUBLISH_WEBHOOK_CA_FILE=$MICA_CA"
	MICA_KEYCENTER_AUDIT_SELFCHECK_INTERVAL_S=3600
)
kc_start() { stack_start keycenter "$KURL" "${KC_ENV[@]}" "$@" "$KC_BIN" --config deploy/mica.conf.example; }
# kc_refused: the Key Center must exit non-zero at start, the log saying why.
kc_refused() {
	local rc=0
	env "${KC_ENV[@]}" timeout 60 "$KC_BIN" --config deploy/mica.conf.example \
		</dev/null >"$W/refused.log" 2>&1 7>&- 8<&- || rc=$?
	((rc != 0 && rc != 124)) || fail "the Key Center started (or hung) on a tampered log (status $rc)"
	grep -q "$1" "$W/refused.log" || fail "refusal without '$1': $(tail -n 5 "$W/refused.log")"
}
as() { # PRINCIPAL METHOD PATH [BODY] -> status; body in $W/body
	local p="${1^^}" cert key
	cert="MICA_CERT_$p" key="MICA_KEY_$p"
	curl -sS -o "$W/body" -w '%{http_code}' --cacert "$MICA_CA" --cert "${!cert}" --key "${!key}" \
		-X "$2" ${4:+-H 'Content-Type: application/json' -d "$4"} "$KURL$3"
}
MICA_AUDIT_VERIFY=("$MICA" audit verify --pubkey "$W/audit.pem")
export_log() { "$MICA" audit export --db "$ADMIN_CI" --out "$W/export.jsonl"; }
verify() { "${MICA_AUDIT_VERIFY[@]}" "$@" "$W/export.jsonl" >"$W/verify.out" 2>&1; }
verify_mac() {
	"$MICA" audit verify --mac --kc-url "$KURL" --ca "$MICA_CA" --cert "$MICA_CERT_AUDITOR" \
		--key "$MICA_KEY_AUDITOR" >"$W/mac.out" 2>&1
}

# ---------------------------------------------------------------------------------------------
step="publish file, webhook and anchor"
kc_start
[[ "$(as admin POST /v1/keys/account-pii '{"owner": "account"}')" == 201 ]] || fail "create key"
for i in $(seq 1 12); do
	st="$(as account POST /v1/encrypt/account-pii "{\"plaintext\": \"eA==\", \"context\": {\"i\": \"$i\"}}")"
	[[ "$st" == 200 ]] || fail "encrypt $i: $st $(cat "$W/body")"
done
stack_stop keycenter # the final checkpoint
[[ -s "$PUB" ]] || fail "no publish file"
[[ "$(stat -c %a "$PUB")" == 640 ]] || fail "publish file mode $(stat -c %a "$PUB")"
last_pub="$(tail -n 1 "$PUB" | jq -r .seq)"
max_cp="$(sql "$ADMIN_CI" "SELECT max(seq) FROM keycenter.audit_checkpoint")"
[[ "$last_pub" == "$max_cp" && "$(wc -l <"$PUB")" == "$(sql "$ADMIN_CI" \
	"SELECT count(*) FROM keycenter.audit_checkpoint")" ]] ||
	fail "publish file ($(wc -l <"$PUB") lines, newest $last_pub) != checkpoints (newest $max_cp)"
for _ in $(seq 50); do [[ "$(wc -l <"$W/hook.out" 2>/dev/null || echo 0)" -ge "$(wc -l <"$PUB")" ]] && break; sleep 0.1; done
[[ "$(tail -n 1 "$W/hook.out" | jq -r .seq)" == "$max_cp" ]] ||
	fail "the webhook did not get checkpoint $max_cp: $(tail -n 2 "$W/hook.out" 2>&1)"
export_log
verify --anchor "$W/anchor" --published "$PUB" || fail "verify: $(cat "$W/verify.out")"
grep -q "anchor: $W/anchor created at seq $max_cp" "$W/verify.out" || fail "$(cat "$W/verify.out")"
ok "records 1..$max_cp signed, $(wc -l <"$PUB") checkpoints published to the file and the webhook"

# ---------------------------------------------------------------------------------------------
step="(d) tampered MAC"
kc_start
verify_mac || fail "verify --mac on an intact log: $(cat "$W/mac.out")"
grep -q '^OK: the MACs of [0-9]* records verify' "$W/mac.out" || fail "$(cat "$W/mac.out")"
sql "$ADMIN_CI" "UPDATE keycenter.audit SET mac = set_byte(mac, 0, get_byte(mac, 0) # 1) WHERE seq = 7"
rc=0
verify_mac || rc=$?
((rc == 1)) || fail "verify --mac exit $rc on a tampered MAC: $(cat "$W/mac.out")"
grep -q '^FAIL at seq 7: bad_mac: ' "$W/mac.out" || fail "$(cat "$W/mac.out")"
[[ "$(as auditor GET /v1/alerts)" == 200 ]] || fail "alerts"
jq -e '.alerts | map(select(.kind == "audit_mac_failure" and .detail.seq == 7)) | length == 1' \
	"$W/body" >/dev/null || fail "no audit_mac_failure alert for seq 7: $(cat "$W/body")"
[[ "$(as account POST /v1/audit/selfcheck)" == 403 ]] || fail "a service ran the self-check"
stack_stop keycenter
# The periodic self-check raises the alert on its own.
kc_start MICA_KEYCENTER_AUDIT_SELFCHECK_INTERVAL_S=1
for _ in $(seq 100); do
	n="$(sql "$ADMIN_CI" "SELECT count(*) FROM keycenter.alert WHERE kind = 'audit_mac_failure'")"
	((n >= 2)) && break
	sleep 0.1
done
((n >= 2)) || fail "the periodic self-check raised no alert"
stack_stop keycenter
sql "$ADMIN_CI" "UPDATE keycenter.audit SET mac = set_byte(mac, 0, get_byte(mac, 0) # 1) WHERE seq = 7"
ok "verify --mac and the periodic self-check name seq 7 and raise audit_mac_failure"

# ---------------------------------------------------------------------------------------------
step="(b) cut back to an earlier checkpoint"
kc_start
[[ "$(as account POST /v1/encrypt/account-pii '{"plaintext": "eA==", "context": {"i": "b"}}')" == 200 ]] ||
	fail "encrypt"
stack_stop keycenter
export_log
verify --anchor "$W/anchor" --published "$PUB" || fail "verify before the cut: $(cat "$W/verify.out")"
cut="$(sql "$ADMIN_CI" "SELECT min(seq) FROM keycenter.audit_checkpoint")"
sql "$ADMIN_CI" "DELETE FROM keycenter.audit_checkpoint WHERE seq > $cut"
sql "$ADMIN_CI" "DELETE FROM keycenter.audit WHERE seq > $cut"
kc_refused "is not in the log"
export_log
verify || fail "the cut log alone should verify: $(cat "$W/verify.out")"
verify --anchor "$W/anchor" && fail "the anchor missed the cut"
grep -q "^FAIL at seq $((cut + 1)): anchor_truncated: .*(anchor 1 is $W/anchor)" "$W/verify.out" ||
	fail "$(cat "$W/verify.out")"
verify --published "$PUB" && fail "the publish file missed the cut"
grep -q "^FAIL at seq $((cut + 1)): anchor_truncated: .*(anchor 1 is $PUB)" "$W/verify.out" ||
	fail "$(cat "$W/verify.out")"
ok "cut to seq $cut: refused at start, anchor_truncated by the anchor and the publish file"

# ---------------------------------------------------------------------------------------------
step="(c) checkpoints deleted, history replaced"
sql "$ADMIN_CI" "DELETE FROM keycenter.audit_checkpoint"
sql "$ADMIN_CI" "UPDATE keycenter.audit SET principal = 'mallory'"
export_log
verify && fail "a log without checkpoints verified"
grep -q '^FAIL at seq 1: ' "$W/verify.out" || fail "$(cat "$W/verify.out")"
# (test_audit.c replaces it with consistent hashes and links; verify names no_checkpoint there.)
sql "$ADMIN_CI" "DELETE FROM keycenter.audit"
export_log
verify && fail "an empty log verified"
grep -q '^FAIL at seq 1: no_checkpoint: ' "$W/verify.out" || fail "$(cat "$W/verify.out")"
verify --anchor "$W/anchor" && fail "the anchor missed the replacement"
grep -q '^FAIL at seq 1: anchor_truncated: ' "$W/verify.out" || fail "$(cat "$W/verify.out")"
kc_refused "is not in the log"
ok "no_checkpoint offline, anchor_truncated with the anchor, refused at start"
